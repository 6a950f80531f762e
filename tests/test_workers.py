"""Several real gateway processes on one private Redis behave as one gateway."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from tests.redis_support import (
    GatewayProcess,
    RedisServer,
    gateway_processes,
    redis_server,
    redis_url,
)
from tests.support import RawClient

__all__ = ["redis_server", "redis_url"]  # fixtures in use

TIMEOUT = 20.0
BUDGET = 400
CONFIG = f"""
[limits]
connections_per_user = 3
streams_per_user = 2

[sessions]
redis_timeout = 5.0

[[budgets]]
user = "carol"
tokens_per_day = {BUDGET}

[[budgets]]
user = "dave"
tokens_per_day = {BUDGET}
"""


@pytest.fixture(scope="module")
def three(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[GatewayProcess]]:
    """Three gateway processes (A, B, C), each on its own port, sharing one Redis.

    Shared by the module's tests; each test uses its own users.
    """
    directory = tmp_path_factory.mktemp("three")
    env = {"GATEWAY_REDIS_URL": redis_server.url}
    procs = [GatewayProcess(directory, config=CONFIG, env=env) for _ in range(3)]
    try:
        for proc in procs:
            proc.ready_sync()
        yield procs
    finally:
        for proc in procs:
            assert proc.stop() == 0, proc.text()


@contextlib.asynccontextmanager
async def client(proc: GatewayProcess, user: str) -> AsyncIterator[RawClient]:
    headers = {"Authorization": f"Bearer tok-{user}"}
    async with asyncio.timeout(TIMEOUT):
        ws = await connect(proc.ws_url, additional_headers=headers)
    try:
        yield RawClient(ws)
    finally:
        await ws.close()


async def _refused_close_code(
    proc: GatewayProcess, user: str, *, retry: bool = False
) -> int | None:
    """Open a socket for ``user``; the close code it gets at once (None: it stayed open).

    With ``retry``, a handshake that fails (a worker dying or starting) is tried again.
    """
    while retry:
        try:
            return await _refused_close_code(proc, user)
        except (InvalidHandshake, OSError):
            await asyncio.sleep(0.05)
    async with client(proc, user) as c:
        try:
            await c.recv(timeout=1.0)
        except ConnectionClosed:
            return c.ws.close_code
        except TimeoutError:
            return None
    return None


async def test_a_model_set_on_one_process_is_used_by_a_stream_on_another(
    three: list[GatewayProcess],
) -> None:
    """setModel through A; B streams with that model; C lists the session for an admin."""
    a, b, c = three
    async with client(a, "bob") as on_a, client(b, "bob") as on_b, client(c, "alice") as admin:
        assert (await on_a.call("chat.setModel", ["offline-fast"]))["result"] is True
        text, _, final = await on_b.stream("chat.postChat", ["hello"])
        assert text and final["result"]["model"] == "offline-fast"
        stats = (await admin.call("chat.getSessionStats"))["result"]
        sessions = (await admin.call("chat.getAllSessions"))["result"]
    bob = next(s for s in sessions if s["userId"] == "bob")
    assert bob["currentModel"] == "offline-fast"
    assert bob["usage"]["requests"] == 1
    assert stats["totalSessions"] >= 2 and stats["models"]["offline-fast"] >= 1
    assert stats["totalSessions"] == len(sessions)


async def test_connections_per_user_is_exact_across_processes(
    three: list[GatewayProcess],
) -> None:
    """Three of alice's sockets on A, B and C are allowed; a fourth anywhere is closed 4503."""
    a, b, c = three
    async with client(a, "alice") as one, client(b, "alice"), client(c, "alice"):
        assert (await one.call("auth.whoami"))["result"]["user"]["id"] == "alice"
        assert await _refused_close_code(a, "alice") == 4503
        assert await _refused_close_code(c, "alice") == 4503
        assert await _refused_close_code(b, "bob") is None  # Other users are not affected.
    # All three closed: the count is back to zero on every process.
    async with asyncio.timeout(TIMEOUT):
        while (code := await _refused_close_code(c, "alice")) is not None:
            await asyncio.sleep(0.05)
    assert code is None


