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
    engine = create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size * 2,
        # No pre-ping (a round trip per checkout): a connection the server dropped fails
        # its statement, is discarded, and the next checkout opens a fresh one.
        pool_recycle=1800,
        # The most recently used connection first: its server process is the one still warm.
        pool_use_lifo=True,
        json_serializer=_dumps,
        json_deserializer=orjson.loads,
    )
    return AsyncRunner(engine)
