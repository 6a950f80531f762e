"""The asyncio client against a real gateway over real sockets.

Most tests use the in-process server from :mod:`tests.support`; the restart test
runs ``python -m gateway serve`` as a subprocess so it can be killed and started
again on the same port. Two protocol violations no real gateway commits (a gap
in stream seq, a stray notification) come from a tiny scripted server.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
from websockets.asyncio.server import ServerConnection, serve

from gateway.auth.tokens import mint_token
from gateway.client import (
    AuthError,
    Call,
    Client,
    ConnectionClosed,
    ConnectionLost,
    InvalidParams,
    LimitExceeded,
    MethodNotFound,
    ProtocolError,
    RpcError,
    Stream,
    TokenExpired,
    Unauthenticated,
    connect,
)
from gateway.config import DEFAULT_MODELS
from tests.support import TEST_JWT_SECRET, gateway_server

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 10.0
KEYS = {"tok-alice": "alice", "tok-bob": "bob"}
JWT_SECRET = TEST_JWT_SECRET
LONG_MESSAGE = " ".join(f"word{i}" for i in range(40))  # the offline reply quotes up to 40 words

T = TypeVar("T")


async def eventually(probe: Callable[[], Awaitable[T]], *, within: float = 5.0) -> T:
    """Retry ``probe`` until it stops raising LimitExceeded or AssertionError."""
    async with asyncio.timeout(within):
        while True:
            try:
                return await probe()
            except (LimitExceeded, AssertionError):
                await asyncio.sleep(0.02)


async def first_delta(client: Client, message: str) -> str:
    """Start chat.postChat and return its first delta, abandoning the stream."""
    async for text in client.stream("chat.postChat", message=message):
        return text
    raise AssertionError("the stream yielded no text")


async def test_call_returns_results_with_params_by_position_or_by_name() -> None:
    """call() passes params by position or by name and returns the result."""
    async with gateway_server(api_keys=KEYS) as gw, connect(gw.ws_url, token="tok-alice") as client:
        async with asyncio.timeout(TIMEOUT):
            models = await client.call("chat.listModels")
            assert {m["name"] for m in models} >= {"offline", "offline-fast"}
            assert await client.call("chat.setModel", "offline-fast") is True
            assert (await client.call("chat.getCurrentModel"))["name"] == "offline-fast"
            assert await client.call("chat.setModel", modelName="offline") is True
            assert (await client.call("chat.getCurrentModel"))["name"] == "offline"
        with pytest.raises(TypeError):
            await client.call("chat.setModel", "offline", modelName="offline")


async def test_header_auth_reports_the_user() -> None:
    """A header-authenticated client knows its user from auth.whoami."""
    async with gateway_server(api_keys=KEYS, admins={"alice"}) as gw:
        async with connect(gw.ws_url, token="tok-alice") as client:
            assert client.user is not None and client.user["id"] == "alice"
            assert "admin" in client.user["roles"]
            assert client.connections == 1


async def test_frame_auth_logs_in_with_the_first_frame() -> None:
    """auth="frame" logs in with auth.login, as a browser does."""
    async with gateway_server(api_keys=KEYS) as gw:
        async with connect(gw.ws_url, token="tok-bob", auth="frame") as client:
            assert client.user is not None and client.user["id"] == "bob"
            async with asyncio.timeout(TIMEOUT):
                assert (await client.call("auth.whoami"))["user"]["id"] == "bob"


async def test_errors_are_typed_and_carry_the_code() -> None:
    """Error responses raise RpcError subclasses holding code, message and data."""
    async with gateway_server(api_keys=KEYS) as gw, connect(gw.ws_url, token="tok-alice") as client:
        async with asyncio.timeout(TIMEOUT):
            with pytest.raises(MethodNotFound) as missing:
                await client.call("chat.noSuchMethod")
            assert missing.value.code == -32601
            with pytest.raises(InvalidParams) as bad:
                await client.call("chat.setModel", "no-such-model")
            assert bad.value.code == -32602 and bad.value.message
            assert isinstance(bad.value, RpcError)
            # The connection is fine after errors.
            assert await client.call("chat.setModel", "offline-fast") is True


async def test_stream_yields_text_and_then_holds_the_final_result() -> None:
    """stream() yields the deltas in order; .result has finishReason, model and usage."""
    async with gateway_server(api_keys=KEYS) as gw, connect(gw.ws_url, token="tok-alice") as client:
        async with asyncio.timeout(TIMEOUT):
            await client.call("chat.setModel", "offline-fast")
            stream = client.stream("chat.postChat", message="hello there")
            parts = [text async for text in stream]
            answer = await client.call("chat.chatNonStreaming", "hello there")
        assert len(parts) > 5
        assert "".join(parts) == stream.text == answer["text"]
        assert stream.result["finishReason"] == "stop"
        assert stream.result["model"] == "offline-fast"
        assert stream.result["usage"]["completionTokens"] > 0


async def test_a_non_streaming_method_through_stream_yields_nothing_and_keeps_the_result() -> None:
    """stream() on a plain method yields no text and leaves the result in .result."""
    async with gateway_server(api_keys=KEYS) as gw, connect(gw.ws_url, token="tok-alice") as client:
        async with asyncio.timeout(TIMEOUT):
            stream = client.stream("chat.getCurrentModel")
            assert [text async for text in stream] == []
        assert stream.result["name"] == "offline"


async def test_batch_returns_results_and_errors_in_order() -> None:
    """batch() answers each call in the order given, errors as RpcError values."""
    async with gateway_server(api_keys=KEYS) as gw, connect(gw.ws_url, token="tok-alice") as client:
        async with asyncio.timeout(TIMEOUT):
            results = await client.batch(
                [
                    ("chat.listModels", None),
                    ("chat.noSuchMethod", None),
                    Call("chat.setModel", ["no-such-model"]),
                    Call("chat.getCurrentModel"),
                ]
            )
        assert [m["name"] for m in results[0]][:2] == ["offline", "offline-fast"]
        assert isinstance(results[1], MethodNotFound)
        assert isinstance(results[2], InvalidParams)
        assert results[3]["name"] == "offline"


async def test_notify_sends_a_call_that_gets_no_answer() -> None:
    """notify() sends a request without an id; its effect shows, and nothing waits."""
    async with gateway_server(api_keys=KEYS) as gw, connect(gw.ws_url, token="tok-alice") as client:
        async with asyncio.timeout(TIMEOUT):
            await client.notify("chat.setModel", "offline-fast")

            async def switched() -> None:
                assert (await client.call("chat.getCurrentModel"))["name"] == "offline-fast"

            await eventually(switched)
            assert client.in_flight == 0


async def test_aclose_cancels_the_stream_and_the_result_says_cancelled() -> None:
    """aclose() sends rpc.cancel and waits for the final result: finishReason cancelled."""
    async with gateway_server(api_keys=KEYS) as gw, connect(gw.ws_url, token="tok-alice") as client:
        async with asyncio.timeout(TIMEOUT):
            stream = client.stream("chat.postChat", message=LONG_MESSAGE)
            first = await anext(stream)
            await stream.aclose()
        assert stream.result["finishReason"] == "cancelled"
        assert stream.text.startswith(first)
        assert len(stream.text.split()) < 40  # the whole reply is longer than 60 words
        assert client.in_flight == 0


async def test_breaking_out_of_a_stream_cancels_it_on_the_server() -> None:
    """A `break` sends rpc.cancel: the user's only stream slot frees long before the reply ends."""
    async with (
        gateway_server(api_keys=KEYS, streams_per_user=1) as gw,
        connect(gw.ws_url, token="tok-alice") as client,
    ):
        async with asyncio.timeout(TIMEOUT):
            async for _ in client.stream("chat.postChat", message=LONG_MESSAGE):
                break
            broke_at = time.monotonic()
            # Uncancelled, the paced reply (60+ words at 30/s) would hold the slot for 2 s.
            await eventually(lambda: first_delta(client, LONG_MESSAGE), within=1.0)
        assert time.monotonic() - broke_at < 1.0


