"""The conversation store on SQLAlchemy's async Core: one implementation for SQLite and
PostgreSQL (the dialect differences sit in :mod:`.sqlite` and :mod:`.postgres`).

Every query that touches a conversation matches ``user_id`` too, so another
user's rows are simply not found. Writes are single transactions; a streamed
answer costs two of them (start and end), never one per delta.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.conversations.migrations import migrate
from gateway.conversations.schema import conversations, messages, user_settings
from gateway.conversations.store import (
    ConversationRecord,
    MessageRecord,
    NewMessage,
    Page,
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
    m = row._mapping
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
    m = row._mapping
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


class SqlConversationStore:
    """A :class:`~gateway.conversations.store.ConversationStore` on an async engine.

    ``serialize_writes``: run writes one at a time in this process (SQLite has one
    writer; waiting on an asyncio lock is cheaper than on its busy handler).
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        limits: StoreLimits | None = None,
        serialize_writes: bool = False,
    ) -> None:
        self.engine = engine
        self.limits = limits or StoreLimits()
        self._write_lock = asyncio.Lock() if serialize_writes else None
        self._postgres = engine.dialect.name == "postgresql"

    @property
    def write_lock(self) -> asyncio.Lock | None:
        return self._write_lock

    @property
    def embedded(self) -> bool:
        """True for SQLite: one process owns the database."""
        return self._write_lock is not None

    async def start(self) -> list[int]:
        """Apply pending migrations; the versions applied."""
        return await migrate(self.engine)

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        if self._write_lock is None:
            async with self.engine.begin() as conn:
                yield conn
            return
        async with self._write_lock, self.engine.begin() as conn:
            yield conn

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
        conversation_id: str | None = None,
    ) -> ConversationRecord:
        record = ConversationRecord(
            id=conversation_id or new_id(),
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
        async with self._write() as conn:
            await self._check_conversation_limit(conn, user_id)
            await conn.execute(conversations.insert().values(**_conversation_values(record)))
        return record

    async def _check_conversation_limit(self, conn: AsyncConnection, user_id: str) -> None:
        if self._postgres:
            # Concurrent creates of one user queue here, so the count below stays true.
            await conn.execute(
                sa.text("SELECT pg_advisory_xact_lock(hashtext(:user))"), {"user": user_id}
            )
        most = self.limits.conversations_per_user
        count = await conn.scalar(
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
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        items = [_conversation(r) for r in rows[:limit]]
        more = len(rows) > limit
        return Page(items, encode_cursor(items[-1]) if more and items else None)

    async def get(self, user_id: str, conversation_id: str) -> ConversationRecord | None:
        async with self.engine.connect() as conn:
            return await self._get(conn, user_id, conversation_id)

    async def _get(
        self, conn: AsyncConnection, user_id: str, conversation_id: str
    ) -> ConversationRecord | None:
        row = (
            await conn.execute(
                sa.select(conversations).where(
                    conversations.c.id == conversation_id, conversations.c.user_id == user_id
                )
            )
        ).first()
        return _conversation(row) if row is not None else None

    async def messages(self, user_id: str, conversation_id: str) -> list[MessageRecord] | None:
        async with self.engine.connect() as conn:
            return await self._messages(conn, user_id, conversation_id)

    async def load(
        self, user_id: str, conversation_id: str
    ) -> tuple[ConversationRecord, list[MessageRecord]] | None:
        """The conversation and its messages on one connection."""
        async with self.engine.connect() as conn:
            record = await self._get(conn, user_id, conversation_id)
            if record is None:
                return None
            rows = (
                await conn.execute(
                    sa.select(messages)
                    .where(messages.c.conversation_id == conversation_id)
                    .order_by(messages.c.seq)
                )
            ).all()
        return record, [_message(r) for r in rows]

    async def _messages(
        self, conn: AsyncConnection, user_id: str, conversation_id: str
    ) -> list[MessageRecord] | None:
        owned = await conn.scalar(
            sa.select(conversations.c.id).where(
                conversations.c.id == conversation_id, conversations.c.user_id == user_id
            )
        )
        if owned is None:
            return None
        rows = (
            await conn.execute(
                sa.select(messages)
                .where(messages.c.conversation_id == conversation_id)
                .order_by(messages.c.seq)
            )
        ).all()
        return [_message(r) for r in rows]

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
        async with self._write() as conn:
            if values:
                result = await conn.execute(
                    conversations.update()
                    .where(
                        conversations.c.id == conversation_id,
                        conversations.c.user_id == user_id,
                    )
                    .values(**values)
                )
                if result.rowcount == 0:
                    return None
            return await self._get(conn, user_id, conversation_id)

    async def delete(self, user_id: str, conversation_id: str) -> bool:
        async with self._write() as conn:
            owned = await conn.scalar(
                sa.select(conversations.c.id).where(
                    conversations.c.id == conversation_id, conversations.c.user_id == user_id
                )
            )
            if owned is None:
                return False
            await conn.execute(
                messages.delete().where(messages.c.conversation_id == conversation_id)
            )
            await conn.execute(conversations.delete().where(conversations.c.id == conversation_id))
            await conn.execute(
                user_settings.update()
                .where(
                    user_settings.c.user_id == user_id,
                    user_settings.c.current_conversation_id == conversation_id,
                )
                .values(current_conversation_id=None)
            )
        return True

    # Messages

    async def add_messages(
        self,
        user_id: str,
        conversation_id: str,
        new: list[NewMessage],
        now: float,
        *,
        node: str | None = None,
    ) -> list[MessageRecord] | None:
        most = self.limits.messages_per_conversation
        c = conversations.c
        async with self._write() as conn:
            # One statement reserves the sequence numbers and checks owner and limit.
            row = (
                await conn.execute(
                    conversations.update()
                    .where(
                        c.id == conversation_id,
                        c.user_id == user_id,
                        c.message_count + len(new) <= most,
                    )
                    .values(message_count=c.message_count + len(new), updated_at=now)
                    .returning(c.message_count)
                )
            ).first()
            if row is None:
                exists = await conn.scalar(
                    sa.select(c.id).where(c.id == conversation_id, c.user_id == user_id)
                )
                if exists is None:
                    return None
                raise ConversationLimit(
                    f"This conversation already holds {most} messages; start a new one",
                    {"limit": "messagesPerConversation", "max": most},
                )
            first_seq = row[0] - len(new)
            records = []
            previous: str | None = None
            for i, item in enumerate(new):
                parent = previous if item.parent == "@prev" else item.parent
                record = MessageRecord(
                    id=new_id(),
                    conversation_id=conversation_id,
                    parent_id=parent,
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
            await conn.execute(
                messages.insert(),
                [
                    {**_message_values(r), "node": node if r.status == "streaming" else None}
                    for r in records
                ],
            )
            await conn.execute(
                conversations.update()
                .where(c.id == conversation_id)
                .values(active_leaf_id=records[-1].id)
            )
        return records

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
        async with self._write() as conn:
            await conn.execute(
                messages.update()
                .where(messages.c.id == message_id)
                .values(
                    content=content,
                    status=status,
                    updated_at=now,
                    usage=usage,
                    finish_reason=finish_reason,
                    result=result,
                    node=None,
                )
            )

    async def fork(
        self, user_id: str, conversation_id: str, message_id: str, now: float
    ) -> ConversationRecord | None:
        async with self._write() as conn:
            source = await self._get(conn, user_id, conversation_id)
            if source is None:
                return None
            rows = await self._messages(conn, user_id, conversation_id)
            tree = Tree(rows or [])
            if message_id not in tree.by_id:
                return None
            branch = tree.branch(message_id)
            await self._check_conversation_limit(conn, user_id)
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
            await conn.execute(conversations.insert().values(**_conversation_values(record)))
            if copies:
                await conn.execute(messages.insert(), [_message_values(m) for m in copies])
        return record

    # Per-user settings (the origin session's current conversation and system prompt)

    async def settings(self, user_id: str) -> UserSettings:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(user_settings).where(user_settings.c.user_id == user_id)
                )
            ).first()
        if row is None:
            return UserSettings(user_id)
        m = row._mapping
        return UserSettings(user_id, m["current_conversation_id"], m["system_prompt"])

    async def save_settings(self, settings: UserSettings, now: float) -> None:
        values = {
            "current_conversation_id": settings.current_conversation_id,
            "system_prompt": settings.system_prompt,
            "updated_at": now,
        }
        async with self._write() as conn:
            result = await conn.execute(
                user_settings.update()
                .where(user_settings.c.user_id == settings.user_id)
                .values(**values)
            )
            if result.rowcount == 0:
                await conn.execute(
                    user_settings.insert().values(user_id=settings.user_id, **values)
                )

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
        async with self._write() as conn:
            result = await conn.execute(
                messages.update().where(*where).values(status="interrupted", updated_at=now)
            )
        return int(result.rowcount or 0)

    async def cleanup(self, older_than: float) -> int:
        c = conversations.c
        async with self._write() as conn:
            old = sa.select(c.id).where(c.updated_at < older_than, c.pinned.is_(False))
            await conn.execute(messages.delete().where(messages.c.conversation_id.in_(old)))
            result = await conn.execute(
                conversations.delete().where(c.updated_at < older_than, c.pinned.is_(False))
            )
        return int(result.rowcount or 0)

    async def close(self) -> None:
        await self.engine.dispose()


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
