"""Hostile input over real sockets: bad frames, floods, abuse, handshakes and HTTP paths.

Every test opens a well-behaved connection first (the bystander) and checks
afterwards that it still gets answers: whatever one client does, the server
keeps serving everyone else.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from gateway.auth.tokens import mint_token
from gateway.server.app import Gateway
from tests.support import TEST_JWT_SECRET, RawClient, gateway_server, raw_client, until_closed

TIMEOUT = 10.0


@contextlib.asynccontextmanager
async def hostile_setting(**overrides: Any) -> AsyncIterator[Gateway]:
    """A gateway, and a bystander connected before the test that must still be served after."""
    async with gateway_server(**overrides) as gw, raw_client(gw, "tok-bob") as bystander:
        assert (await bystander.call("auth.whoami"))["result"]["user"]["id"] == "bob"
        yield gw
        assert (await bystander.call("chat.getCurrentModel"))["result"]["name"] == "offline"
        async with raw_client(gw, "tok-bob") as newcomer:
            assert (await newcomer.call("auth.whoami"))["result"]["user"]["id"] == "bob"


async def send_all(client: RawClient, messages: list[Any]) -> None:
    """Send without waiting for answers; the server may close the socket part-way."""
    with contextlib.suppress(ConnectionClosed):
        for message in messages:
            await client.send(message)


async def http_get(gw: Gateway, target: str, headers: str = "") -> tuple[int, bytes]:
    """A raw HTTP/1.1 GET (no client-side path normalisation): status code and body."""
    async with asyncio.timeout(TIMEOUT):
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        try:
            writer.write(
                f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\n{headers}"
                "Connection: close\r\n\r\n".encode()
            )
            await writer.drain()
            data = await reader.read()
        finally:
            writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head else 0
    return status, body


async def http_raw(
    gw: Gateway, request: bytes, source: str = "127.0.0.1"
) -> tuple[int, bytes, bytes]:
    """Send ``request`` exactly as given (from address ``source``): status code (0 if none),
    head and body of the answer."""
    async with asyncio.timeout(TIMEOUT):
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port, local_addr=(source, 0))
        try:
            writer.write(request)
            await writer.drain()
            data = await reader.read()
        finally:
            writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head else 0
    return status, head, body


def handshake_request(gw: Gateway, *extra: str, host: str | None = None) -> bytes:
    """A WebSocket upgrade request for /ws with ``extra`` header lines (``"Name: value"``)."""
    lines = [
        "GET /ws HTTP/1.1",
        f"Host: {host or f'127.0.0.1:{gw.port}'}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def calls(count: int, method: str = "chat.getCurrentModel") -> list[dict[str, Any]]:
    return [{"jsonrpc": "2.0", "method": method, "id": i} for i in range(count)]


# Frames the gateway refuses


async def test_binary_frame_closes_with_1003() -> None:
    """A binary frame closes that connection with 1003."""
    async with hostile_setting() as gw, raw_client(gw) as attacker:
        await attacker.ws.send(b'{"jsonrpc": "2.0", "method": "auth.whoami", "id": 1}')
        _, code = await until_closed(attacker)
        assert code == 1003


async def test_invalid_utf8_text_frame_closes_with_1007() -> None:
    """A text frame that is not UTF-8 closes that connection with 1007."""
    async with hostile_setting() as gw, raw_client(gw) as attacker:
        await attacker.ws.send(b'{"jsonrpc": "2.0", "method": "\xff\xfe", "id": 1}', text=True)
        _, code = await until_closed(attacker)
        assert code == 1007


async def test_an_unmasked_client_frame_closes_with_1002() -> None:
    """A client frame without a mask breaks RFC 6455: the server closes with 1002."""
    async with hostile_setting() as gw:
        async with asyncio.timeout(TIMEOUT):
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
            writer.write(handshake_request(gw, "Authorization: Bearer tok-alice"))
            assert b" 101 " in await reader.readuntil(b"\r\n\r\n")
            writer.write(b"\x81\x05hello")
            data = await reader.read()
            writer.close()
        assert data[:1] == b"\x88"  # a close frame
        assert int.from_bytes(data[2:4], "big") == 1002


async def test_frame_over_max_frame_bytes_closes_with_1009() -> None:
    """A frame larger than ``max_frame_bytes`` closes with 1009; one just under is served."""
    async with hostile_setting(max_frame_bytes=4096) as gw, raw_client(gw) as attacker:
        padding = "x" * (4096 - 200)
        response = await attacker.call("chat.setModel", [padding])
        assert response["error"]["code"] == -32602
        await attacker.send("x" * 5000)
        _, code = await until_closed(attacker)
        assert code == 1009


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000,
        '{"a":' * 50_000,
        '{"jsonrpc": "2.0", "method": "chat.setModel", "id": 1, "params": '
        + "[" * 5000
        + "]" * 5000
        + "}",
        '{"jsonrpc": "2.0", "method": "chat.setModel", "id": 1.5, "params": [['
        + "[" * 1030
        + "]" * 1030
        + "]]}",
        '{"jsonrpc": "2.0", "method": "chat.setModel", "id": 18446744073709551616, "params": '
        + "[" * 1024
        + "]" * 1024
        + "}",
    ],
    ids=["brackets", "objects", "nested-params", "nested-with-float-id", "nested-with-big-id"],
)
async def test_deeply_nested_json_is_a_parse_error_and_the_connection_survives(text: str) -> None:
    """JSON nested beyond the parser's depth is -32700; the same socket keeps working."""
    async with hostile_setting() as gw, raw_client(gw) as attacker:
        await attacker.send(text)
        response = await attacker.recv()
        assert response["error"]["code"] == -32700
        assert response["id"] is None
        assert (await attacker.call("auth.whoami"))["result"]["user"]["id"] == "alice"


