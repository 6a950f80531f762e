"""Redis faults: unreachable at start, lost and hung while serving, back again without a restart."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
from typing import Any

import pytest

from tests.redis_support import REPO, RedisServer, free_port, redis
from tests.support import RawClient, gateway_server, raw_client

TIMEOUT = 10.0
__all__ = ["redis"]  # fixture
LINK_LOG = "gateway.sessions.redislink"


def _errors(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r["error"] for r in results if "error" in r]


async def _load(client: RawClient, stop: asyncio.Event, results: list[dict[str, Any]]) -> None:
    """Calls one after another until ``stop``; none may hang."""
    while not stop.is_set():
        async with asyncio.timeout(TIMEOUT):
            results.append(await client.call("chat.chatNonStreaming", ["hello"]))
        await asyncio.sleep(0.01)


async def _until(predicate: Any) -> None:
    async with asyncio.timeout(TIMEOUT):
        while not predicate():
            await asyncio.sleep(0.02)


def _lines(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LINK_LOG and text in r.getMessage()]


async def test_redis_stopped_under_load_gives_32020_then_service_returns_by_itself(
    redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Stop Redis mid-load: calls get -32020 with retryAfter, sockets stay, one ERROR line;
    start it again: calls succeed again, with no gateway restart."""
    caplog.set_level(logging.INFO, logger=LINK_LOG)
    async with gateway_server(store="redis", url=redis.url, redis_timeout=0.5) as gw:
        async with raw_client(gw) as alice, raw_client(gw, "tok-bob") as bob:
            for client in (alice, bob):
                assert (await client.call("chat.setModel", ["offline-fast"]))["result"]
            stop = asyncio.Event()
            results: dict[str, list[dict[str, Any]]] = {"alice": [], "bob": []}
            load = [
                asyncio.ensure_future(_load(alice, stop, results["alice"])),
                asyncio.ensure_future(_load(bob, stop, results["bob"])),
            ]
            await _until(lambda: all(len(r) > 3 for r in results.values()))
            await asyncio.to_thread(redis.stop)
            await _until(lambda: all(len(_errors(r)) > 5 for r in results.values()))
            assert not gw.readiness()[0]
            assert len(gw.connections) == 2  # Both sockets stay open through the outage.
            await asyncio.to_thread(redis.start)
            served = {k: len(r) for k, r in results.items()}
            await _until(
                lambda: all("result" in r[-1] and len(r) > served[k] for k, r in results.items())
            )
            stop.set()
            await asyncio.gather(*load)
            assert gw.readiness()[0]
            assert len(gw.connections) == 2
    for errors in (_errors(results["alice"]), _errors(results["bob"])):
        assert {e["code"] for e in errors} == {-32020}
        assert all(e["data"] == {"retryAfter": 1} for e in errors)
    assert len(_lines(caplog, "unreachable")) == 1
    assert len(_lines(caplog, "reachable again")) == 1


async def test_a_hung_redis_times_out_into_32020_instead_of_hanging(
    redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A Redis that stops answering (SIGSTOP) costs a call at most the client timeout; once
    noticed, the session cache is not read either (a read fails at once too)."""
    caplog.set_level(logging.INFO, logger=LINK_LOG)
    async with gateway_server(store="redis", url=redis.url, redis_timeout=0.3) as gw:
        async with raw_client(gw) as alice:
            assert "result" in await alice.call("chat.getCurrentModel")
            assert redis.proc is not None
            os.kill(redis.proc.pid, signal.SIGSTOP)
            try:
                async with asyncio.timeout(TIMEOUT):
                    hung = await alice.call("chat.setModel", ["offline"])  # Needs Redis.
                    again = await alice.call("chat.listModels")
            finally:
                os.kill(redis.proc.pid, signal.SIGCONT)
            await _until(lambda: gw.readiness()[0])
            back = await alice.call("chat.getCurrentModel")
    assert hung["error"]["code"] == again["error"]["code"] == -32020
    assert back["result"]["name"] == "offline"
    assert len(_lines(caplog, "unreachable")) == 1


async def test_a_header_login_while_redis_is_down_is_closed_with_4010(redis: RedisServer) -> None:
    """A new socket cannot be counted while Redis is away: close 4010 (reconnect later)."""
    async with gateway_server(store="redis", url=redis.url, redis_timeout=0.3) as gw:
        await asyncio.to_thread(redis.stop)
        async with raw_client(gw) as client:
            async with asyncio.timeout(TIMEOUT):
                await client.ws.wait_closed()
        assert client.ws.close_code == 4010
        async with raw_client(gw, token=None) as anonymous:
            login = await anonymous.call("auth.login", ["tok-alice"])
        assert login["error"]["code"] == -32020


async def test_serve_exits_with_one_clear_line_when_redis_is_unreachable_at_start() -> None:
    """store = redis with nothing listening: exit status 2 and one line naming Redis."""
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    env = {**os.environ, "GATEWAY_REDIS_URL": url, "GATEWAY_API_KEYS": "alice:tok-alice"}
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "gateway", "serve", "--port", str(free_port())],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("gateway: cannot reach Redis at redis://***@127.0.0.1:")
    assert "hunter2" not in proc.stderr + proc.stdout
