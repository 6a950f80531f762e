"""The conversation store on SQLAlchemy Core: one implementation for SQLite and PostgreSQL.

Each operation is one synchronous function of a connection, run in one
transaction by a :class:`~gateway.conversations.runner.DbRunner` (a worker
thread for SQLite, asyncpg on the loop for PostgreSQL), so the loop never
blocks and an operation of several statements costs one hop. Every query that
touches a conversation matches ``user_id`` too, so another user's rows are
simply not found. A streamed answer costs two writes (start and end), never
one per delta.
"""

from __future__ import annotations

import base64
import dataclasses
import uuid
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from gateway.conversations import hot
from gateway.conversations.migrations import current_version, migrate
from gateway.conversations.runner import AsyncRunner, DbRunner
from gateway.conversations.schema import conversations, messages, user_settings
from gateway.conversations.store import (
    AnswerStart,
    Ask,
    ConversationRecord,
    MessageRecord,
    NewMessage,
    Page,
    Plan,
    StoreLimits,
    UserSettings,
)
from gateway.conversations.tree import Tree
from gateway.errors import ConversationLimit

__all__ = ["SqlConversationStore", "new_id"]

PLACEHOLDER_TITLE = "New conversation"
_UPDATABLE = {
    "title",
    "title_auto",
    "model",
    "system_prompt",
    "params",
    "pinned",
    "archived",
    "active_leaf_id",
}


def new_id() -> str:
    return uuid.uuid4().hex


def _like(text: str) -> str:
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _conversation(row: Row[Any]) -> ConversationRecord:
    """A row of ``select(conversations)`` (columns in table order)."""
    return _conversation_from(dict(zip(conversations.c.keys(), tuple(row), strict=True)))


def _conversation_from(m: Any) -> ConversationRecord:
    return ConversationRecord(
        id=m["id"],
        user_id=m["user_id"],
        title=m["title"],
        title_auto=bool(m["title_auto"]),
        model=m["model"],
        system_prompt=m["system_prompt"],
        params=dict(m["params"] or {}),
        pinned=bool(m["pinned"]),
        archived=bool(m["archived"]),
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        message_count=m["message_count"],
        active_leaf_id=m["active_leaf_id"],
    )


def _message(row: Row[Any]) -> MessageRecord:
    """A row of ``select(messages)`` (columns in table order)."""
    return _message_from(dict(zip(messages.c.keys(), tuple(row), strict=True)))


def _message_from(m: Any) -> MessageRecord:
    return MessageRecord(
        id=m["id"],
        conversation_id=m["conversation_id"],
        parent_id=m["parent_id"],
        seq=m["seq"],
        role=m["role"],
        content=m["content"],
        status=m["status"],
        model=m["model"],
        stream_id=m["stream_id"],
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        usage=m["usage"],
        finish_reason=m["finish_reason"],
        result=m["result"],
    )


