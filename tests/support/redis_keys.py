"""Keys of the shared Redis on this machine: tests use a prefix of their own and delete it
afterwards (never FLUSHALL: the server is shared)."""

from __future__ import annotations

import os

import redis.asyncio as aioredis

REDIS_URL = os.environ.get("TIDEDESK_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


async def delete_prefix(prefix: str) -> int:
    """Delete every key under ``prefix``; how many there were."""
    r = aioredis.Redis.from_url(REDIS_URL)
    try:
        keys = [k async for k in r.scan_iter(match=prefix + "*", count=500)]
        if keys:
            await r.delete(*keys)
        return len(keys)
    finally:
        await r.aclose()
