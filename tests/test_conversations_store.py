"""The store's hot paths (plain SQL on the driver's connection) against SQLAlchemy's own
reading of the same rows, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import asyncpg
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from gateway.conversations import SqlConversationStore, StoreLimits, make_store
from gateway.conversations.schema import conversations, messages
from gateway.conversations.store import Ask, ConversationRecord, MessageRecord, NewMessage
from gateway.conversations.tree import Tree
from gateway.errors import ConversationLimit
from tests.conversation_support import Backend


def _store(backend: Backend, **limits: Any) -> SqlConversationStore:
    path = Path(backend.data_dir) / "gateway.db" if backend.data_dir else None
    return make_store(backend.url, sqlite_path=path, limits=StoreLimits(**limits))


def _as_sqlalchemy_reads(conn: Connection, cid: str) -> tuple[dict[str, Any], list[dict]]:
    conv = conn.execute(sa.select(conversations).where(conversations.c.id == cid)).one()
    rows = conn.execute(
        sa.select(messages).where(messages.c.conversation_id == cid).order_by(messages.c.seq)
    ).all()
    return dict(conv._mapping), [dict(r._mapping) for r in rows]


def _fields(record: ConversationRecord | MessageRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in record.__slots__}  # type: ignore[union-attr]


async def test_hot_reads_and_writes_match_what_sqlalchemy_reads(backend: Backend) -> None:
    """Booleans, json (params, usage, result, SQL NULL and JSON null), order and sequence
    numbers read the same through the hot path as through SQLAlchemy's types, whichever
    path wrote them."""
    store = _store(backend)
    await store.start()
    try:
        now = time.time()
        record = await store.create(
            "ann", title="T", model="m", system_prompt="be brief", params={"temperature": 0.5},
            now=now,
        )  # fmt: skip
        await store.update("ann", record.id, now, pinned=True)
        # SQLAlchemy's insert (add_messages on PostgreSQL) stores None as JSON null.
        first = await store.add_messages(
            "ann",
            record.id,
            [
                NewMessage("user", "hello"),
                NewMessage("assistant", "hi", parent="@prev", extra={"result": {"k": [1]}}),
            ],
            now,
        )
        assert first is not None

        def plan(rec: ConversationRecord, tree: Tree) -> list[NewMessage]:
            assert rec.active_leaf_id == first[-1].id and len(tree.messages) == 2
            return [
                NewMessage("user", "more", parent=rec.active_leaf_id),
                NewMessage("assistant", "", status="streaming", stream_id="s1", parent="@prev"),
            ]

        started = await store.start_answer("ann", record.id, plan, now + 1, node="n1")
        assert started is not None and [m.seq for m in started.added] == [2, 3]
        await store.finish_message(
            started.added[-1].id,
            content="done text",
            status="done",
            now=now + 2,
            usage={"promptTokens": 3},
            finish_reason="stop",
            result={"text": "done text", "usage": {"promptTokens": 3}},
        )
        loaded = await store.load("ann", record.id)
        assert loaded is not None
        conv, found = loaded
        assert conv.pinned is True and conv.archived is False and conv.title_auto is False
        assert conv.params == {"temperature": 0.5} and conv.message_count == 4
        assert conv.active_leaf_id == started.added[-1].id
        assert [m.content for m in found] == ["hello", "hi", "more", "done text"]
        assert found[1].result == {"k": [1]} and found[0].usage is None
        assert found[3].usage == {"promptTokens": 3} and found[3].status == "done"
        assert found[3].parent_id == found[2].id and found[2].parent_id == found[1].id

        sa_conv, sa_rows = await store.runner.run(
            lambda c: _as_sqlalchemy_reads(c, record.id), write=False
        )
        assert _fields(conv) == sa_conv
        for mine, theirs in zip(found, sa_rows, strict=True):
            assert theirs.pop("node") is None  # finished: no longer owned by a node
            assert _fields(mine) == theirs
        # Another user's conversation is not found on the hot paths either.
        assert await store.load("bob", record.id) is None
        assert await store.start_answer("bob", record.id, plan, now, node=None) is None
    finally:
        await store.close()


async def test_start_answer_refuses_past_the_message_limit(backend: Backend) -> None:
    store = _store(backend, messages_per_conversation=3)
    await store.start()
    try:
        record = await store.create(
            "ann", title=None, model="m", system_prompt=None, params={}, now=time.time()
        )

        def plan(rec: ConversationRecord, tree: Tree) -> list[NewMessage]:
            return [
                NewMessage("user", "q", parent=rec.active_leaf_id),
                NewMessage("assistant", "", status="streaming", parent="@prev"),
            ]

        assert await store.start_answer("ann", record.id, plan, time.time(), node=None)
        try:
            await store.start_answer("ann", record.id, plan, time.time(), node=None)
        except ConversationLimit as exc:
            assert exc.data == {"limit": "messagesPerConversation", "max": 3}
        else:
            raise AssertionError("a fourth and fifth message were accepted")
        loaded = await store.load("ann", record.id)
        assert loaded is not None and len(loaded[1]) == 2
    finally:
        await store.close()


async def test_reads_cancelled_mid_flight_leave_the_pool_usable(backend: Backend) -> None:
    """A cancel can land while the driver is mid-statement; that connection must not go
    back to the pool half-used (the next one would fail with "another operation is in
    progress")."""
    store = _store(backend)
    await store.start()
    try:
        now = time.time()
        record = await store.create(
            "ann", title=None, model="m", system_prompt=None, params={}, now=now
        )
        rows = [NewMessage("user" if i % 2 == 0 else "assistant", f"m{i}") for i in range(200)]
        added = await store.add_messages("ann", record.id, rows, now)
        assert added is not None
        for delay in (0, 0.0001, 0.0003, 0.001, 0.002, 0.005):
            tasks = [asyncio.ensure_future(store.load("ann", record.id)) for _ in range(8)]
            await asyncio.sleep(delay)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for _ in range(8):
                loaded = await store.load("ann", record.id)
                assert loaded is not None and len(loaded[1]) == 200
    finally:
        await store.close()


async def test_a_connection_the_server_dropped_is_replaced(backend: Backend) -> None:
    """PostgreSQL: after the server ends the gateway's connections, a call may fail once
    per pooled connection; the ones after it work (the broken one is not pooled again)."""
    if backend.url is None:
        return  # SQLite has no server to drop a connection
    store = _store(backend)
    await store.start()
    try:
        record = await store.create(
            "ann", title=None, model="m", system_prompt=None, params={}, now=time.time()
        )
        for _ in range(3):
            assert await store.load("ann", record.id) is not None
        admin = await asyncpg.connect(backend.url)
        try:
            ended = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        finally:
            await admin.close()
        assert ended >= 1
        outcomes = []
        for _ in range(8):
            try:
                outcomes.append((await store.load("ann", record.id)) is not None)
            except (
                OSError,
                asyncpg.InterfaceError,
                asyncpg.InternalClientError,
                asyncpg.PostgresError,
            ):
                outcomes.append(False)
        assert outcomes[-4:] == [True] * 4, outcomes
    finally:
        await store.close()


async def test_start_send_appends_under_the_active_leaf_in_one_step(backend: Backend) -> None:
    """The send's own path (one statement on PostgreSQL): the question goes under the active
    leaf, the answer's model is the conversation's if usable, else the fallback; the tree
    returned is the one before the send; owner and limit are checked."""
    store = _store(backend, messages_per_conversation=6)
    await store.start()
    try:
        now = time.time()
        record = await store.create(
            "ann", title=None, model="gone", system_prompt=None, params={}, now=now
        )
        ask = Ask("first?", "stream-1", ("m1", "m2"), "m2")
        one = await store.start_send("ann", record.id, ask, now, node="n1")
        assert one is not None and one.record.message_count == 0 and one.tree.messages == []
        question, answer = one.added
        assert (question.parent_id, question.seq, question.role) == (None, 0, "user")
        assert (answer.parent_id, answer.seq, answer.status) == (question.id, 1, "streaming")
        assert answer.model == "m2" and answer.stream_id == "stream-1"
        await store.finish_message(answer.id, content="A", status="done", now=now)

        await store.update("ann", record.id, now, model="m1")
        two = await store.start_send(
            "ann", record.id, Ask("second?", "s2", ("m1",), "x"), now, node=None
        )
        assert two is not None and two.record.active_leaf_id == answer.id
        assert [m.content for m in two.tree.messages] == ["first?", "A"]
        assert two.added[0].parent_id == answer.id and two.added[-1].model == "m1"
        assert [m.seq for m in two.added] == [2, 3]

        loaded = await store.load("ann", record.id)
        assert loaded is not None
        conv, found = loaded
        assert conv.active_leaf_id == two.added[-1].id and conv.message_count == 4
        stored = {m.id: m for m in found}
        for mine in (*one.added[:1], *two.added):
            assert _fields(stored[mine.id]) == _fields(mine)

        assert await store.start_send("bob", record.id, ask, now, node=None) is None
        assert await store.start_send("ann", "nope", ask, now, node=None) is None
        assert await store.start_send("ann", record.id, ask, now, node=None)  # 6 of 6
        try:
            await store.start_send("ann", record.id, ask, now, node=None)
        except ConversationLimit as exc:
            assert exc.data == {"limit": "messagesPerConversation", "max": 6}
        else:
            raise AssertionError("past the limit")
    finally:
        await store.close()