def nested_request(id_: Any, depth: int) -> str:
    """chat.setModel with an id and params making the frame ``depth`` levels deep."""
    inner = depth - 1  # the request object is the first level
    return (
        f'{{"jsonrpc":"2.0","method":"chat.setModel","id":{json.dumps(id_)},"params":'
        + "[" * inner
        + "]" * inner
        + "}"
    )


@pytest.mark.parametrize("id_", [1, "s", 1.5, 18446744073709551616, -(2**70)])
async def test_the_nesting_limit_is_1024_levels_whatever_the_id(id_: Any) -> None:
    """Frames 990 and 1024 levels deep are parsed (their params are -32602) and 1025 is -32700,
    for every kind of id; the id comes back exactly."""
    async with hostile_setting() as gw, raw_client(gw) as attacker:
        for depth in (990, 1024):
            await attacker.send(nested_request(id_, depth))
            response = await attacker.recv()
            assert response["error"]["code"] == -32602, depth
            assert response["id"] == id_
            assert type(response["id"]) is type(id_)
        await attacker.send(nested_request(id_, 1025))
        response = await attacker.recv()
        assert response["error"]["code"] == -32700
        assert response["id"] is None


# Floods and abuse


FLOOD = {"requests_per_second": 5, "request_burst": 5, "flood_close_after": 20}


async def test_calls_beyond_the_rate_get_32004_with_retry_after() -> None:
    """Past the burst, calls get -32004 requestsPerSecond with data.retryAfter; waiting helps."""
    async with hostile_setting(**FLOOD) as gw, raw_client(gw) as attacker:
        await send_all(attacker, calls(12))
        responses = [await attacker.recv() for _ in range(12)]
        refused = [r for r in responses if "error" in r]
        assert 5 <= len(responses) - len(refused) <= 7
        assert len(refused) >= 5
        for response in refused:
            assert response["error"]["code"] == -32004
            assert response["error"]["data"]["limit"] == "requestsPerSecond"
            assert 0 < response["error"]["data"]["retryAfter"] <= 1
        await asyncio.sleep(max(r["error"]["data"]["retryAfter"] for r in refused))
        assert (await attacker.call("auth.whoami"))["result"]["user"]["id"] == "alice"


