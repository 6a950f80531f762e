"""SQLite, the embedded default: one file in the data directory, WAL mode, nothing to install.

aiosqlite runs each connection's calls on its own thread, so the event loop
never waits on the disk. SQLite has one writer at a time: the store orders
this process's writes with an asyncio lock, and ``busy_timeout`` covers the
rare second process (a backup, the ``sqlite3`` shell). For several gateway
processes use PostgreSQL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

__all__ = ["DB_FILE", "sqlite_engine"]

DB_FILE = "gateway.db"


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def sqlite_engine(path: str | Path | None) -> AsyncEngine:
    """An engine on the database file at ``path`` (None: a private in-memory database)."""
    if path is None:
        engine = create_async_engine(
            "sqlite+aiosqlite://",
            poolclass=StaticPool,
            connect_args={"check_same_thread": False},
            json_serializer=_dumps,
            json_deserializer=orjson.loads,
        )
    else:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(
            f"sqlite+aiosqlite:///{Path(path)}",
            json_serializer=_dumps,
            json_deserializer=orjson.loads,
            pool_size=4,
            max_overflow=4,
        )

    @event.listens_for(engine.sync_engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        if path is not None:
            cursor.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL: a commit survives a process crash; only power loss can take the
            # last transactions, never corrupt the file.
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=5000")
        cursor.close()

    return engine
