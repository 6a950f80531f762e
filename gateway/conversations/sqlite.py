"""SQLite, the embedded default: one file in the data directory, WAL mode, nothing to install.

Operations run on worker threads (:class:`~gateway.conversations.runner.ThreadRunner`)
with the stdlib driver, so the event loop never waits on the disk. SQLite has
one writer at a time: this process's writes share one thread, and
``busy_timeout`` covers the rare second process (a backup, the ``sqlite3``
shell). For several gateway processes use PostgreSQL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import create_engine, event
from sqlalchemy.pool import StaticPool

from gateway.conversations.runner import ThreadRunner

__all__ = ["DB_FILE", "sqlite_runner"]

DB_FILE = "gateway.db"
READERS = 3


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def sqlite_runner(path: str | Path | None) -> ThreadRunner:
    """A runner on the database file at ``path`` (None: a private in-memory database, used
    by one thread)."""
    if path is None:
        engine = create_engine(
            "sqlite://",
            poolclass=StaticPool,
            connect_args={"check_same_thread": False},
            json_serializer=_dumps,
            json_deserializer=orjson.loads,
        )
    else:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            f"sqlite:///{Path(path)}",
            connect_args={"check_same_thread": False},
            json_serializer=_dumps,
            json_deserializer=orjson.loads,
            pool_size=READERS + 1,
            max_overflow=0,
        )

    @event.listens_for(engine, "connect")
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

    return ThreadRunner(engine, readers=READERS if path is not None else 0)