async def test_sustained_flood_closes_with_4001() -> None:
    """A client that keeps calling after -32004 is closed with 4001 (may reconnect later)."""
    async with hostile_setting(**FLOOD) as gw, raw_client(gw) as attacker:
        await send_all(attacker, calls(60))
        frames, code = await until_closed(attacker)
        assert code == 4001
        refused = [f for f in frames if f.get("error", {}).get("code") == -32004]
        assert len(refused) >= FLOOD["flood_close_after"]


async def test_a_flood_that_a_refilled_token_interrupts_still_closes_with_4001() -> None:
    """Rounds of 29 calls, each round after a token has refilled: no 30 refusals ever come in a
    row, but the client keeps flooding (97 % refused) and is closed with 4001."""
    limits = {"requests_per_second": 20, "request_burst": 1, "flood_close_after": 30}
    async with hostile_setting(**limits) as gw, raw_client(gw) as attacker:
        refused = 0
        with contextlib.suppress(ConnectionClosed):
            for _ in range(40):
                await attacker.ws.send(json.dumps(calls(1)[0]))
                await send_all(attacker, calls(28))
                for _ in range(29):
                    response = await attacker.recv()
                    refused += response.get("error", {}).get("code") == -32004
                await asyncio.sleep(1.5 / limits["requests_per_second"])
        assert attacker.ws.close_code == 4001
        assert refused >= limits["flood_close_after"]


async def test_a_client_that_waits_out_retry_after_is_never_closed() -> None:
    """Refused calls drain away at the sustained rate: a client that backs off stays connected."""
    limits = {"requests_per_second": 20, "request_burst": 5, "flood_close_after": 10}
    async with hostile_setting(**limits) as gw, raw_client(gw) as attacker:
        for _ in range(6):
            await send_all(attacker, calls(12))
            responses = [await attacker.recv() for _ in range(12)]
            waits = [r["error"]["data"]["retryAfter"] for r in responses if "error" in r]
            assert waits
            await asyncio.sleep(limits["request_burst"] / limits["requests_per_second"] + 0.1)
        assert (await attacker.call("auth.whoami"))["result"]["user"]["id"] == "alice"


async def test_garbage_frames_in_a_row_close_with_4504() -> None:
    """A client sending frames that are not JSON-RPC over and over is closed with 4504."""
    async with hostile_setting() as gw, raw_client(gw) as attacker:
        await send_all(attacker, ["garbage", "[1]", '{"jsonrpc": "1.0"}', "{"] * 20)
        frames, code = await until_closed(attacker)
        assert code == 4504
        assert frames
        errors = [f for f in frames if isinstance(f, dict)]
        assert {e["error"]["code"] for e in errors} <= {-32700, -32600}


@pytest.mark.parametrize(
    ("message", "answered"),
    [
        ({"jsonrpc": "2.0", "method": "chat.nope", "id": "ok"}, True),
        ({"jsonrpc": "2.0", "method": "chat.setModel", "params": [[1]], "id": "ok"}, True),
        ({"jsonrpc": "2.0", "method": "chat.nope"}, False),
        ([{"jsonrpc": "2.0", "method": "chat.nope", "id": "ok"}], True),
    ],
    ids=["unknown-method", "bad-params", "notification", "batch"],
)
async def test_any_well_formed_message_resets_the_garbage_count(
    message: Any, answered: bool
) -> None:
    """49 invalid frames, one well-formed JSON-RPC message refused for any reason, 49 more
    invalid frames: the socket stays open (4504 needs 50 invalid frames in a row)."""
    async with hostile_setting() as gw, raw_client(gw) as attacker:
        await send_all(attacker, ["garbage"] * 49 + [message] + ["garbage"] * 49)
        responses = [await attacker.recv() for _ in range(98 + answered)]
        parse_errors = [r for r in responses if isinstance(r, dict) and r["id"] is None]
        assert len(parse_errors) == 98
        assert (await attacker.call("auth.whoami"))["result"]["user"]["id"] == "alice"


async def test_occasional_garbage_between_valid_calls_is_tolerated() -> None:
    """Invalid frames interleaved with valid calls are answered with errors, never a close."""
    async with hostile_setting() as gw, raw_client(gw) as attacker:
        for _ in range(60):
            await attacker.send("garbage")
            assert (await attacker.recv())["error"]["code"] == -32700
            assert "result" in await attacker.call("auth.whoami")


