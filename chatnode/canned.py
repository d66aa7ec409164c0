"""Canned responses (issue 16): shared ones (admins write them) and personal ones (each agent
their own), with shortcuts unique across both and variables the console fills in. Held by
:class:`~chatnode.service.ChatService` as ``service.canned``; every change is audited.
"""

from __future__ import annotations

import re
from typing import Any

from chatnode.errors import ServiceError
from tidedesk.auth import Principal
from tidedesk.storage import Storage
from tidedesk.storage.canned import ShortcutTaken
from tidedesk.storage.records import CannedResponse

SHORTCUT_RE = re.compile(r"^[a-z0-9_-]{1,32}$")
BODY_MAX = 2000
# What ``{{...}}`` may name; the console fills them in when the response is inserted.
VARIABLES = ("visitor.name", "visitor.email", "agent.name")
_VARIABLE_RE = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")


def check_body(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > BODY_MAX:
        raise ServiceError(400, "invalid_field", f"'body' must be 1-{BODY_MAX} characters")
    unknown = sorted({v for v in _VARIABLE_RE.findall(value) if v not in VARIABLES})
    if unknown:
        raise ServiceError(400, "invalid_field", f"'body': unknown variable(s) "
                           f"{', '.join('{{' + v + '}}' for v in unknown)}; allowed: "
                           f"{', '.join('{{' + v + '}}' for v in VARIABLES)}")
    return value


def check_shortcut(value: Any) -> str:
    if not isinstance(value, str) or not SHORTCUT_RE.match(value.lstrip("/")):
        raise ServiceError(400, "invalid_field", "'shortcut' must be 1-32 characters of "
                           "a-z 0-9 _ - (typed after /)")
    return value.lstrip("/")


def _view(c: CannedResponse) -> dict[str, Any]:
    return {"id": c.id, "shortcut": c.shortcut, "body": c.body,
            "personal": c.owner_id is not None}


class CannedResponses:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    async def visible(self, principal: Principal) -> list[dict[str, Any]]:
        if principal.kind != "agent":
            return [_view(c) for c in await self.storage.canned.all() if c.owner_id is None]
        return [_view(c) for c in await self.storage.canned.visible_to(principal.id)]

    async def create(self, principal: Principal, body: dict[str, Any]) -> dict[str, Any]:
        """``personal`` true: the caller's own; else shared, which only an admin may add."""
        unknown = set(body) - {"shortcut", "body", "personal"}
        if unknown:
            raise ServiceError(400, "invalid_body", f"unknown field(s) "
                               f"{', '.join(sorted(unknown))}; allowed: body, personal, shortcut")
        personal = body.get("personal", False)
        if not isinstance(personal, bool):
            raise ServiceError(400, "invalid_field", "'personal' must be true or false")
        if not personal and principal.role != "admin":
            raise ServiceError(403, "forbidden", "shared canned responses are for admins; "
                               "send \"personal\": true for your own")
        shortcut, text = check_shortcut(body.get("shortcut")), check_body(body.get("body"))
        try:
            made = await self.storage.canned.create(
                shortcut=shortcut, body=text, owner_id=principal.id if personal else None)
        except ShortcutTaken:
            raise ServiceError(400, "shortcut_taken", f"'shortcut': /{shortcut} is taken; "
                               "pick another") from None
        await self.storage.audit.record(principal.actor, "admin.canned.create", str(made.id),
                                        {"shortcut": shortcut, "personal": personal})
        return _view(made)

    async def _own(self, principal: Principal, canned_id: str) -> CannedResponse:
        found = await self.storage.canned.get(int(canned_id))
        if found is None or (found.owner_id is not None and found.owner_id != principal.id):
            raise ServiceError(404, "not_found", f"no canned response {canned_id}")
        if found.owner_id is None and principal.role != "admin":
            raise ServiceError(403, "forbidden", "shared canned responses are changed by admins")
        return found

    async def update(self, principal: Principal, canned_id: str,
                     body: dict[str, Any]) -> dict[str, Any]:
        unknown = set(body) - {"shortcut", "body"}
        if unknown:
            raise ServiceError(400, "invalid_body", f"unknown field(s) "
                               f"{', '.join(sorted(unknown))}; allowed: body, shortcut")
        found = await self._own(principal, canned_id)
        shortcut = check_shortcut(body.get("shortcut", found.shortcut))
        text = check_body(body.get("body", found.body))
        try:
            await self.storage.canned.update(found.id, shortcut=shortcut, body=text)
        except ShortcutTaken:
            raise ServiceError(400, "shortcut_taken", f"'shortcut': /{shortcut} is taken; "
                               "pick another") from None
        await self.storage.audit.record(principal.actor, "admin.canned.update", canned_id,
                                        {"shortcut": shortcut})
        return _view(CannedResponse(id=found.id, shortcut=shortcut, body=text,
                                    owner_id=found.owner_id))

    async def delete(self, principal: Principal, canned_id: str) -> dict[str, Any]:
        found = await self._own(principal, canned_id)
        await self.storage.canned.delete(found.id)
        await self.storage.audit.record(principal.actor, "admin.canned.delete", canned_id,
                                        {"shortcut": found.shortcut})
        return {"id": found.id, "deleted": True}
