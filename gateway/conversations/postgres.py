"""PostgreSQL, for several gateway processes or hosts: ``[conversations] url``.

asyncpg speaks the protocol on the event loop itself. Accepts ``postgresql://``
URLs (the driver is added); the password may come from ``PGPASSWORD`` instead
of the URL, so it need not sit in the config file.
"""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

__all__ = ["postgres_engine"]


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def postgres_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            url = "postgresql+asyncpg://" + url[len(prefix) :]
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size * 2,
        pool_pre_ping=True,
        json_serializer=_dumps,
        json_deserializer=orjson.loads,
    )