async def test_too_many_calls_in_flight_get_32004() -> None:
    """Beyond ``inflight_per_connection`` running calls, another call is -32004."""
    async with hostile_setting(inflight_per_connection=2) as gw, raw_client(gw) as attacker:
        for id_ in ("a", "b"):
            await attacker.send(
                {"jsonrpc": "2.0", "method": "chat.postChat", "params": ["long"], "id": id_}
            )
        response = await attacker.call("auth.whoami", id="over")
        assert response["error"]["code"] == -32004
        assert response["error"]["data"]["limit"] == "inflightPerConnection"
        for id_ in ("a", "b"):
            await attacker.send({"jsonrpc": "2.0", "method": "rpc.cancel", "params": [id_]})
        pending = {"a", "b"}
        async with asyncio.timeout(TIMEOUT):
            while pending:
                frame = await attacker.recv()
                if frame.get("id") in pending and "result" in frame:
                    pending.discard(frame["id"])
        assert (await attacker.call("auth.whoami"))["result"]["user"]["id"] == "alice"


async def test_a_batch_in_flight_counts_as_one_call() -> None:
    """With a batch of 40 streams running, single calls are served until the singles and the
    batch together reach ``inflight_per_connection``; then they are -32004."""
    limits = {"inflight_per_connection": 3, "streams_per_user": 100}
    async with hostile_setting(**limits) as gw, raw_client(gw) as attacker:
        batch = [
            {"jsonrpc": "2.0", "method": "chat.postChat", "params": ["long"], "id": f"b{i}"}
            for i in range(40)
        ]
        await attacker.send(batch)
        assert (await attacker.recv())["method"] == "stream.delta"  # the batch is running
        assert (await attacker.call("auth.whoami", id="w1"))["result"]["user"]["id"] == "alice"
        for id_ in ("s1", "s2"):
            await attacker.request("chat.postChat", ["long"], id=id_)
        response = await attacker.call("auth.whoami", id="over")
        assert response["error"]["code"] == -32004
        assert response["error"]["data"]["limit"] == "inflightPerConnection"


async def test_a_streaming_method_called_as_a_notification_is_not_run() -> None:
    """chat.postChat without an id streams nothing (no deltas with id null) and answers nothing."""
    async with hostile_setting() as gw, raw_client(gw) as attacker:
        await attacker.send({"jsonrpc": "2.0", "method": "chat.postChat", "params": ["hi"]})
        await attacker.send({"jsonrpc": "2.0", "method": "auth.whoami", "id": "after"})
        assert (await attacker.recv())["id"] == "after"
        await attacker.request("chat.postChat", ["hi"], id=1)
        first = await attacker.recv()
        assert first["method"] == "stream.delta" and first["params"]["id"] == 1


async def test_batch_over_max_batch_is_invalid_request() -> None:
    """A batch longer than ``max_batch`` is one -32600; a batch at the limit is served."""
    async with hostile_setting(max_batch=3) as gw, raw_client(gw) as attacker:
        await attacker.send(calls(4, "auth.whoami"))
        response = await attacker.recv()
        assert isinstance(response, dict)
        assert response["error"]["code"] == -32600
        await attacker.send(calls(3, "auth.whoami"))
        assert len(await attacker.recv()) == 3


async def test_a_batch_of_max_batch_items_is_served_in_full() -> None:
    """A batch as large as ``max_batch`` (above ``inflight_per_connection``) is fully answered."""
    async with hostile_setting() as gw, raw_client(gw) as attacker:
        await attacker.send(calls(100, "auth.whoami"))
        responses = await attacker.recv()
        assert len(responses) == 100
        assert all("result" in r for r in responses)


async def test_connections_beyond_max_connections_close_with_1013() -> None:
    """At ``max_connections`` a further socket is closed with 1013 (try again later)."""
    async with hostile_setting(max_connections=2) as gw, raw_client(gw) as attacker:
        await attacker.call("auth.whoami")
        async with raw_client(gw, "tok-alice") as extra:
            _, code = await until_closed(extra)
            assert code == 1013


