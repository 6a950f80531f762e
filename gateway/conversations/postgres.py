"""PostgreSQL, for several gateway processes or hosts: ``[conversations] url``.

asyncpg speaks the protocol on the event loop itself. Accepts ``postgresql://``
URLs (the driver is added); the password may come from ``PGPASSWORD`` instead
of the URL, so it need not sit in the config file.
"""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.conversations.runner import AsyncRunner

__all__ = ["postgres_runner"]


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def postgres_runner(url: str, *, pool_size: int = 10) -> AsyncRunner:
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            url = "postgresql+asyncpg://" + url[len(prefix) :]
    options: dict[str, Any] = {
        "pool_size": pool_size,
        "max_overflow": pool_size,  # two pools: at most 4 x pool_size connections
        # No pre-ping (a round trip per checkout): a connection the server dropped fails
        # its statement, is discarded, and the next checkout opens a fresh one.
        "pool_recycle": 1800,
        # The most recently used connection first: its server process is the one still warm.
        "pool_use_lifo": True,
        # Every use ends its own transaction (commit, rollback, or autocommit), so the pool's
        # ROLLBACK on return would be a wasted round trip.
        "pool_reset_on_return": None,
        "json_serializer": _dumps,
        "json_deserializer": orjson.loads,
    }
    # Two pools: transactions, and autocommit for reads and one-statement writes (switching
    # one connection's isolation level per use costs more than a second small pool).
    return AsyncRunner(
        create_async_engine(url, **options),
        autocommit=create_async_engine(url, isolation_level="AUTOCOMMIT", **options),
    )