async def test_a_timeout_while_streaming_cancels_the_stream_on_the_server() -> None:
    """Cancelling the task that iterates (here by a timeout) sends rpc.cancel too."""
    async with (
        gateway_server(api_keys=KEYS, streams_per_user=1) as gw,
        connect(gw.ws_url, token="tok-alice") as client,
    ):
        async with asyncio.timeout(TIMEOUT):
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.3):
                    async for _ in client.stream("chat.postChat", message=LONG_MESSAGE):
                        pass
            await eventually(lambda: first_delta(client, LONG_MESSAGE), within=1.0)


async def test_a_call_that_times_out_is_cancelled_on_the_server() -> None:
    """request(timeout=...) raises TimeoutError and sends rpc.cancel for the call."""
    async with (
        gateway_server(api_keys=KEYS, streams_per_user=1) as gw,
        connect(gw.ws_url, token="tok-alice") as client,
    ):
        async with asyncio.timeout(TIMEOUT):
            with pytest.raises(TimeoutError):
                await client.request("chat.chatNonStreaming", [LONG_MESSAGE], timeout=0.3)
            await eventually(lambda: first_delta(client, LONG_MESSAGE), within=1.0)
        assert client.in_flight == 0


async def test_a_bad_token_is_refused_with_auth_error() -> None:
    """A refused token raises AuthError at connect, by header (HTTP 401) or by frame."""
    async with gateway_server(api_keys=KEYS) as gw:
        with pytest.raises(AuthError) as by_header:
            await connect(gw.ws_url, token="tok-mallory")
        assert by_header.value.status == 401
        with pytest.raises(AuthError):
            await connect(gw.ws_url, token="tok-mallory", auth="frame")