# Memory a client makes the server hold


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


@contextlib.asynccontextmanager
async def gateway_process(api_keys: str) -> AsyncIterator[tuple[int, int]]:
    """``gateway serve`` as its own process (so its RSS is its own): (pid, port)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--port", str(port)],
        env={**os.environ, "GATEWAY_API_KEYS": api_keys},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(20):
            while "listening" not in (line := await asyncio.to_thread(proc.stdout.readline)):
                assert line, "gateway exited before listening"
        yield proc.pid, port
    finally:
        proc.kill()
        proc.wait()


PING = b"\x89\xfd\x00\x00\x00\x00" + b"p" * 125
"""A masked ping frame with the largest payload a control frame may carry (125 bytes)."""
RSS_BOUND = 16 * 1024 * 1024
FLOOD_BYTES = 64 * 1024 * 1024


async def test_a_ping_flood_before_login_does_not_grow_server_memory() -> None:
    """A client that floods pings and never reads: while it offers 64 MiB of pings, the gateway
    process's RSS grows by less than 16 MiB (it stops reading once the pongs fill its write
    buffer), and it keeps serving others."""
    async with gateway_process("alice:tok-a") as (pid, port):
        baseline = _rss_bytes(pid)
        async with asyncio.timeout(TIMEOUT):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n".encode()
            )
            assert b" 101 " in await reader.readuntil(b"\r\n\r\n")
        chunk = PING * (1024 * 1024 // len(PING))
        sent, peak = 0, baseline
        try:
            while sent < FLOOD_BYTES:
                writer.write(chunk)
                try:
                    await asyncio.wait_for(writer.drain(), 2.0)
                except TimeoutError:
                    break  # the server stopped reading: the flood is held in kernel buffers
                except ConnectionError:
                    break  # closed at auth_timeout (10 s) on a very slow machine
                sent += len(chunk)
                peak = max(peak, _rss_bytes(pid))
            await asyncio.sleep(0.5)
            peak = max(peak, _rss_bytes(pid))
            assert peak - baseline < RSS_BOUND, (sent, peak - baseline)
            url = f"ws://127.0.0.1:{port}/ws"
            async with asyncio.timeout(TIMEOUT):
                async with connect(url, additional_headers={"Authorization": "Bearer tok-a"}) as ws:
                    await ws.send('{"jsonrpc":"2.0","method":"auth.whoami","id":1}')
                    assert json.loads(await ws.recv())["result"]["user"]["id"] == "alice"
        finally:
            writer.transport.abort()


@pytest.mark.parametrize("login", [True, False], ids=["logged-in", "before-login"])
async def test_a_client_flooding_pings_without_reading_is_dropped(login: bool) -> None:
    """A client that floods pings and never reads is closed once its write buffer has stayed
    full for ``send_timeout`` (4000), or at ``auth_timeout`` (4502) before login; a close it
    cannot read is dropped after ``close_timeout``: its connection is gone either way."""
    settings = {"send_timeout": 1.0, "close_timeout": 1.0, "auth_timeout": 1.0}
    if login:
        settings["auth_timeout"] = 60.0
    else:
        settings["send_timeout"] = 60.0
    headers = ["Authorization: Bearer tok-alice"] if login else []
    async with hostile_setting(**settings) as gw:
        async with asyncio.timeout(TIMEOUT):
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
            writer.write(handshake_request(gw, *headers))
            assert b" 101 " in await reader.readuntil(b"\r\n\r\n")
            while len(gw.connections) < 2:
                await asyncio.sleep(0.01)
        try:
            chunk = PING * (256 * 1024 // len(PING))
            for _ in range(64):
                writer.write(chunk)
                try:
                    await asyncio.wait_for(writer.drain(), 0.5)
                except TimeoutError:
                    break  # the server stopped reading
                except ConnectionError:
                    break  # already dropped (a slow machine reached the deadline first)
            async with asyncio.timeout(TIMEOUT):
                while len(gw.connections) > 1:
                    await asyncio.sleep(0.05)
        finally:
            writer.transport.abort()


# Failed logins


LOGIN_LIMITS = {"failed_logins_per_address": 5, "failed_logins_per_user": 3}


async def login_from(gw: Gateway, source: str, token: str) -> tuple[dict[str, Any], int | None]:
    """auth.login on a new socket from address ``source``: the answer, and the close code
    that follows a refusal (None after a success)."""
    async with asyncio.timeout(TIMEOUT):
        ws = await connect(gw.ws_url, local_addr=(source, 0))
    client = RawClient(ws)
    try:
        response = await client.call("auth.login", {"token": token})
        code = (await until_closed(client))[1] if "error" in response else None
    finally:
        await ws.close()
    return response, code


def assert_throttled(response: dict[str, Any], window: float = 60.0) -> None:
    error = response["error"]
    assert error["code"] == -32004
    assert error["data"]["limit"] == "failedLogins"
    assert 0 < error["data"]["retryAfter"] <= window


async def test_failed_logins_from_one_address_are_limited_but_not_elsewhere() -> None:
    """After 5 wrong tokens from one address, logins from it are -32004 failedLogins with
    retryAfter (then close 4002; 429 in the handshake), even with a valid token; the same user
    logging in from another address is not affected."""
    async with hostile_setting(**LOGIN_LIMITS) as gw:
        for _ in range(LOGIN_LIMITS["failed_logins_per_address"]):
            response, code = await login_from(gw, "127.0.0.2", "wrong-token")
            assert response["error"]["code"] == -32001
            assert code == 4500
        response, code = await login_from(gw, "127.0.0.2", "tok-alice")
        assert_throttled(response)
        assert code == 4002
        status, head, body = await http_raw(
            gw, handshake_request(gw, "Authorization: Bearer tok-alice"), source="127.0.0.2"
        )
        assert status == 429
        assert_throttled(json.loads(body))
        assert b"\r\nretry-after: " in head.lower()
        response, code = await login_from(gw, "127.0.0.1", "tok-alice")
        assert response["result"]["user"]["id"] == "alice"
        async with raw_client(gw, "tok-alice") as elsewhere:
            assert "result" in await elsewhere.call("auth.whoami")


async def test_the_per_user_limit_counts_only_correctly_signed_tokens() -> None:
    """Forged tokens naming carol never count against carol; expired (correctly signed) tokens
    of dave do, up to 3, then -32004; a valid token of either always logs in."""
    limits = {**LOGIN_LIMITS, "failed_logins_per_address": 100}
    forged = mint_token("not-the-gateway-secret-0123456789abcdef", "carol")
    expired = mint_token(TEST_JWT_SECRET, "dave", ttl=60, now=time.time() - 3600)
    async with hostile_setting(**limits) as gw:
        for _ in range(6):
            response, _ = await login_from(gw, "127.0.0.2", forged)
            assert response["error"]["code"] == -32001
        response, _ = await login_from(gw, "127.0.0.2", mint_token(TEST_JWT_SECRET, "carol"))
        assert response["result"]["user"]["id"] == "carol"
        for _ in range(LOGIN_LIMITS["failed_logins_per_user"]):
            response, code = await login_from(gw, "127.0.0.2", expired)
            assert response["error"]["code"] == -32002
            assert code == 4501
        response, code = await login_from(gw, "127.0.0.3", expired)
        assert_throttled(response)
        assert code == 4002
        response, _ = await login_from(gw, "127.0.0.3", mint_token(TEST_JWT_SECRET, "dave"))
        assert response["result"]["user"]["id"] == "dave"


# Handshakes


async def test_foreign_origin_is_refused_with_403_and_same_origin_accepted() -> None:
    """A browser handshake from another origin gets HTTP 403; the page's own origin is let in."""
    async with hostile_setting() as gw:
        for origin in ("http://evil.example", "null", f"http://127.0.0.1:{gw.port + 1}"):
            with pytest.raises(InvalidStatus) as info:
                async with raw_client(gw, origin=origin):
                    pass
            assert info.value.response.status_code == 403
        async with raw_client(gw, origin=f"http://127.0.0.1:{gw.port}") as browser:
            assert (await browser.call("auth.whoami"))["result"]["user"]["id"] == "alice"