async def test_streams_per_user_is_exact_across_processes(three: list[GatewayProcess]) -> None:
    """Two of erin's streams run on A and B; a third on C is refused with streamsPerUser."""
    a, b, c = three
    async with client(a, "erin") as on_a, client(b, "erin") as on_b, client(c, "erin") as on_c:
        for conn in (on_a, on_b):
            await conn.request("chat.postChat", ["tell me a story"], id="long")
            first = await conn.recv()
            assert first["method"] == "stream.delta"
        refused = await on_c.call("chat.postChat", ["and one more"])
        assert refused["error"]["code"] == -32004
        assert refused["error"]["data"] == {"limit": "streamsPerUser", "max": 2}
        # Once A's stream ends, C may stream.
        await on_a.send({"jsonrpc": "2.0", "method": "rpc.cancel", "params": ["long"]})
        while (await on_a.recv()).get("id") != "long":
            pass
        await on_c.call("chat.setModel", ["offline-fast"])
        text, _, final = await on_c.stream("chat.postChat", ["now it fits"])
        assert text and final["result"]["finishReason"] == "stop"


async def test_a_budget_refuses_across_processes_at_the_same_total_as_one(
    three: list[GatewayProcess],
) -> None:
    """carol spends her budget on A alone, dave his over A, B and C: same point, same total."""

    async def spend(procs: list[GatewayProcess], user: str) -> tuple[int, dict]:
        async with contextlib.AsyncExitStack() as stack:
            conns = [await stack.enter_async_context(client(p, user)) for p in procs]
            await conns[0].call("chat.setModel", ["offline-fast"])
            for i in range(100):
                reply = await conns[i % len(conns)].call("chat.chatNonStreaming", ["spend"])
                if "error" in reply:
                    return i, reply["error"]
        raise AssertionError("the budget never refused")

    a, b, c = three
    alone, refusal_alone = await spend([a], "carol")
    spread, refusal_spread = await spend([a, b, c], "dave")
    assert refusal_alone["code"] == refusal_spread["code"] == -32007
    assert alone == spread > 1
    assert refusal_alone["data"]["used"] == refusal_spread["data"]["used"] >= BUDGET


# gateway serve --workers N


LEASE = 3.0
WORKERS_CONFIG = f"""
[limits]
connections_per_user = 1

[sessions]
lease_seconds = {LEASE}
redis_timeout = 5.0
"""


async def _node_of(ws: Any) -> str:
    return str(ws.response.headers["X-Gateway-Node"])


async def test_workers_above_one_are_refused_with_the_memory_store(tmp_path: Path) -> None:
    """--workers 2 without Redis exits 2 at once and says why."""
    proc = GatewayProcess(tmp_path, workers=2, env={"GATEWAY_REDIS_URL": ""})
    status = await asyncio.to_thread(proc.proc.wait, 30)
    assert status == 2
    assert "needs a shared store" in proc.text()
    assert "its own sessions, limits and budgets" in proc.text()


async def test_a_killed_worker_is_restarted_and_its_leases_expire_within_the_window(
    redis_url: str, tmp_path: Path
) -> None:
    """SIGKILL a worker holding erin's only connection: the parent restarts it; the count
    still refuses a second connection at first and lets one in within lease_seconds."""
    env = {"GATEWAY_REDIS_URL": redis_url}
    async with gateway_processes(tmp_path, 1, config=WORKERS_CONFIG, workers=2, env=env) as procs:
        sup = procs[0]
        async with asyncio.timeout(TIMEOUT):
            ws = await connect(sup.ws_url, additional_headers={"Authorization": "Bearer tok-erin"})
        node = await _node_of(ws)
        # The header login completes after the handshake: one call makes sure it did.
        await RawClient(ws).call("auth.whoami")
        worker = node.rsplit("-", 1)[1]
        pid = sup.worker_pids()[worker]
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        async with asyncio.timeout(TIMEOUT):
            with pytest.raises(ConnectionClosed):
                await ws.recv()
        # The dead worker's lease still counts: a new connection is refused ...
        assert await _refused_close_code(sup, "erin", retry=True) == 4503
        # ... until the lease expires, within the documented window.
        async with asyncio.timeout(TIMEOUT):
            while await _refused_close_code(sup, "erin", retry=True) is not None:
                await asyncio.sleep(0.1)
        # A generous bound (loaded machine): lease, one renewal, the 1 s open-socket check.
        assert time.monotonic() - killed <= LEASE + 6.0
        await sup.wait_for(rf"worker {worker} \(pid {pid}\) exited with signal SIGKILL; restart")
        await sup.wait_for(rf"worker {worker} started", count=2)
        assert sup.worker_pids()[worker] != pid
        # Both workers serve after the restart.
        nodes = set()
        async with asyncio.timeout(TIMEOUT):
            while len(nodes) < 2:
                try:
                    async with client(sup, "bob") as c:
                        nodes.add(await _node_of(c.ws))
                except (InvalidHandshake, OSError):
                    await asyncio.sleep(0.05)  # A worker starting up, as a real client retries.
        assert node in nodes