def encode_cursor(record: ConversationRecord) -> str:
    raw = orjson.dumps([record.pinned, record.updated_at, record.id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[bool, float, str] | None:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        pinned, updated, ident = orjson.loads(raw)
    except (ValueError, TypeError, orjson.JSONDecodeError):
        return None
    if (
        not isinstance(pinned, bool)
        or not isinstance(updated, int | float)
        or not isinstance(ident, str)
    ):
        return None
    return pinned, float(updated), ident


def _get(conn: Connection, user_id: str, conversation_id: str) -> ConversationRecord | None:
    row = conn.execute(
        sa.select(conversations).where(
            conversations.c.id == conversation_id, conversations.c.user_id == user_id
        )
    ).first()
    return _conversation(row) if row is not None else None


_M_FIELDS = [f.name for f in dataclasses.fields(MessageRecord)]
# Records are built by position from rows: their fields follow the table's columns.
assert [col.name for col in conversations.c] == [
    f.name for f in dataclasses.fields(ConversationRecord)
]
assert [col.name for col in messages.c][: len(_M_FIELDS)] == _M_FIELDS

_SQLITE_LOAD_CONVERSATION = hot.sqlite(hot.LOAD_CONVERSATION)
_SQLITE_LOAD_MESSAGES = hot.sqlite(hot.LOAD_MESSAGES)
_SQLITE_MOVE_LEAF = hot.sqlite(hot.MOVE_LEAF)
_SQLITE_INSERT_MESSAGE = hot.sqlite(hot.INSERT_MESSAGE)
_SQLITE_FINISH = hot.sqlite(hot.FINISH)


def _load(
    conn: Connection, user_id: str, conversation_id: str
) -> tuple[ConversationRecord, list[MessageRecord]] | None:
    """SQLite: the conversation and its messages, on the driver's connection (hot path)."""
    raw = conn.connection.driver_connection
    assert raw is not None
    row = raw.execute(_SQLITE_LOAD_CONVERSATION, (conversation_id, user_id)).fetchone()
    if row is None:
        return None
    rows = raw.execute(_SQLITE_LOAD_MESSAGES, (conversation_id,)).fetchall()
    return hot.conversation_record(row, decoded=False), hot.message_records(rows, decoded=False)


async def _load_pg(
    pg: Any, user_id: str, conversation_id: str
) -> tuple[ConversationRecord, list[MessageRecord]] | None:
    """PostgreSQL: the same on an asyncpg connection, one joined statement (one round
    trip: on a busy machine each one waits for the server process to be scheduled)."""
    return hot.joined_records(await pg.fetch(hot.LOAD_JOINED, conversation_id, user_id))


def _new_records(
    conversation_id: str, new: list[NewMessage], now: float, first_seq: int = 0
) -> list[MessageRecord]:
    """Records for ``new`` with fresh ids; "@prev" parents resolved."""
    records: list[MessageRecord] = []
    previous: str | None = None
    for i, item in enumerate(new):
        record = MessageRecord(
            id=new_id(),
            conversation_id=conversation_id,
            parent_id=previous if item.parent == "@prev" else item.parent,
            seq=first_seq + i,
            role=item.role,
            content=item.content,
            status=item.status,
            model=item.model,
            stream_id=item.stream_id,
            created_at=now,
            updated_at=now,
            result=item.extra.get("result"),
        )
        records.append(record)
        previous = record.id
    return records


def _limit_error(most: int) -> ConversationLimit:
    return ConversationLimit(
        f"This conversation already holds {most} messages; start a new one",
        {"limit": "messagesPerConversation", "max": most},
    )


def _rows(conn: Connection, conversation_id: str) -> list[MessageRecord]:
    rows = conn.execute(
        sa.select(messages)
        .where(messages.c.conversation_id == conversation_id)
        .order_by(messages.c.seq)
    ).all()
    return [_message(r) for r in rows]


class SqlConversationStore:
    """A :class:`~gateway.conversations.store.ConversationStore` on a :class:`DbRunner`."""

    def __init__(self, runner: DbRunner, *, limits: StoreLimits | None = None) -> None:
        self.runner = runner
        self.limits = limits or StoreLimits()
        self._postgres = runner.dialect == "postgresql"
        self._pg = runner if isinstance(runner, AsyncRunner) else None

    @property
    def embedded(self) -> bool:
        """True for SQLite: one process owns the database."""
        return self.runner.embedded

    async def start(self) -> list[int]:
        """Apply pending migrations; the versions applied."""
        return await migrate(self.runner)

    async def migrate(self, *, target: int) -> list[int]:
        return await migrate(self.runner, target=target)

    async def version(self) -> int:
        return await current_version(self.runner)

    # Conversations

    async def create(
        self,
        user_id: str,
        *,
        title: str | None,
        model: str,
        system_prompt: str | None,
        params: dict[str, Any],
        now: float,
    ) -> ConversationRecord:
        record = ConversationRecord(
            id=new_id(),
            user_id=user_id,
            title=title or PLACEHOLDER_TITLE,
            title_auto=not title,
            model=model,
            system_prompt=system_prompt,
            params=params,
            pinned=False,
            archived=False,
            created_at=now,
            updated_at=now,
            message_count=0,
            active_leaf_id=None,
        )

        def op(conn: Connection) -> None:
            self._check_conversation_limit(conn, user_id)
            conn.execute(conversations.insert().values(**_conversation_values(record)))

        await self.runner.run(op, write=True)
        return record

    def _check_conversation_limit(self, conn: Connection, user_id: str) -> None:
        if self._postgres:
            # Concurrent creates of one user queue here, so the count below stays true.
            conn.execute(
                sa.text("SELECT pg_advisory_xact_lock(hashtext(:user))"), {"user": user_id}
            )
        most = self.limits.conversations_per_user
        count = conn.scalar(
            sa.select(sa.func.count())
            .select_from(conversations)
            .where(conversations.c.user_id == user_id)
        )
        if (count or 0) >= most:
            raise ConversationLimit(
                f"You already have {most} conversations; delete some to start another",
                {"limit": "conversationsPerUser", "max": most},
            )

    async def list_page(
        self,
        user_id: str,
        *,
        cursor: str | None,
        limit: int,
        query: str | None,
        archived: bool,
    ) -> Page:
        c = conversations.c
        stmt = sa.select(conversations).where(c.user_id == user_id, c.archived == archived)
        if cursor is not None:
            after = decode_cursor(cursor)
            if after is not None:
                pinned, updated, ident = after
                same = sa.and_(
                    c.pinned == pinned,
                    sa.or_(c.updated_at < updated, sa.and_(c.updated_at == updated, c.id < ident)),
                )
                # Pinned ones come first: after a pinned cursor, every unpinned one follows.
                stmt = stmt.where(sa.or_(c.pinned == sa.false(), same) if pinned else same)
        if query:
            pattern = _like(query)
            text_match = (
                sa.select(messages.c.id)
                .where(
                    messages.c.conversation_id == c.id,
                    sa.func.lower(messages.c.content).like(pattern, escape="\\"),
                )
                .exists()
            )
            stmt = stmt.where(sa.or_(sa.func.lower(c.title).like(pattern, escape="\\"), text_match))
        stmt = stmt.order_by(c.pinned.desc(), c.updated_at.desc(), c.id.desc()).limit(limit + 1)

        def op(conn: Connection) -> list[ConversationRecord]:
            return [_conversation(r) for r in conn.execute(stmt).all()]

        rows = await self.runner.run(op, write=False)
        items = rows[:limit]
        more = len(rows) > limit
        return Page(items, encode_cursor(items[-1]) if more and items else None)

    async def get(self, user_id: str, conversation_id: str) -> ConversationRecord | None:
        return await self.runner.run(lambda conn: _get(conn, user_id, conversation_id), write=False)

    async def messages(self, user_id: str, conversation_id: str) -> list[MessageRecord] | None:
        loaded = await self.load(user_id, conversation_id)
        return loaded[1] if loaded is not None else None

    async def load(
        self, user_id: str, conversation_id: str
    ) -> tuple[ConversationRecord, list[MessageRecord]] | None:
        """The conversation and its messages."""
        if self._pg is not None:
            async with self._pg.driver() as pg:
                return await _load_pg(pg, user_id, conversation_id)
        return await self.runner.run(
            lambda conn: _load(conn, user_id, conversation_id), write=False
        )

    async def update(
        self, user_id: str, conversation_id: str, now: float, **fields: Any
    ) -> ConversationRecord | None:
        touch = fields.pop("touch", True)
        unknown = set(fields) - _UPDATABLE
        if unknown:
            raise ValueError(f"cannot update {sorted(unknown)}")
        values = dict(fields)
        if touch:
            values["updated_at"] = now

        def op(conn: Connection) -> ConversationRecord | None:
            if values:
                result = conn.execute(
                    conversations.update()
                    .where(
                        conversations.c.id == conversation_id,
                        conversations.c.user_id == user_id,
                    )
                    .values(**values)
                )
                if result.rowcount == 0:
                    return None
            return _get(conn, user_id, conversation_id)

        return await self.runner.run(op, write=True)

    async def delete(self, user_id: str, conversation_id: str) -> bool:
        def op(conn: Connection) -> bool:
            if _get(conn, user_id, conversation_id) is None:
                return False
            conn.execute(messages.delete().where(messages.c.conversation_id == conversation_id))
            conn.execute(conversations.delete().where(conversations.c.id == conversation_id))
            conn.execute(
                user_settings.update()
                .where(
                    user_settings.c.user_id == user_id,
                    user_settings.c.current_conversation_id == conversation_id,
                )
                .values(current_conversation_id=None)
            )
            return True

        return await self.runner.run(op, write=True)

    # Messages

    def _append(
        self,
        conn: Connection,
        user_id: str,
        conversation_id: str,
        new: list[NewMessage],
        now: float,
        node: str | None,
    ) -> list[MessageRecord] | None:
        """Append ``new`` in the caller's transaction; the last becomes the active leaf.

        One statement checks owner and limit, reserves the sequence numbers and moves the
        active leaf; then the insert. SQLite runs both as plain SQL (the send's hot path).
        """
        most = self.limits.messages_per_conversation
        records = _new_records(conversation_id, new, now)
        n = len(records)
        raw = None if self._postgres else conn.connection.driver_connection
        if raw is not None:
            got = raw.execute(
                _SQLITE_MOVE_LEAF, (n, now, records[-1].id, conversation_id, user_id, most)
            ).fetchall()
        else:
            c = conversations.c
            got = conn.execute(
                conversations.update()
                .where(c.id == conversation_id, c.user_id == user_id, c.message_count + n <= most)
                .values(
                    message_count=c.message_count + n, updated_at=now, active_leaf_id=records[-1].id
                )
                .returning(c.message_count)
            ).all()
        if not got:
            if _get(conn, user_id, conversation_id) is None:
                return None
            raise _limit_error(most)
        first_seq = got[0][0] - n
        for r in records:
            r.seq += first_seq
        if raw is not None:
            raw.executemany(_SQLITE_INSERT_MESSAGE, hot.insert_messages(records, node))
        else:
            conn.execute(
                messages.insert(),
                [
                    {**_message_values(r), "node": node if r.status == "streaming" else None}
                    for r in records
                ],
            )
        return records

    async def add_messages(
        self,
        user_id: str,
        conversation_id: str,
        new: list[NewMessage],
        now: float,
        *,
        node: str | None = None,
    ) -> list[MessageRecord] | None:
        return await self.runner.run(
            lambda conn: self._append(conn, user_id, conversation_id, new, now, node), write=True
        )

    async def start_answer(
        self, user_id: str, conversation_id: str, plan: Plan, now: float, *, node: str | None
    ) -> AnswerStart | None:
        """Read the conversation, let ``plan`` choose the messages, append them.

        SQLite: one transaction on the writer thread, so the answer's history is exactly
        what was stored. PostgreSQL: two statements and no BEGIN/COMMIT (two round trips
        instead of five): the read, then one statement that checks owner and limit,
        reserves the sequence numbers, moves the active leaf and inserts. A concurrent
        append from another process in between makes the new messages a sibling branch,
        never a lost or duplicated message.
        """
        if self._postgres:
            return await self._start_answer_pg(user_id, conversation_id, plan, now, node)

        def op(conn: Connection) -> AnswerStart | None:
            loaded = _load(conn, user_id, conversation_id)
            if loaded is None:
                return None
            record, tree = loaded[0], Tree(loaded[1])
            added = self._append(conn, user_id, conversation_id, plan(record, tree), now, node)
            if added is None:
                return None
            return AnswerStart(record, tree, added)

        return await self.runner.run(op, write=True)

    async def start_send(
        self, user_id: str, conversation_id: str, ask: Ask, now: float, *, node: str | None
    ) -> AnswerStart | None:
        """A question under the active leaf and its answer's placeholder. PostgreSQL: one
        statement (hot.SEND_PG); SQLite: :meth:`start_answer`'s one transaction."""
        if self._pg is None:

            def plan(record: ConversationRecord, tree: Tree) -> list[NewMessage]:
                model = record.model if record.model in ask.models else ask.fallback
                return [
                    NewMessage("user", ask.question, parent=record.active_leaf_id),
                    NewMessage(
                        "assistant",
                        "",
                        status="streaming",
                        model=model,
                        stream_id=ask.stream_id,
                        parent="@prev",
                    ),
                ]

            return await self.start_answer(user_id, conversation_id, plan, now, node=node)
        most = self.limits.messages_per_conversation
        question_id, answer_id = new_id(), new_id()
        async with self._pg.driver() as pg:
            rows = await pg.fetch(
                hot.SEND_PG,
                conversation_id,
                user_id,
                most,
                now,
                question_id,
                answer_id,
                ask.question,
                list(ask.models),
                ask.fallback,
                ask.stream_id,
                node,
            )
        loaded = hot.joined_records(rows, skip=2)
        if loaded is None:
            return None
        record, found = loaded
        count, model = rows[0][0], rows[0][1]
        if count is None:
            if record.message_count + 2 <= most:
                return None  # deleted meanwhile
            raise _limit_error(most)
        question = MessageRecord(
            question_id, conversation_id, record.active_leaf_id, count - 2, "user",
            ask.question, "done", None, None, now, now,
        )  # fmt: skip
        answer = MessageRecord(
            answer_id, conversation_id, question_id, count - 1, "assistant", "",
            "streaming", model, ask.stream_id, now, now,
        )  # fmt: skip
        return AnswerStart(record, Tree(found), [question, answer])

    async def _start_answer_pg(
        self, user_id: str, conversation_id: str, plan: Plan, now: float, node: str | None
    ) -> AnswerStart | None:
        assert self._pg is not None
        most = self.limits.messages_per_conversation
        async with self._pg.driver() as pg:
            loaded = await _load_pg(pg, user_id, conversation_id)
            if loaded is None:
                return None
            record, tree = loaded[0], Tree(loaded[1])
            records = _new_records(conversation_id, plan(record, tree), now)
            args: list[Any] = [conversation_id, user_id, len(records), most, now, records[-1].id]
            for r in records:
                args += (r.id, r.parent_id, r.role, r.content, r.status, r.model, r.stream_id)
                args.append(node if r.status == "streaming" else None)
            seqs = dict(list(await pg.fetch(hot.append_pg(len(records)), *args)))
            if not seqs:
                if await pg.fetchrow(hot.LOAD_CONVERSATION, conversation_id, user_id) is None:
                    return None
                raise _limit_error(most)
        for r in records:
            r.seq = seqs[r.id]
        return AnswerStart(record, tree, records)

    async def finish_message(
        self,
        message_id: str,
        *,
        content: str,
        status: str,
        now: float,
        usage: dict[str, Any] | None = None,
        finish_reason: str | None = None,
        result: dict[str, Any] | None = None,
    ) -> None:
        args = (content, status, now, hot.dumps(usage), finish_reason, hot.dumps(result))
        if self._pg is not None:
            async with self._pg.driver() as pg:
                await pg.execute(hot.FINISH, *args, message_id)
            return

        def op(conn: Connection) -> None:
            raw = conn.connection.driver_connection
            assert raw is not None
            raw.execute(_SQLITE_FINISH, (*args, message_id))

        await self.runner.run(op, write=True)

    async def fork(
        self, user_id: str, conversation_id: str, message_id: str, now: float
    ) -> ConversationRecord | None:
        def op(conn: Connection) -> ConversationRecord | None:
            source = _get(conn, user_id, conversation_id)
            if source is None:
                return None
            tree = Tree(_rows(conn, conversation_id))
            if message_id not in tree.by_id:
                return None
            branch = tree.branch(message_id)
            self._check_conversation_limit(conn, user_id)
            record = ConversationRecord(
                id=new_id(),
                user_id=user_id,
                title=f"{source.title} (fork)",
                title_auto=False,
                model=source.model,
                system_prompt=source.system_prompt,
                params=dict(source.params),
                pinned=False,
                archived=False,
                created_at=now,
                updated_at=now,
                message_count=len(branch),
                active_leaf_id=None,
            )
            copies = []
            parent: str | None = None
            for i, m in enumerate(branch):
                copy = MessageRecord(
                    id=new_id(),
                    conversation_id=record.id,
                    parent_id=parent,
                    seq=i,
                    role=m.role,
                    content=m.content,
                    # A fork is a snapshot: an answer still streaming there is cut here.
                    status="unfinished" if m.status == "streaming" else m.status,
                    model=m.model,
                    stream_id=None,
                    created_at=m.created_at,
                    updated_at=now,
                    usage=m.usage,
                    finish_reason=m.finish_reason,
                    result=m.result,
                )
                copies.append(copy)
                parent = copy.id
            record.active_leaf_id = parent
            conn.execute(conversations.insert().values(**_conversation_values(record)))
            if copies:
                conn.execute(messages.insert(), [_message_values(m) for m in copies])
            return record

        return await self.runner.run(op, write=True)

    # Per-user settings (the origin session's current conversation and system prompt)

    async def settings(self, user_id: str) -> UserSettings:
        def op(conn: Connection) -> UserSettings:
            row = conn.execute(
                sa.select(user_settings).where(user_settings.c.user_id == user_id)
            ).first()
            if row is None:
                return UserSettings(user_id)
            m = row._mapping
            return UserSettings(user_id, m["current_conversation_id"], m["system_prompt"])

        return await self.runner.run(op, write=False)

    async def save_settings(self, settings: UserSettings, now: float) -> None:
        values = {
            "current_conversation_id": settings.current_conversation_id,
            "system_prompt": settings.system_prompt,
            "updated_at": now,
        }

        def op(conn: Connection) -> None:
            result = conn.execute(
                user_settings.update()
                .where(user_settings.c.user_id == settings.user_id)
                .values(**values)
            )
            if result.rowcount == 0:
                conn.execute(user_settings.insert().values(user_id=settings.user_id, **values))

        await self.runner.run(op, write=True)

    # Housekeeping

    async def mark_interrupted(
        self, *, node: str | None = None, stale_before: float | None = None, now: float
    ) -> int:
        either = []
        if node is not None:
            either.append(messages.c.node == node)
        if stale_before is not None:
            either.append(messages.c.updated_at < stale_before)
        where = [messages.c.status == "streaming"]
        if either:
            where.append(sa.or_(*either))
        stmt = messages.update().where(*where).values(status="interrupted", updated_at=now)
        return await self.runner.run(
            lambda conn: int(conn.execute(stmt).rowcount or 0), write=True, single=True
        )

    async def cleanup(self, older_than: float) -> int:
        c = conversations.c

        def op(conn: Connection) -> int:
            old = sa.select(c.id).where(c.updated_at < older_than, c.pinned.is_(False))
            conn.execute(messages.delete().where(messages.c.conversation_id.in_(old)))
            result = conn.execute(
                conversations.delete().where(c.updated_at < older_than, c.pinned.is_(False))
            )
            return int(result.rowcount or 0)

        return await self.runner.run(op, write=True)

    async def close(self) -> None:
        await self.runner.close()


def _conversation_values(r: ConversationRecord) -> dict[str, Any]:
    return {
        "id": r.id,
        "user_id": r.user_id,
        "title": r.title,
        "title_auto": r.title_auto,
        "model": r.model,
        "system_prompt": r.system_prompt,
        "params": r.params,
        "pinned": r.pinned,
        "archived": r.archived,
        "created_at": r.created_at,
        "updated_at": r.updated_at,
        "message_count": r.message_count,
        "active_leaf_id": r.active_leaf_id,
    }


def _message_values(r: MessageRecord) -> dict[str, Any]:
    return {
        "id": r.id,
        "conversation_id": r.conversation_id,
        "parent_id": r.parent_id,
        "seq": r.seq,
        "role": r.role,
        "content": r.content,
        "status": r.status,
        "model": r.model,
        "stream_id": r.stream_id,
        "created_at": r.created_at,
        "updated_at": r.updated_at,
        "usage": r.usage,
        "finish_reason": r.finish_reason,
        "result": r.result,
    }