async def test_configured_origins_are_allowed() -> None:
    """Origins listed in ``allowed_origins`` may open sockets; others still may not."""
    async with hostile_setting(allowed_origins=("https://chat.example",)) as gw:
        async with raw_client(gw, origin="https://chat.example") as browser:
            assert "result" in await browser.call("auth.whoami")
        with pytest.raises(InvalidStatus) as info:
            async with raw_client(gw, origin="https://chat.example.evil"):
                pass
        assert info.value.response.status_code == 403


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        (["Origin: http://127.0.0.1:{port}", "Origin: http://evil.example"], 403),
        (["Origin: http://evil.example", "Origin: http://127.0.0.1:{port}"], 403),
        (["Authorization: Bearer tok-alice", "Authorization: Bearer tok-bob"], 401),
        (["Host: 127.0.0.1:{port}"], 400),
        (["Upgrade: websocket"], 400),
    ],
    ids=["origin-own-first", "origin-foreign-first", "authorization", "host", "upgrade"],
)
async def test_duplicate_handshake_headers_get_a_4xx_and_at_most_one_log_line(
    headers: list[str], status: int, caplog: pytest.LogCaptureFixture
) -> None:
    """A header that may appear once, sent twice: the documented 4xx, no 500, no traceback,
    at most one log line per attempt."""
    caplog.set_level(logging.DEBUG)
    async with hostile_setting() as gw:
        extra = [h.format(port=gw.port) for h in headers]
        for _ in range(3):
            caplog.clear()
            code, _, body = await http_raw(gw, handshake_request(gw, *extra))
            assert code == status
            if status == 401:
                assert json.loads(body)["error"]["code"] == -32001
            records = [r for r in caplog.records if r.levelno >= logging.INFO]
            assert len(records) <= 1, [r.getMessage() for r in records]
            assert not any(r.exc_info for r in caplog.records)


