"""Versioned migrations, applied at start.

A small runner on SQLAlchemy instead of Alembic: the migrations are a few
additive steps that must run the same on SQLite and PostgreSQL, at every
start, from inside the server (no ``alembic.ini``, ``env.py`` or script
directory to ship and locate, no second engine). Each step is a function of
a sync :class:`~sqlalchemy.engine.Connection` that brings the database from
version ``n - 1`` to ``n``; ``schema_version`` records what was applied. Steps
freeze their own DDL, so version 1 stays the initial schema whatever the
current tables in :mod:`gateway.conversations.schema` look like.

On PostgreSQL the runner holds a transaction-level advisory lock while it
works, so several processes starting at once apply each step exactly once
(PostgreSQL's DDL is transactional: a failed step leaves the old version).
SQLite serves one process (see :mod:`gateway.conversations.sqlite`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from gateway.conversations.runner import DbRunner

__all__ = ["LATEST", "MIGRATIONS", "current_version", "migrate"]

_LOCK_KEY = 0x6761_7465  # "gate": the advisory lock id of the runner on PostgreSQL


def _v1(conn: Connection) -> None:
    """Initial schema: conversations and their message tree."""
    md = sa.MetaData()
    ident = sa.String(32)
    sa.Table(
        "conversations",
        md,
        sa.Column("id", ident, primary_key=True),
        sa.Column("user_id", sa.String(255), nullable=False),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("title_auto", sa.Boolean, nullable=False),
        sa.Column("model", sa.String(255), nullable=False),
        sa.Column("system_prompt", sa.Text, nullable=True),
        sa.Column("params", sa.JSON, nullable=False),
        sa.Column("pinned", sa.Boolean, nullable=False),
        sa.Column("archived", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("message_count", sa.Integer, nullable=False),
        sa.Column("active_leaf_id", ident, nullable=True),
        sa.Index("ix_conversations_list", "user_id", "archived", "pinned", "updated_at", "id"),
    )
    sa.Table(
        "messages",
        md,
        sa.Column("id", ident, primary_key=True),
        sa.Column(
            "conversation_id",
            ident,
            sa.ForeignKey("conversations.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("parent_id", ident, nullable=True),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("content", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("model", sa.String(255), nullable=True),
        sa.Column("stream_id", sa.String(64), nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("usage", sa.JSON, nullable=True),
        sa.Column("finish_reason", sa.String(16), nullable=True),
        sa.Index("ix_messages_conversation", "conversation_id", "seq"),
        sa.Index("ix_messages_status", "status"),
    )
    md.create_all(conn)


def _v2(conn: Connection) -> None:
    """Final stream results and owning node on messages; user settings; sessions."""
    conn.execute(sa.text("ALTER TABLE messages ADD COLUMN result JSON"))
    conn.execute(sa.text("ALTER TABLE messages ADD COLUMN node VARCHAR(255)"))
    md = sa.MetaData()
    sa.Table(
        "user_settings",
        md,
        sa.Column("user_id", sa.String(255), primary_key=True),
        sa.Column("current_conversation_id", sa.String(32), nullable=True),
        sa.Column("system_prompt", sa.Text, nullable=True),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    sa.Table(
        "sessions",
        md,
        sa.Column("user_id", sa.String(255), primary_key=True),
        sa.Column("current_model", sa.String(255), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("last_activity", sa.Float, nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger, nullable=False),
        sa.Column("completion_tokens", sa.BigInteger, nullable=False),
        sa.Column("requests", sa.BigInteger, nullable=False),
        sa.Column("cost", sa.Float, nullable=False),
        sa.Index("ix_sessions_activity", "last_activity"),
    )
    md.create_all(conn)


MIGRATIONS: tuple[tuple[int, str, Callable[[Connection], None]], ...] = (
    (1, "initial schema: conversations, messages", _v1),
    (2, "message results and node; user settings; sessions", _v2),
)
LATEST = MIGRATIONS[-1][0]

_VERSION_TABLE = sa.Table(
    "schema_version",
    sa.MetaData(),
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("applied_at", sa.Float, nullable=False),
)


def _current(conn: Connection) -> int:
    found = conn.execute(sa.select(sa.func.max(_VERSION_TABLE.c.version))).scalar()
    return int(found or 0)


def _upgrade(conn: Connection, target: int) -> list[int]:
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
    _VERSION_TABLE.create(conn, checkfirst=True)
    have = _current(conn)
    applied = []
    for version, description, step in MIGRATIONS:
        if have < version <= target:
            step(conn)
            conn.execute(
                _VERSION_TABLE.insert().values(
                    version=version, description=description, applied_at=time.time()
                )
            )
            applied.append(version)
    return applied


async def migrate(runner: DbRunner, *, target: int = LATEST) -> list[int]:
    """Bring the database up to ``target``; returns the versions applied now."""
    return await runner.run(lambda conn: _upgrade(conn, target), write=True)


def _version(conn: Connection) -> int:
    if not sa.inspect(conn).has_table("schema_version"):
        return 0
    return _current(conn)


async def current_version(runner: DbRunner) -> int:
    """The version the database is at (0 for an empty database)."""
    return await runner.run(_version, write=False)
