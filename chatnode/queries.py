"""Checks of URL query arguments, with errors that say what to send instead."""

from __future__ import annotations

from chatnode.errors import ServiceError


def bounded_int(name: str, raw: str | None, default: int | None, lo: int, hi: int) -> int | None:
    """``raw`` as an integer in ``[lo, hi]``, ``default`` when it is absent; ServiceError 400
    naming the argument otherwise."""
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ServiceError(400, "invalid_query", f"'{name}' must be an integer") from None
    if not lo <= value <= hi:
        raise ServiceError(400, "invalid_query", f"'{name}' must be between {lo} and {hi}")
    return value


def audit_action(raw: str | None) -> str | None:
    """An audit action name or prefix (``auth.``, ``agent.role_changed``), or None for all."""
    if raw is not None and not raw.replace(".", "").replace("_", "").isalnum():
        raise ServiceError(400, "invalid_query", "'action' is an action name or prefix "
                           "like auth. or agent.role_changed")
    return raw