@pytest.mark.parametrize(
    "origin",
    ["evil://127.0.0.1:{port}", "file://127.0.0.1:{port}", "ws://127.0.0.1:{port}", "null"],
)
async def test_an_origin_with_another_scheme_is_refused(origin: str) -> None:
    """Only http(s) pages of the gateway's own host and port are its origin: 403 otherwise."""
    async with hostile_setting() as gw:
        code, _, _ = await http_raw(
            gw, handshake_request(gw, f"Origin: {origin}".format(port=gw.port))
        )
        assert code == 403


async def test_configured_origins_compare_scheme_host_and_port() -> None:
    """``https://chat.example`` admits the same origin however spelled (case, explicit default
    port) and refuses the same host over http or on another port."""
    async with hostile_setting(allowed_origins=("https://chat.example",)) as gw:
        for origin in ("https://chat.example:443", "HTTPS://Chat.Example"):
            async with raw_client(gw, origin=origin) as browser:
                assert "result" in await browser.call("auth.whoami")
        for origin in ("http://chat.example", "https://chat.example:8443"):
            code, _, _ = await http_raw(gw, handshake_request(gw, f"Origin: {origin}"))
            assert code == 403, origin


@pytest.mark.parametrize("header", ["Basic YWxpY2U6dG9rLWFsaWNl", "Digest x", "tok-alice"])
async def test_non_bearer_authorization_is_refused_with_401(header: str) -> None:
    """An Authorization header in any scheme but Bearer fails the handshake with 401."""
    async with hostile_setting() as gw:
        with pytest.raises(InvalidStatus) as info:
            async with asyncio.timeout(TIMEOUT):
                ws = await connect(gw.ws_url, additional_headers={"Authorization": header})
            await ws.close()
        assert info.value.response.status_code == 401


# Plain HTTP


async def test_healthz_answers_200_json() -> None:
    """GET /healthz is 200 with a JSON body saying ok."""
    async with hostile_setting() as gw:
        status, body = await http_get(gw, "/healthz")
        assert status == 200
        health = json.loads(body)
        assert health["status"] == "ok"
        assert health["connections"] >= 1


