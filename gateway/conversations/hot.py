"""The hot paths as plain SQL on the driver's own connection: opening a conversation, and
starting and finishing an answer (the calls between a send and its first token).

SQLAlchemy Core builds and runs every other statement. For these few, its work per
call cost more than the database did (bench/README.md): building the statement and
its cache key, processing every value of every row, and on PostgreSQL the greenlet
hop of the async adapter for each statement. Here each statement is a constant
string: sqlite3 and asyncpg prepare it once per connection and cache it, and rows
become records by position.

The SQL is written once with ``$n`` placeholders (asyncpg's); SQLite gets ``?n``.
On PostgreSQL the connection is the asyncpg connection under a pooled SQLAlchemy
connection, whose codecs already turn ``json`` columns into objects and take text
for them; on SQLite ``json`` columns are text both ways.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Any

import orjson

from gateway.conversations.store import ConversationRecord, MessageRecord

__all__ = [
    "FINISH",
    "LOAD_CONVERSATION",
    "LOAD_JOINED",
    "LOAD_MESSAGES",
    "MOVE_LEAF",
    "SEND_PG",
    "append_pg",
    "conversation_record",
    "dumps",
    "insert_messages",
    "joined_records",
    "message_records",
    "sqlite",
]

CONVERSATION_COLUMNS = (
    "id, user_id, title, title_auto, model, system_prompt, params, pinned, archived,"
    " created_at, updated_at, message_count, active_leaf_id"
)
"""In :class:`ConversationRecord` field order."""
MESSAGE_COLUMNS = (
    "id, conversation_id, parent_id, seq, role, content, status, model, stream_id,"
    " created_at, updated_at, usage, finish_reason, result"
)
"""In :class:`MessageRecord` field order."""

LOAD_CONVERSATION = (
    f"SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE id = $1 AND user_id = $2"
)
# Only read after LOAD_CONVERSATION found the owner's conversation.
LOAD_MESSAGES = f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = $1 ORDER BY seq"

_C = ", ".join(f"c.{name}" for name in CONVERSATION_COLUMNS.split(", "))
_M = ", ".join(f"m.{name}" for name in MESSAGE_COLUMNS.split(", "))
_JOIN = (
    " FROM conversations c LEFT JOIN messages m ON m.conversation_id = c.id"
    " WHERE c.id = $1 AND c.user_id = $2 ORDER BY m.seq"
)
LOAD_JOINED = f"SELECT {_C}, {_M}{_JOIN}"
"""PostgreSQL: the conversation and its messages in one round trip (see joined_records)."""

SEND_PG = (
    "WITH old AS (SELECT id, active_leaf_id, model FROM conversations"
    " WHERE id = $1 AND user_id = $2),"
    " u AS (UPDATE conversations SET message_count = conversations.message_count + 2,"
    " updated_at = $4, active_leaf_id = $6 FROM old"
    " WHERE conversations.id = old.id AND conversations.message_count + 2 <= $3"
    " RETURNING conversations.message_count AS n, old.active_leaf_id AS parent,"
    " CASE WHEN old.model = ANY(CAST($8 AS VARCHAR[])) THEN old.model"
    " ELSE CAST($9 AS VARCHAR) END AS model),"
    " ins AS (INSERT INTO messages (id, conversation_id, parent_id, seq, role, content, status,"
    " model, stream_id, created_at, updated_at, node)"
    " SELECT CAST($5 AS VARCHAR), $1, u.parent, u.n - 2, 'user', CAST($7 AS TEXT), 'done',"
    " NULL, NULL, $4, $4, NULL FROM u"
    " UNION ALL SELECT $6, $1, CAST($5 AS VARCHAR), u.n - 1, 'assistant', '', 'streaming',"
    " u.model, CAST($10 AS VARCHAR), $4, $4, CAST($11 AS VARCHAR) FROM u)"
    f" SELECT (SELECT n FROM u), (SELECT model FROM u), {_C}, {_M}{_JOIN}"
)
"""PostgreSQL, a send in one statement and one round trip: read the conversation and its
messages as they were, and (owner and limit checked) append the question under the active
leaf and the answer's ``streaming`` placeholder, move the leaf. Parameters: conversation,
user, message limit, now, question id, answer id, question, usable models, fallback model,
stream id, node. Rows: (message count after, answer's model, *LOAD_JOINED's columns);
none when not found, a NULL count when nothing was appended. Every part sees the snapshot
taken before the statement: a concurrent append from another process makes this one a
sibling branch, never a lost or duplicated message."""

MOVE_LEAF = (
    "UPDATE conversations SET message_count = message_count + $1, updated_at = $2,"
    " active_leaf_id = $3 WHERE id = $4 AND user_id = $5 AND message_count + $1 <= $6"
    " RETURNING message_count"
)
"""Checks owner and limit, reserves the sequence numbers, moves the active leaf."""

INSERT_MESSAGE = (
    f"INSERT INTO messages ({MESSAGE_COLUMNS}, node)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
)

FINISH = (
    "UPDATE messages SET content = $1, status = $2, updated_at = $3, usage = $4,"
    " finish_reason = $5, result = $6, node = NULL WHERE id = $7"
)

_VALUE = (
    "(CAST(${} AS VARCHAR), CAST(${} AS VARCHAR), {}, CAST(${} AS VARCHAR), CAST(${} AS TEXT),"
    " CAST(${} AS VARCHAR), CAST(${} AS VARCHAR), CAST(${} AS VARCHAR), CAST(${} AS VARCHAR))"
)
APPEND_PARAMS = 6
"""append_pg's leading parameters: conversation, user, count, limit, now, new leaf."""
PER_MESSAGE = 8
"""append_pg's parameters per message: id, parent, role, content, status, model, stream, node."""


