"""Conversations kept on the server: a store protocol, one schema and its migrations,
SQLite (the embedded default) and PostgreSQL.

    store.py       ConversationStore protocol and records
    schema.py      the tables at the current version
    migrations.py  versioned steps, applied at start
    runner.py      runs one operation off the loop (worker thread / asyncpg)
    sql.py         the implementation on SQLAlchemy Core
    sqlite.py      the embedded database (a file in the data directory, WAL)
    postgres.py    the database for several processes (asyncpg)
    tree.py        branches, siblings and leaves
    export.py      JSON and Markdown
"""

from __future__ import annotations

from pathlib import Path

from gateway.conversations.sql import SqlConversationStore
from gateway.conversations.store import ConversationStore, StoreLimits

__all__ = ["ConversationStore", "SqlConversationStore", "StoreLimits", "make_store"]


def make_store(
    url: str | None, *, sqlite_path: str | Path | None, limits: StoreLimits
) -> SqlConversationStore:
    """The store for ``url`` (PostgreSQL), else SQLite at ``sqlite_path`` (None: in memory,
    for tests and library use). Nothing connects before :meth:`~SqlConversationStore.start`,
    which applies the migrations."""
    if url:
        from gateway.conversations.postgres import postgres_runner

        return SqlConversationStore(postgres_runner(url), limits=limits)
    from gateway.conversations.sqlite import sqlite_runner

    return SqlConversationStore(sqlite_runner(sqlite_path), limits=limits)