@pytest.mark.parametrize(
    "target",
    [
        "/../pyproject.toml",
        "/../../etc/passwd",
        "/%2e%2e/pyproject.toml",
        "/%2E%2E/%2e%2e/etc/passwd",
        "/..%2fpyproject.toml",
        "/%2e%2e%2fpyproject.toml",
        "/app.js/../../pyproject.toml",
        "//etc/passwd",
        "/%2fetc%2fpasswd",
        "/%00",
        "/index.html%00.png",
        "/" + "a" * 300,
        "/" + "%2e%2e/" * 200 + "etc/passwd",
        "/no-such-file.js",
    ],
)
async def test_static_paths_outside_the_web_root_are_404(target: str) -> None:
    """Traversal in any spelling, NUL bytes, huge names: 404, never a file outside web/, no 500."""
    async with hostile_setting() as gw:
        status, body = await http_get(gw, target)
        assert status == 404
        assert b"[build-system]" not in body
        assert b"root:" not in body


async def test_garbage_http_request_is_dropped_without_harm() -> None:
    """A request line that is not HTTP is refused; the server stays up."""
    async with hostile_setting() as gw:
        async with asyncio.timeout(TIMEOUT):
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
            writer.write(b"\x16\x03\x01\x02\x00garbage\r\n\r\n")
            await writer.drain()
            data = await reader.read()
            writer.close()
        assert not data or data.startswith(b"HTTP/1.1 4")


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"])
@pytest.mark.parametrize("target", ["/", "/healthz", "/ws"])
async def test_methods_other_than_get_and_head_are_405(method: str, target: str) -> None:
    """Anything but GET and HEAD is 405 with an Allow header, never served like GET."""
    async with hostile_setting() as gw:
        code, head, body = await http_raw(
            gw, f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\n\r\n".encode()
        )
        assert code == 405
        assert b"\r\nallow: GET, HEAD" in head.lower().replace(b"get, head", b"GET, HEAD")
        assert b"<!doctype" not in body.lower()


@pytest.mark.parametrize("target", ["/healthz", "/", "/app.js", "/nope"])
async def test_head_answers_like_get_without_a_body(target: str) -> None:
    """HEAD has the status and Content-Length of GET and no body."""
    async with hostile_setting() as gw:
        get_status, _, get_body = await http_raw(
            gw, f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\n\r\n".encode()
        )
        status, head, body = await http_raw(
            gw, f"HEAD {target} HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\n\r\n".encode()
        )
        assert status == get_status
        assert body == b""
        assert f"content-length: {len(get_body)}".encode() in head.lower()


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /healthz HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5\r\n\r\nhello",
        b"POST /ws HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "GET /caf\u00e9 HTTP/1.1\r\nHost: {host}\r\n\r\n".encode(),
        b"GET /healthz HTTP/1.1\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: {host}\r\nHost: evil.example\r\n\r\n",
        b"GET /healthz HTTP/2.0\r\nHost: {host}\r\n\r\n",
    ],
    ids=["body", "chunked", "non-ascii-target", "no-host", "two-hosts", "http2"],
)
async def test_malformed_http_requests_get_400(request_bytes: bytes) -> None:
    """A body, a non-ASCII target, a missing or repeated Host: 400, not silence or 200."""
    async with hostile_setting() as gw:
        request = request_bytes.replace(b"{host}", f"127.0.0.1:{gw.port}".encode())
        code, _, _ = await http_raw(gw, request)
        assert code == 400


async def test_http_1_0_may_omit_host() -> None:
    """HTTP/1.0 has no Host requirement: GET /healthz without it is served."""
    async with hostile_setting() as gw:
        code, _, body = await http_raw(gw, b"GET /healthz HTTP/1.0\r\n\r\n")
        assert code == 200
        assert json.loads(body)["status"] == "ok"


@pytest.mark.parametrize("target", ["/", "/app.js", "/index.html"])
async def test_files_inside_the_web_root_are_still_served(target: str) -> None:
    """The traversal guard still lets the UI's own files through."""
    async with hostile_setting() as gw:
        status, body = await http_get(gw, target)
        assert status == 200
        assert body
