"""What a visitor brings besides name and e-mail (issue 14): the widget's context, the site's
pre-chat fields, and identify (a shop-signed customer id). Checks only: each raises
:class:`ServiceError` 400/403 saying what to send instead."""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Any

from chatnode.errors import ServiceError
from tidedesk import useragent

CONTEXT_LIMITS = {"page_url": 2048, "referrer": 2048, "user_agent": 512, "tz": 64}
MAX_FIELDS = 20
FIELD_NAME = re.compile(r"^[\w .-]{1,64}$")
MAX_FIELD_CHARS = 1000
CUSTOMER_ID = re.compile(r"^[\w.:@+-]{1,128}$")


def visitor_context(raw: Any) -> dict[str, str]:
    """The checked context, with ``browser`` and ``os`` parsed from the user agent."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ServiceError(400, "invalid_field", "'context' must be an object with page_url, "
                           "referrer, user_agent and tz")
    unknown = set(raw) - set(CONTEXT_LIMITS)
    if unknown:
        raise ServiceError(400, "invalid_field", f"'context' has unknown key(s) "
                           f"{', '.join(sorted(map(str, unknown)))}; allowed: "
                           f"{', '.join(CONTEXT_LIMITS)}")
    out: dict[str, str] = {}
    for key, limit in CONTEXT_LIMITS.items():
        value = raw.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or len(value) > limit:
            raise ServiceError(400, "invalid_field", f"'context.{key}' must be a string of at "
                               f"most {limit} characters")
        out[key] = value
    if out.get("user_agent"):
        out["browser"], out["os"] = useragent.parse(out["user_agent"])
    return out


def prechat_fields(raw: Any) -> dict[str, str]:
    if raw is None:
        return {}
    if (not isinstance(raw, dict) or len(raw) > MAX_FIELDS
            or not all(isinstance(k, str) and FIELD_NAME.match(k) for k in raw)
            or not all(isinstance(v, str) and len(v) <= MAX_FIELD_CHARS for v in raw.values())):
        raise ServiceError(400, "invalid_field", f"'fields' must be an object of at most "
                           f"{MAX_FIELDS} names (1-64 letters, digits, space . _ -) to strings "
                           f"of at most {MAX_FIELD_CHARS} characters")
    return dict(raw)


def customer_hash(secret: str, customer_id: str) -> str:
    """What the shop's server sends beside the id: hex HMAC-SHA256 of the id."""
    return hmac.new(secret.encode(), customer_id.encode(), hashlib.sha256).hexdigest()


def verified_customer(secret: str | None, customer_id: Any, given_hash: Any) -> str | None:
    """The shop's customer id when its signature is right; None when no identify was asked;
    400 when it is malformed or not configured, 403 when the signature is wrong."""
    if customer_id is None and given_hash is None:
        return None
    if not isinstance(customer_id, str) or not CUSTOMER_ID.match(customer_id):
        raise ServiceError(400, "invalid_field", "'customer_id' must be 1-128 letters, digits "
                           "and . _ : @ + -, sent with 'customer_hash'")
    if not isinstance(given_hash, str) or not given_hash:
        raise ServiceError(400, "invalid_field", "'customer_hash' is missing: the hex "
                           "HMAC-SHA256 of customer_id under the identity secret, made by "
                           "your server")
    if not secret:
        raise ServiceError(400, "identify_not_configured", "this server has no "
                           "TIDEDESK_IDENTITY_SECRET: send the visitor without customer_id")
    if not hmac.compare_digest(customer_hash(secret, customer_id), given_hash.lower()):
        raise ServiceError(403, "invalid_identity", "'customer_hash' does not match "
                           "customer_id: sign it on your server with the identity secret")
    return customer_id
