"""The conversation schema at its current version (SQLAlchemy Core tables).

Queries use these tables; :mod:`gateway.conversations.migrations` creates
and upgrades a database to this shape. Times are Unix seconds (float).
"""

from __future__ import annotations

import sqlalchemy as sa

__all__ = [
    "conversations",
    "messages",
    "metadata",
    "schema_version",
    "sessions",
    "user_settings",
]

metadata = sa.MetaData()

ID = sa.String(32)

schema_version = sa.Table(
    "schema_version",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("applied_at", sa.Float, nullable=False),
)

conversations = sa.Table(
    "conversations",
    metadata,
    sa.Column("id", ID, primary_key=True),
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
    sa.Column("active_leaf_id", ID, nullable=True),
    sa.Index("ix_conversations_list", "user_id", "archived", "pinned", "updated_at", "id"),
)

messages = sa.Table(
    "messages",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column(
        "conversation_id",
        ID,
        sa.ForeignKey("conversations.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("parent_id", ID, nullable=True),
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
    # Version 2
    sa.Column("result", sa.JSON, nullable=True),
    sa.Column("node", sa.String(255), nullable=True),
    sa.Index("ix_messages_conversation", "conversation_id", "seq"),
    sa.Index("ix_messages_status", "status"),
)

# Version 2

user_settings = sa.Table(
    "user_settings",
    metadata,
    sa.Column("user_id", sa.String(255), primary_key=True),
    sa.Column("current_conversation_id", ID, nullable=True),
    sa.Column("system_prompt", sa.Text, nullable=True),
    sa.Column("updated_at", sa.Float, nullable=False),
)

sessions = sa.Table(
    "sessions",
    metadata,
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
