"""Conversations survive: many users at once, a killed process, schema upgrades, restarts."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from websockets.asyncio.client import connect

from gateway.conversations import make_store
from gateway.conversations.migrations import LATEST
from gateway.conversations.schema import metadata
from gateway.conversations.store import StoreLimits
from tests.conversation_support import Backend, PatientClient, call_ok, gateway_on, send
from tests.support import RawClient, raw_client


async def test_200_users_write_concurrently_and_each_sees_only_their_own(
    backend: Backend,
) -> None:
    """200 users at once: each lists exactly its own conversation; every cross-user call
    is "not found"."""
    users = [f"user{i}" for i in range(200)]
    keys = {f"tok-{u}": u for u in users}
    async with gateway_on(backend, api_keys=keys, default_model="offline-fast") as gw:
        made: dict[str, str] = {}
        ready = asyncio.Event()

        async def one(i: int, user: str) -> None:
            async with raw_client(gw, f"tok-{user}") as raw:
                c = PatientClient(raw.ws)
                cid = (await call_ok(c, "conversation.create", {"title": f"mine {user}"}))["id"]
                text, _ = await send(
                    c, "conversation.send", {"conversationId": cid, "message": f"I am {user}"}
                )
                assert f"I am {user}" in text
                made[user] = cid
                if len(made) == len(users):
                    ready.set()
                async with asyncio.timeout(60):
                    await ready.wait()
                listed = await call_ok(c, "conversation.list", {"limit": 200})
                assert [x["id"] for x in listed["items"]] == [cid]
                found = await call_ok(c, "conversation.list", {"query": "I am user"})
                assert [x["id"] for x in found["items"]] == [cid]
                other = made[users[(i + 1) % len(users)]]
                for method, params in (
                    ("conversation.get", {}),
                    ("conversation.rename", {"title": "stolen"}),
                    ("conversation.delete", {}),
                    ("conversation.export", {"format": "json"}),
                    ("conversation.send", {"message": "hi"}),
                    ("chat.switchToConversation", {}),
                ):
                    reply = await c.call(method, {"conversationId": other, **params})
                    assert reply["error"]["code"] == -32030, (method, reply)

        async with asyncio.timeout(120):
            await asyncio.gather(*(one(i, u) for i, u in enumerate(users)))
        async with raw_client(gw, "tok-user0") as c:
            got = await call_ok(c, "conversation.get", {"conversationId": made["user0"]})
            assert got["conversation"]["title"] == "mine user0"  # the rename did not land


async def test_migrations_run_on_a_fresh_database_and_on_one_at_the_previous_version(
    backend: Backend, tmp_path: Path
) -> None:
    """Version 1 data survives the upgrade; the result matches the current schema."""
    path = Path(backend.data_dir or tmp_path) / "gateway.db"
    store = make_store(backend.url, sqlite_path=path, limits=StoreLimits())
    try:
        assert await store.version() == 0
        assert await store.migrate(target=1) == [1]

        def old_rows(conn: Any) -> None:
            conn.execute(
                sa.text(
                    "INSERT INTO conversations (id, user_id, title, title_auto, model, params,"
                    " pinned, archived, created_at, updated_at, message_count, active_leaf_id)"
                    " VALUES ('c1', 'alice', 'Old one', false, 'offline', '{}', false, false,"
                    " 1.0, 2.0, 1, 'm1')"
                )
            )
            conn.execute(
                sa.text(
                    "INSERT INTO messages (id, conversation_id, parent_id, seq, role, content,"
                    " status, created_at, updated_at) VALUES ('m1', 'c1', NULL, 0, 'user',"
                    " 'kept across versions', 'done', 1.0, 1.0)"
                )
            )

        await store.runner.run(old_rows, write=True)
        assert await store.start() == list(range(2, LATEST + 1))
        assert await store.start() == []
        assert await store.version() == LATEST
        loaded = await store.load("alice", "c1")
        assert loaded is not None
        assert loaded[0].title == "Old one"
        assert [m.content for m in loaded[1]] == ["kept across versions"]
        assert await store.load("bob", "c1") is None

        def columns(conn: Any) -> dict[str, set[str]]:
            inspector = sa.inspect(conn)
            return {t: {c["name"] for c in inspector.get_columns(t)} for t in metadata.tables}

        found = await store.runner.run(columns, write=False)
        assert found == {t.name: {c.name for c in t.columns} for t in metadata.tables.values()}
    finally:
        await store.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _serve(env: dict[str, str], port: int, *args: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--port", str(port), *args],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    last = "listening" if env.get("GATEWAY_API_KEYS") else "Token:"
    lines: list[str] = []
    assert proc.stdout is not None
    async with asyncio.timeout(30):
        while not lines or last not in lines[-1]:
            line = await asyncio.to_thread(proc.stdout.readline)
            if not line:
                raise AssertionError("".join(lines))
            lines.append(line)
    return proc, "".join(lines)


def _env(backend: Backend, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    if backend.url:
        env["GATEWAY_CONVERSATIONS_URL"] = backend.url
    if backend.data_dir:
        env["GATEWAY_DATA_DIR"] = backend.data_dir
    return {**env, "GATEWAY_NODE_ID": "durability-test", **extra}


async def _client(port: int, token: str) -> RawClient:
    async with asyncio.timeout(10):
        ws = await connect(
            f"ws://127.0.0.1:{port}/ws", additional_headers={"Authorization": f"Bearer {token}"}
        )
    return RawClient(ws)


async def test_sigkill_mid_answer_leaves_the_answer_interrupted_after_restart(
    backend: Backend, tmp_path: Path
) -> None:
    """A real gateway killed mid-stream: on restart the answer is marked interrupted."""
    if backend.data_dir is None:
        backend.data_dir = str(tmp_path / "data")
    env = _env(backend, GATEWAY_API_KEYS="alice:tok-a")
    port = _free_port()
    proc, _ = await _serve(env, port)
    try:
        c = await _client(port, "tok-a")
        cid = (await call_ok(c, "conversation.create", {}))["id"]
        await c.request("conversation.send", {"conversationId": cid, "message": "tell me more"})
        frame = await c.recv()
        assert frame["method"] == "stream.delta"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    proc, _ = await _serve(env, port)
    try:
        c = await _client(port, "tok-a")
        got = await call_ok(c, "conversation.get", {"conversationId": cid})
        assert [m["status"] for m in got["messages"]] == ["done", "interrupted"]
        assert got["messages"][0]["content"] == "tell me more"
        # The conversation goes on from there.
        rid = await c.request("conversation.send", {"conversationId": cid, "message": "go on"})
        await c.send({"jsonrpc": "2.0", "method": "rpc.cancel", "params": {"id": rid}})
        while (await c.recv()).get("id") != rid:
            pass
        await c.ws.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)


async def test_a_restart_of_the_embedded_default_keeps_conversations_model_and_sign_in(
    tmp_path: Path,
) -> None:
    """No config, the data dir scripts/serve passes: after a restart the old token,
    conversations and model choice stay."""
    env = _env(Backend("sqlite"))
    serve_args = ("--default-data-dir", str(tmp_path / "data"))  # what scripts/serve passes
    port = _free_port()
    proc, out = await _serve(env, port, *serve_args)
    try:
        found = re.search(r"#token=(\S+)", out)
        assert found
        token = found.group(1)
        c = await _client(port, token)
        assert await call_ok(c, "chat.setModel", {"modelName": "offline-fast"}) is True
        cid = (await call_ok(c, "conversation.create", {}))["id"]
        await send(c, "conversation.send", {"conversationId": cid, "message": "remember me"})
        await c.ws.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    secret = tmp_path / "data" / "jwt-secret"
    assert secret.stat().st_mode & 0o777 == 0o600
    first_secret = secret.read_text()
    proc, _ = await _serve(env, port, *serve_args)
    try:
        c = await _client(port, token)  # the token minted by the first run
        assert (await call_ok(c, "auth.whoami"))["user"]["id"] == "local"
        assert (await call_ok(c, "chat.getCurrentModel"))["name"] == "offline-fast"
        got = await call_ok(c, "conversation.get", {"conversationId": cid})
        assert [m["content"] for m in got["messages"]][:1] == ["remember me"]
        assert got["messages"][1]["status"] == "done"
        await c.ws.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    assert secret.read_text() == first_secret