async def test_a_4500_range_close_ends_the_client_without_reconnecting() -> None:
    """Closed with 4502 (auth timeout), the client does not reconnect; calls raise AuthError."""
    async with gateway_server(api_keys=KEYS, auth_timeout=0.5) as gw:
        async with connect(gw.ws_url, auth="frame", min_backoff=0.01) as client:
            async with asyncio.timeout(TIMEOUT):
                with pytest.raises(Unauthenticated):
                    await client.call("chat.listModels")

                async def dropped() -> None:
                    assert not client.connected

                await eventually(dropped)
                with pytest.raises(AuthError) as refused:
                    await client.call("chat.listModels")
            assert refused.value.close_code == 4502
            await asyncio.sleep(0.2)
            assert client.connections == 1


async def test_an_expired_token_ends_the_client_with_4501() -> None:
    """When the token expires the call fails (-32002 or close 4501) and nothing reconnects."""
    async with gateway_server(api_keys=KEYS) as gw:
        # Minted once the server is up: exp is whole seconds, so ttl=2 leaves 1-2 s to connect.
        token = mint_token(JWT_SECRET, "alice", ttl=2)
        async with connect(gw.ws_url, token=token, min_backoff=0.01) as client:
            async with asyncio.timeout(TIMEOUT):
                assert client.expires_at is not None
                assert (await client.call("auth.whoami"))["user"]["id"] == "alice"
                await asyncio.sleep(max(0.0, client.expires_at - time.time()) + 1.1)
                with pytest.raises((TokenExpired, AuthError)):
                    await client.call("auth.whoami")

                async def dropped() -> None:
                    assert not client.connected

                await eventually(dropped)
                with pytest.raises(AuthError) as refused:
                    await client.call("auth.whoami")
            assert refused.value.close_code == 4501
            assert client.connections == 1


async def test_refresh_swaps_the_token_used_from_now_on() -> None:
    """refresh() calls auth.refresh and remembers the new token and expiry."""
    fresh = mint_token(JWT_SECRET, "alice", ttl=3600)
    async with gateway_server(api_keys=KEYS) as gw, connect(gw.ws_url, token="tok-alice") as client:
        assert client.expires_at is None
        async with asyncio.timeout(TIMEOUT):
            result = await client.refresh(fresh)
            assert result["user"]["id"] == "alice"
            assert client.token == fresh
            assert client.expires_at is not None and client.expires_at > time.time()
            assert (await client.call("auth.whoami"))["expiresAt"] == client.expires_at


