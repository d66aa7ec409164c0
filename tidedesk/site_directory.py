"""Sites' settings as every node reads them: from the database, cached for
:data:`SITE_CACHE_SECS` per site. A change made on one node (``PUT /api/v1/sites/{site}``)
takes effect there at once and on every other node within that time, without a restart (the
database plus a short cache; no broker announcement is needed for settings this small).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from tidedesk import sites
from tidedesk.routing_rules import RoutingConfig
from tidedesk.storage import Storage

SITE_CACHE_SECS = 2.0


class SiteDirectory:
    def __init__(self, storage: Storage, installation: RoutingConfig) -> None:
        self.storage = storage
        self.installation = installation
        self._cache: dict[str, tuple[float, dict[str, Any] | None, RoutingConfig]] = {}
        self._any_bot: tuple[float, bool] | None = None
        self._names: tuple[float, list[str]] | None = None
        self._any_bot_lock = asyncio.Lock()
        self._loading: dict[str, asyncio.Future[tuple[dict[str, Any] | None,
                                                      RoutingConfig]]] = {}

    def invalidate(self, site: str) -> None:
        self._cache.pop(site, None)
        self._names = None

    async def _entry(self, site: str) -> tuple[dict[str, Any] | None, RoutingConfig]:
        now = time.monotonic()
        hit = self._cache.get(site)
        if hit is not None and now - hit[0] <= SITE_CACHE_SECS:
            return hit[1], hit[2]
        # Many new chats at once (a flash sale) share one read of the database.
        pending = self._loading.get(site)
        if pending is None:
            pending = self._loading[site] = asyncio.ensure_future(self._load(site, now))
            pending.add_done_callback(lambda _f: self._loading.pop(site, None))
        return await asyncio.shield(pending)

    async def _load(self, site: str,
                    now: float) -> tuple[dict[str, Any] | None, RoutingConfig]:
        stored = await self.storage.sites.get(site)
        settings: dict[str, Any] | None
        if stored is None:
            # `default` always exists (the widget without data-site); other names only once
            # an admin stored them.
            settings = sites.defaults(site) if site == sites.DEFAULT_SITE and not \
                await self.storage.sites.is_deleted(site) else None
        else:
            settings = {**sites.defaults(site), **stored}
        routing = (sites.routing_for(settings, self.installation) if settings is not None
                   else self.installation)
        self._cache[site] = (now, settings, routing)
        return settings, routing

    async def settings(self, site: str) -> dict[str, Any] | None:
        """A live site's settings (defaults filled in); None for an unknown or deleted one."""
        return (await self._entry(site))[0]

    async def routing(self, site: str) -> RoutingConfig:
        """The rules and hours of a site's new conversations (the installation's for an
        unknown site)."""
        return (await self._entry(site))[1]

    async def any_bot(self) -> bool:
        """Whether any site answers with a bot (checked at most every SITE_CACHE_SECS), so
        routers spend no store round trip per message when none does."""
        if self._any_bot is not None and time.monotonic() - self._any_bot[0] <= SITE_CACHE_SECS:
            return self._any_bot[1]
        async with self._any_bot_lock:  # one look for every message that arrives meanwhile
            now = time.monotonic()
            if self._any_bot is None or now - self._any_bot[0] > SITE_CACHE_SECS:
                found = False
                for name in (sites.DEFAULT_SITE, *await self.storage.sites.names()):
                    settings = await self.settings(name)
                    found = found or bool(settings and settings.get("bot"))
                self._any_bot = (now, found)
            return self._any_bot[1]

    async def site_pools(self, site: str) -> frozenset[str] | None:
        """The pools of a named site: its routing rules' pools and its bot's pool (who sees
        its conversations, :func:`chatnode.access.site_allows`). None for the default site and
        for a site that does not exist: those are limited by pools alone."""
        if site == sites.DEFAULT_SITE:
            return None
        settings, routing = await self._entry(site)
        if settings is None:
            return None
        bot = settings.get("bot") or {}
        return frozenset((*routing.pools, *([bot["pool"]] if bot.get("pool") else [])))

    async def all_site_pools(self) -> dict[str, frozenset[str]]:
        """:meth:`site_pools` of every named live site (the names read at most every
        SITE_CACHE_SECS)."""
        now = time.monotonic()
        if self._names is None or now - self._names[0] > SITE_CACHE_SECS:
            self._names = (now, await self.storage.sites.names())
        out: dict[str, frozenset[str]] = {}
        for name in self._names[1]:
            of_site = await self.site_pools(name)
            if of_site is not None:
                out[name] = of_site
        return out

    def pools(self) -> tuple[str, ...]:
        """Every pool a cached site routes to (the router drains them on its tick too)."""
        seen: dict[str, None] = {}
        for _, _, routing in self._cache.values():
            seen.update(dict.fromkeys(routing.pools))
        return tuple(seen)
