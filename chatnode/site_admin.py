"""Sites (shops) for admins, and the public widget configuration (issue 16). Held by
:class:`~chatnode.service.ChatService` as ``service.sites``. The rules live in
:mod:`tidedesk.sites` (pure); every node reads settings through
:class:`~tidedesk.site_directory.SiteDirectory` (database + a 2 s cache).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import yaml

from chatnode.errors import ServiceError
from tidedesk import sites
from tidedesk.auth import Principal
from tidedesk.site_directory import SiteDirectory
from tidedesk.storage import Storage


def _site_name(site: str) -> str:
    try:
        return sites.check_site_name(site)
    except sites.SiteError as exc:
        raise ServiceError(400, "invalid_site", str(exc)) from None


class SiteAdmin:
    def __init__(self, *, storage: Storage, directory: SiteDirectory,
                 clock: Callable[[], float] = time.time) -> None:
        self.storage = storage
        self.directory = directory
        self.clock = clock

    async def get(self, site: str) -> dict[str, Any]:
        settings = await self.directory.settings(_site_name(site))
        if settings is None:
            raise ServiceError(404, "not_found", f"no site {site!r}; create it with PUT "
                               f"/api/v1/sites/{site}")
        return {"site": site, **settings}

    async def list(self) -> list[dict[str, Any]]:
        names = dict.fromkeys([sites.DEFAULT_SITE, *await self.storage.sites.names()])
        out = []
        for name in names:
            settings = await self.directory.settings(name)
            if settings is not None:
                out.append({"site": name, "name": settings["name"]})
        return out

    async def put(self, principal: Principal, site: str, body: dict[str, Any]) -> dict[str, Any]:
        """Create or change a site (any subset of the fields; the others keep their values).
        ``routing`` may be the routing file's YAML as a string (import) or its mapping."""
        site = _site_name(site)
        routing = body.get("routing")
        if isinstance(routing, str):
            try:
                body = {**body, "routing": yaml.safe_load(routing)}
            except yaml.YAMLError as exc:
                raise ServiceError(400, "invalid_field", f"'routing' is not valid YAML ({exc})") \
                    from None
        current = await self.storage.sites.get(site) or sites.defaults(site)
        try:
            settings = sites.merge({**sites.defaults(site), **current}, body)
        except sites.SiteError as exc:
            raise ServiceError(400, "invalid_field", str(exc)) from None
        await self.storage.sites.put(site, settings)
        self.directory.invalidate(site)
        await self.storage.audit.record(principal.actor, "admin.site.update", site,
                                        {"fields": sorted(body)})
        return {"site": site, **settings}

    async def delete(self, principal: Principal, site: str) -> dict[str, Any]:
        """The site's widget then says "chat unavailable"; its conversations stay."""
        site = _site_name(site)
        if not await self.storage.sites.delete(site) and site != sites.DEFAULT_SITE:
            raise ServiceError(404, "not_found", f"no site {site!r}")
        if site == sites.DEFAULT_SITE:  # never stored: store it deleted
            await self.storage.sites.put(site, sites.defaults(site))
            await self.storage.sites.delete(site)
        self.directory.invalidate(site)
        await self.storage.audit.record(principal.actor, "admin.site.delete", site)
        return {"site": site, "deleted": True}

    async def widget_config(self, site: str) -> dict[str, Any]:
        """Public: what the widget of ``site`` shows. An unknown or deleted site is a 404
        ``site_unavailable``, which the widget turns into a quiet "chat unavailable"."""
        settings = await self.directory.settings(_site_name(site))
        if settings is None:
            raise ServiceError(404, "site_unavailable", f"chat is not available for {site!r}")
        routing = await self.directory.routing(site)
        return sites.widget_config(site, settings, open_now=routing.is_open(self.clock()))

    async def check_known(self, site: str) -> str:
        """A visitor's site: it must be live (400 otherwise)."""
        if await self.directory.settings(_site_name(site)) is None:
            raise ServiceError(400, "invalid_field", f"'site': no site {site!r} (the script "
                               "tag's data-site names a site an admin created)")
        return site