async def test_calls_after_close_raise_connection_closed() -> None:
    """Once closed by its owner, the client refuses calls with ConnectionClosed."""
    async with gateway_server(api_keys=KEYS) as gw:
        client = await connect(gw.ws_url, token="tok-alice")
        await client.close()
        with pytest.raises(ConnectionClosed):
            await client.call("auth.whoami")


# A scripted server for what the gateway never does


@contextlib.asynccontextmanager
async def scripted_server(frames: list[dict[str, Any]]) -> AsyncIterator[str]:
    """A server answering any first request with ``frames`` (``{id}`` replaced by its id)."""

    async def handler(ws: ServerConnection) -> None:
        async for raw in ws:
            request = orjson.loads(raw)
            for frame in frames:
                text = orjson.dumps(frame).decode().replace('"{id}"', str(request["id"]))
                await ws.send(text)

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}/ws"


async def test_a_seq_that_does_not_increase_raises_protocol_error() -> None:
    """Seqs are positions: they may skip (merged pieces) but never repeat or go back."""
    delta = {"jsonrpc": "2.0", "method": "stream.delta"}
    frames: list[dict[str, Any]] = [
        {**delta, "params": {"id": "{id}", "seq": 0, "text": "one"}},
        {**delta, "params": {"id": "{id}", "seq": 2, "text": "two three"}},
        {**delta, "params": {"id": "{id}", "seq": 2, "text": "three"}},
    ]
    async with scripted_server(frames) as url, connect(url) as client:
        stream = client.stream("chat.postChat", message="hi")
        async with asyncio.timeout(TIMEOUT):
            assert await anext(stream) == "one"
            assert await anext(stream) == "two three"
            with pytest.raises(ProtocolError, match="seq"):
                await anext(stream)


async def test_server_notifications_reach_on_notification() -> None:
    """Notifications other than stream.delta go to the on_notification callback."""
    seen: list[tuple[str, Any]] = []
    frames: list[dict[str, Any]] = [
        {"jsonrpc": "2.0", "method": "server.notice", "params": {"text": "maintenance at 5"}},
        {"jsonrpc": "2.0", "id": "{id}", "result": "ok"},
    ]
    async with scripted_server(frames) as url:
        async with connect(url, on_notification=lambda m, p: seen.append((m, p))) as client:
            async with asyncio.timeout(TIMEOUT):
                assert await client.call("anything") == "ok"
    assert seen == [("server.notice", {"text": "maintenance at 5"})]


# A bot across a server restart (subprocess server)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def gateway_process(port: int, log: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """``python -m gateway serve --port PORT`` with alice's key, ready to accept."""
    env = {**os.environ, "GATEWAY_API_KEYS": "alice:tok-alice", "GATEWAY_LOG_LEVEL": "WARNING"}
    with log.open("ab") as log_file:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "serve", "--port", str(port),
            cwd=REPO, env=env, stdout=asyncio.subprocess.PIPE, stderr=log_file,
        )  # fmt: skip
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(30):
            while b"Gateway listening" not in (line := await proc.stdout.readline()):
                assert line, f"the server exited early; see {log}"
        yield proc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(TIMEOUT):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def test_a_bot_survives_a_server_restart(tmp_path: Path) -> None:
    """The bot reconnects and calls again; the stream it had (a memory log) fails ConnectionLost."""
    port, log = free_port(), tmp_path / "server.log"
    url = f"ws://127.0.0.1:{port}/ws"

    async def drain(stream: Stream) -> None:
        async for _ in stream:
            pass

    async with gateway_process(port, log) as first:
        client = await connect(url, token="tok-alice", min_backoff=0.05, max_backoff=0.5)
        stream = client.stream("chat.postChat", message=LONG_MESSAGE)
        async with asyncio.timeout(TIMEOUT):
            await anext(stream)
            # Killed, not SIGTERMed: SIGTERM lets the stream finish (tests/test_drain.py).
            first.kill()
            await first.wait()
    try:
        # A call made while the server is down waits for the reconnect; so does the stream.
        waiting = asyncio.ensure_future(client.call("auth.whoami"))
        cut = asyncio.ensure_future(drain(stream))
        await asyncio.sleep(0.3)
        assert not waiting.done() and not cut.done()
        async with gateway_process(port, log):
            async with asyncio.timeout(TIMEOUT):
                assert (await waiting)["user"]["id"] == "alice"
                # The new process never had that stream: the resume is refused.
                with pytest.raises(ConnectionLost, match="could not be resumed") as lost:
                    await cut
                assert not isinstance(lost.value, ConnectionClosed)
                assert client.connections == 2
                await client.call("chat.setModel", "offline-fast")
                again = client.stream("chat.postChat", message="still there?")
                assert "".join([text async for text in again])
                assert again.result["finishReason"] == "stop"
    finally:
        await client.close()


