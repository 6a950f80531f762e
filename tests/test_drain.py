"""Graceful drain on SIGTERM: readiness drops, idle sockets go, streams finish, then exit 0."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from gateway.providers.base import ChatRequest, Message
from gateway.providers.offline import compose_reply
from tests.redis_support import gateway_processes, redis_server, redis_url
from tests.support import RawClient, assert_positions, gateway_server, raw_client, until_closed

__all__ = ["redis_server", "redis_url"]  # fixtures in use

TIMEOUT = 20.0
STORY = "tell me a story"
LONG_STORY = " ".join(["tell me a long story"] * 8)
"""40 words quoted back: about 3 s of answer at 30 tokens/s, to drain across."""


async def get(url: str) -> tuple[int, dict]:
    """GET ``url`` (in a thread: the server under test runs on this loop)."""
    return await asyncio.to_thread(_get, url)


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def full_text(message: str) -> str:
    """What the offline model answers to ``message`` (the chat module's default system prompt)."""
    from gateway.modules.chat import DEFAULT_SYSTEM_PROMPT

    request = ChatRequest(
        messages=(Message("system", DEFAULT_SYSTEM_PROMPT), Message("user", message))
    )
    return compose_reply(request, model="offline")


async def test_drain_closes_idle_sockets_with_1012_and_lets_streams_finish() -> None:
    """Idle sockets get 1012 at once; a running stream ends with its full text, then 1012."""
    async with gateway_server() as gw:
        async with raw_client(gw) as idle, raw_client(gw, "tok-bob") as streaming:
            await idle.call("auth.whoami")
            stream_id = await streaming.request("chat.postChat", [STORY])
            first = await streaming.recv()
            draining = asyncio.ensure_future(gw.drain(TIMEOUT))
            _, idle_code = await until_closed(idle)
            assert idle_code == 1012
            assert not draining.done()  # The stream still runs.
            assert (await get(f"{gw.http_url}/readyz"))[0] == 503
            assert (await get(f"{gw.http_url}/healthz"))[0] == 200
            frames, code = await until_closed(streaming)
            async with asyncio.timeout(TIMEOUT):
                await draining
    deltas = [f["params"]["text"] for f in [first, *frames] if f.get("method") == "stream.delta"]
    final = next(f for f in frames if f.get("id") == stream_id)
    assert final["result"]["finishReason"] == "stop"
    assert "".join(deltas) == full_text(STORY)
    assert code == 1012


async def test_readyz_is_503_and_handshakes_are_refused_from_the_first_moment() -> None:
    """/readyz is 200 while serving and 503 at once when the drain starts; /healthz stays 200."""
    async with gateway_server() as gw:
        assert await get(f"{gw.http_url}/readyz") == (
            200,
            {"status": "ready", "node": gw.health()["node"]},
        )
        async with raw_client(gw) as busy:
            await busy.request("chat.postChat", [STORY])
            await busy.recv()
            draining = asyncio.ensure_future(gw.drain(TIMEOUT))
            await asyncio.sleep(0)
            status, body = await get(f"{gw.http_url}/readyz")
            assert (status, body["status"]) == (503, "draining")
            draining.cancel()


async def test_what_still_runs_at_drain_timeout_is_closed_with_1001() -> None:
    """A stream longer than drain_timeout is cut: its socket closes with 1001."""
    async with gateway_server() as gw:
        async with raw_client(gw) as client:
            await client.request("chat.postChat", [STORY])
            await client.recv()
            async with asyncio.timeout(TIMEOUT):
                await gw.drain(0.2)
            _, code = await until_closed(client)
    assert code == 1001


async def test_sigterm_mid_stream_finishes_the_stream_and_others_take_new_connections(
    redis_url: str, tmp_path: Path
) -> None:
    """SIGTERM to the worker holding a stream: its socket closes at once with 1012, the client
    resumes on the other worker and gets the whole text, new sockets land on the other
    worker, the drained worker exits 0 and the parent starts it again."""
    env = {"GATEWAY_REDIS_URL": redis_url}
    config = "[sessions]\nredis_timeout = 5.0\n"
    async with gateway_processes(tmp_path, 1, config=config, workers=2, env=env) as procs:
        sup = procs[0]
        headers = {"Authorization": "Bearer tok-frank"}
        async with asyncio.timeout(TIMEOUT):
            ws = await connect(sup.ws_url, additional_headers=headers)
        streaming = RawClient(ws)
        node = ws.response.headers["X-Gateway-Node"]
        worker = node.rsplit("-", 1)[1]
        pid = sup.worker_pids()[worker]
        stream_id = await streaming.request("chat.postChat", [LONG_STORY])
        first = await streaming.recv()
        os.kill(pid, signal.SIGTERM)
        await sup.wait_for(rf'"event":"drain".*"node":"{node}".*"phase":"draining"')
        others = set()
        for _ in range(5):
            async with asyncio.timeout(TIMEOUT):
                while True:
                    try:
                        async with connect(sup.ws_url, additional_headers=headers) as other:
                            others.add(other.response.headers["X-Gateway-Node"])
                            await RawClient(other).call("auth.whoami")
                        break
                    except (InvalidStatus, ConnectionClosed, OSError):
                        await asyncio.sleep(0.05)  # Raced the listener as it closed.
        # Closed early with 1012: the answer goes on into the shared log, and the client
        # resumes it on the other worker after the last seq it has.
        frames, code = await until_closed(streaming)
        before = [f["params"] for f in [first, *frames] if f.get("method") == "stream.delta"]
        async with asyncio.timeout(TIMEOUT):
            async with connect(sup.ws_url, additional_headers=headers) as again:
                resumed_on = again.response.headers["X-Gateway-Node"]
                params = {"streamId": before[0]["streamId"], "after": before[-1]["seq"]}
                text, after, final = await RawClient(again).stream("stream.resume", params)
        await sup.wait_for(rf"worker {worker} \(pid {pid}\) exited with status 0")
    assert not any(f.get("id") == stream_id for f in frames)
    assert final["result"]["finishReason"] == "stop"
    assert "".join(d["text"] for d in before) + text == full_text(LONG_STORY)
    assert_positions(before + after)
    assert code == 1012
    assert node not in others and others and resumed_on != node
    assert sup.proc.returncode == 0


@pytest.mark.parametrize("signals", [1, 2])
async def test_serve_exits_after_sigterm_and_at_once_after_a_second(
    signals: int, tmp_path: Path
) -> None:
    """One SIGTERM: drain then status 0. Two: exit at once (status 1), the stream cut."""
    async with gateway_processes(tmp_path, 1, env={}) as procs:
        proc = procs[0]
        async with asyncio.timeout(TIMEOUT):
            ws = await connect(proc.ws_url, additional_headers={"Authorization": "Bearer tok-bob"})
        client = RawClient(ws)
        await client.request("chat.postChat", [STORY])
        await client.recv()
        for _ in range(signals):
            proc.proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.2)
        frames, _ = await until_closed(client)
        status = await asyncio.to_thread(proc.proc.wait, TIMEOUT)
    finished = any("result" in f for f in frames)
    assert (status, finished) == ((0, True) if signals == 1 else (1, False))