@functools.lru_cache(maxsize=8)
def append_pg(count: int) -> str:
    """PostgreSQL: MOVE_LEAF and the insert of ``count`` messages in one statement (no
    BEGIN/COMMIT: one round trip). Nothing is inserted unless the update matched."""
    rows = []
    for i in range(count):
        base = APPEND_PARAMS + PER_MESSAGE * i
        params = [base + k for k in range(1, PER_MESSAGE + 1)]
        rows.append(_VALUE.format(params[0], params[1], i, *params[2:]))
    return (
        "WITH u AS (UPDATE conversations SET message_count = message_count + $3,"
        " updated_at = $5, active_leaf_id = $6"
        " WHERE id = $1 AND user_id = $2 AND message_count + $3 <= $4"
        " RETURNING message_count)"
        " INSERT INTO messages (id, conversation_id, parent_id, seq, role, content, status,"
        " model, stream_id, created_at, updated_at, node)"
        " SELECT v.id, $1, v.parent_id, u.message_count - $3 + v.i, v.role, v.content,"
        " v.status, v.model, v.stream_id, $5, $5, v.node"
        f" FROM u, (VALUES {', '.join(rows)})"
        " AS v(id, parent_id, i, role, content, status, model, stream_id, node)"
        " RETURNING id, seq"
    )


_PLACEHOLDER = re.compile(r"\$(\d+)")


def sqlite(statement: str) -> str:
    """The statement with SQLite's numbered placeholders (``?n``)."""
    return _PLACEHOLDER.sub(r"?\1", statement)


def dumps(value: Any) -> str | None:
    """A json column's text (None stays NULL)."""
    return None if value is None else orjson.dumps(value).decode()


def conversation_record(row: Sequence[Any], *, decoded: bool) -> ConversationRecord:
    """A LOAD_CONVERSATION row; ``decoded``: json is already an object and booleans are
    booleans (asyncpg), else text and 0/1 (SQLite)."""
    record = ConversationRecord(*row)
    if not decoded:
        record.title_auto = bool(record.title_auto)
        record.pinned = bool(record.pinned)
        record.archived = bool(record.archived)
        params: Any = record.params
        record.params = orjson.loads(params) if params is not None else {}
    record.params = dict(record.params or {})
    return record


_NC = len(CONVERSATION_COLUMNS.split(", "))
_NM = len(MESSAGE_COLUMNS.split(", "))


def joined_records(
    rows: Sequence[Sequence[Any]], skip: int = 0
) -> tuple[ConversationRecord, list[MessageRecord]] | None:
    """LOAD_JOINED rows (asyncpg; after ``skip`` leading columns): the conversation, and its
    messages (a conversation without any is one row of NULL message columns)."""
    if not rows:
        return None
    start, end = skip + _NC, skip + _NC + _NM
    record = conversation_record(tuple(rows[0])[skip:start], decoded=True)
    found = [MessageRecord(*values[start:end]) for values in map(tuple, rows) if values[start]]
    return record, found


def message_records(rows: Sequence[Sequence[Any]], *, decoded: bool) -> list[MessageRecord]:
    """LOAD_MESSAGES rows."""
    found = [MessageRecord(*row) for row in rows]
    if not decoded:
        loads = orjson.loads
        for m in found:
            if m.usage is not None:
                m.usage = loads(m.usage)  # type: ignore[arg-type]
            if m.result is not None:
                m.result = loads(m.result)  # type: ignore[arg-type]
    return found


def insert_messages(records: list[MessageRecord], node: str | None) -> list[tuple[Any, ...]]:
    """INSERT_MESSAGE parameters for SQLite (json as text)."""
    return [
        (
            r.id,
            r.conversation_id,
            r.parent_id,
            r.seq,
            r.role,
            r.content,
            r.status,
            r.model,
            r.stream_id,
            r.created_at,
            r.updated_at,
            dumps(r.usage),
            r.finish_reason,
            dumps(r.result),
            node if r.status == "streaming" else None,
        )
        for r in records
    ]