async def test_a_stream_cut_by_a_dropped_socket_resumes_by_itself_with_no_duplicate_text() -> None:
    """The socket dies mid-answer (no close frame): the same ``async for`` continues after the
    reconnect via stream.resume, and the text equals an uninterrupted run's."""
    paced = replace(DEFAULT_MODELS[0], name="offline-100", tokens_per_second=100.0)
    async with gateway_server(api_keys=KEYS, models=(*DEFAULT_MODELS, paced)) as gw:
        async with connect(gw.ws_url, token="tok-alice", min_backoff=0.01) as client:
            async with asyncio.timeout(TIMEOUT):
                await client.call("chat.setModel", "offline-100")
                whole = client.stream("chat.postChat", message=LONG_MESSAGE)
                expected = "".join([text async for text in whole])
                stream = client.stream("chat.postChat", message=LONG_MESSAGE)
                parts = [await anext(stream) for _ in range(3)]
                assert client._ws is not None
                client._ws.transport.abort()
                parts += [text async for text in stream]
    assert "".join(parts) == expected == stream.text
    assert stream.resumes == 1 and client.connections == 2
    assert stream.result["streamId"] == stream.stream_id
    assert {**stream.result, "streamId": None} == {**whole.result, "streamId": None}


async def test_a_stream_closed_while_the_socket_is_down_is_cancelled_after_the_reconnect() -> None:
    """aclose() with no connection: after the reconnect the client stops it (stream.cancel)."""
    async with gateway_server(api_keys=KEYS) as gw:
        async with connect(gw.ws_url, token="tok-alice", min_backoff=0.2) as client:
            async with asyncio.timeout(TIMEOUT):
                stream = client.stream("chat.postChat", message=LONG_MESSAGE)
                await anext(stream)
                assert client._ws is not None
                client._ws.transport.abort()
                while client.connected:
                    await asyncio.sleep(0.01)
                await stream.aclose()  # the socket is down: nothing can be sent now
                stream_id = stream.stream_id

                async def cancelled() -> None:
                    (row,) = await client.call("stream.list")
                    assert row["streamId"] == stream_id
                    assert row["finishReason"] == "cancelled"

                await eventually(cancelled)


async def test_reasoning_deltas_count_as_positions_and_stay_out_of_the_text() -> None:
    """A "reasoning" delta is not yielded as text; it is kept in stream.reasoning."""
    delta = {"jsonrpc": "2.0", "method": "stream.delta"}
    frames: list[dict[str, Any]] = [
        {**delta, "params": {"id": "{id}", "streamId": "st_x", "seq": 0, "reasoning": "hmm "}},
        {**delta, "params": {"id": "{id}", "seq": 1, "text": "Yes"}},
        {**delta, "params": {"id": "{id}", "seq": 3, "text": ", sure."}},
        {"jsonrpc": "2.0", "id": "{id}", "result": {"finishReason": "stop"}},
    ]
    async with scripted_server(frames) as url, connect(url) as client:
        stream = client.stream("chat.chatWithReasoning", message="hi")
        async with asyncio.timeout(TIMEOUT):
            texts = [text async for text in stream]
    assert texts == ["Yes", ", sure."]
    assert stream.reasoning == "hmm " and stream.stream_id == "st_x"
