"""Streaming over real sockets: cancel, disconnect, backpressure, keepalive."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from gateway.jsonrpc import Final
from gateway.modules.base import Module, exposed, register_module
from gateway.server.app import Gateway
from tests.support import assert_positions, gateway_server, raw_client


class Firehose(Module):
    """A test module streaming without end, as fast as the consumer lets it."""

    namespace = "test"

    def __init__(self) -> None:
        self.running = 0
        self.closed = 0

    @exposed("firehose")
    async def firehose(self, size: int) -> AsyncIterator[str | Final]:
        """Yield ``size``-character deltas until cancelled."""
        self.running += 1
        try:
            while True:
                await asyncio.sleep(0)
                yield "x" * size
        finally:
            self.running -= 1
            self.closed += 1


def _call_tasks() -> set[asyncio.Task[object]]:
    """Tasks running JSON-RPC calls (the session's call tasks and what they spawn)."""
    return {
        t
        for t in asyncio.all_tasks()
        if "_execute" in repr(t.get_coro()) or "_answer" in repr(t.get_coro())
    }


async def _settle(gw: Gateway) -> None:
    """Wait until no call task and no chat stream is left."""
    async with asyncio.timeout(5):
        while _call_tasks() or gw.leases.held("stream"):
            await asyncio.sleep(0.01)


async def test_rpc_cancel_ends_a_stream_with_finish_reason_cancelled() -> None:
    """rpc.cancel stops a stream at once; the final result says cancelled with partial usage."""
    async with gateway_server() as gw, raw_client(gw) as client:
        await client.send(
            {"jsonrpc": "2.0", "id": "s1", "method": "chat.postChat", "params": ["hi"]}
        )
        first = await client.recv()
        assert first["method"] == "stream.delta"
        await client.send({"jsonrpc": "2.0", "method": "rpc.cancel", "params": {"id": "s1"}})
        loop = asyncio.get_running_loop()
        sent = loop.time()
        while True:
            frame = await client.recv()
            if frame.get("id") == "s1":
                break
        elapsed = loop.time() - sent
        await _settle(gw)
    result = frame["result"]
    assert result["finishReason"] == "cancelled"
    assert result["model"] == "offline"
    assert result["usage"]["completionTokens"] >= 1
    # the paced model would need over a second more to finish on its own
    assert elapsed < 1.0


async def test_cancelling_an_unknown_id_as_a_request_says_so() -> None:
    """rpc.cancel sent as a request answers {"cancelled": false} for an unknown id."""
    async with gateway_server() as gw, raw_client(gw) as client:
        response = await client.call("rpc.cancel", {"id": "nope"})
    assert response["result"] == {"cancelled": False}


async def test_disconnect_mid_stream_leaves_no_task_behind() -> None:
    """With resume_grace 0 a client that goes away cancels its streams; no task outlives it."""
    firehose = Firehose()
    async with gateway_server(resume_grace=0) as gw:
        register_module(gw.registry, firehose)
        baseline = _call_tasks()
        async with raw_client(gw) as client:
            for i in range(3):
                await client.send(
                    {"jsonrpc": "2.0", "id": i, "method": "test.firehose", "params": [10]}
                )
            await client.send(
                {"jsonrpc": "2.0", "id": 9, "method": "chat.postChat", "params": ["x"]}
            )
            for _ in range(20):
                await client.recv()
            assert firehose.running == 3
        await _settle(gw)
        assert _call_tasks() <= baseline
        assert firehose.running == 0 and firehose.closed == 3
        assert not gw.leases.held("stream")
        assert not gw.connections


async def test_a_reader_that_stops_reading_is_closed_as_slow_consumer_with_bounded_memory() -> None:
    """A stuck reader gets 4000 after send_timeout; its queue never grows past the bound."""
    firehose = Firehose()
    bound = 64 * 1024
    async with gateway_server(send_timeout=0.5, outbound_queue_bytes=bound, resume_grace=0) as gw:
        register_module(gw.registry, firehose)
        async with raw_client(gw, token="tok-bob") as bystander:
            # max_queue=1 and a small read limit make the client stop reading from TCP.
            headers = {"Authorization": "Bearer tok-alice"}
            async with asyncio.timeout(10):
                stuck = await connect(gw.ws_url, additional_headers=headers, max_queue=1)
                await stuck.send(
                    '{"jsonrpc":"2.0","id":1,"method":"test.firehose","params":[16384]}'
                )
                peak = 0
                conn = next(c for c in gw.connections if c.user and c.user.id == "alice")
                while conn.ws.state is State.OPEN:
                    peak = max(peak, conn.outbound.queued_bytes)
                    await asyncio.sleep(0.01)
            # The server gave up on the reader: now read, and find the close frame at the end.
            # The bound plus at most one frame in flight.
            assert peak <= bound + 16384 + 64
            with pytest.raises(ConnectionClosed) as info:
                async with asyncio.timeout(10):
                    while True:
                        await stuck.recv()
            assert info.value.rcvd is not None and info.value.rcvd.code == 4000
            # everyone else is still served
            response = await bystander.call("chat.getCurrentModel")
            assert response["result"]["name"] == "offline"
        await _settle(gw)
        assert firehose.running == 0


async def test_a_lagging_reader_gets_merged_deltas_whose_seq_is_the_last_pieces() -> None:
    """When the reader lags, deltas merge into larger frames; seq advances by the pieces merged."""
    firehose = Firehose()
    size = 16384
    async with gateway_server() as gw:
        register_module(gw.registry, firehose)
        headers = {"Authorization": "Bearer tok-alice"}
        async with asyncio.timeout(20):
            async with connect(gw.ws_url, additional_headers=headers, max_queue=1) as ws:
                await ws.send(
                    f'{{"jsonrpc":"2.0","id":1,"method":"test.firehose","params":[{size}]}}'
                )
                conn = next(iter(gw.connections))
                while not conn.outbound.merged:  # lag until the socket buffers are full
                    await asyncio.sleep(0.05)
                seqs, pieces, biggest = [], [], 0
                while biggest <= size and len(seqs) < 100_000:
                    params = json.loads(await ws.recv())["params"]
                    seqs.append(params["seq"])
                    pieces.append(len(params["text"]) // size)
                    biggest = max(biggest, len(params["text"]))
                    assert set(params["text"]) == {"x"} and len(params["text"]) % size == 0
                await ws.send('{"jsonrpc":"2.0","method":"rpc.cancel","params":{"id":1}}')
    # Each frame's seq is the position of its last piece: it advances by the pieces it holds.
    assert seqs[0] == pieces[0] - 1
    assert all(b - a == n for a, b, n in zip(seqs, seqs[1:], pieces[1:], strict=False))
    assert biggest > size  # a frame carried several deltas


async def test_keepalive_pings_are_answered_during_a_long_fast_stream() -> None:
    """A firehose stream does not starve pings: both sides keep the connection alive."""
    firehose = Firehose()
    async with gateway_server(ping_interval=0.1, ping_timeout=0.5) as gw:
        register_module(gw.registry, firehose)
        headers = {"Authorization": "Bearer tok-alice"}
        async with asyncio.timeout(10):
            async with connect(
                gw.ws_url, additional_headers=headers, ping_interval=0.1, ping_timeout=0.5
            ) as ws:
                await ws.send('{"jsonrpc":"2.0","id":1,"method":"test.firehose","params":[100]}')
                loop = asyncio.get_running_loop()
                end = loop.time() + 2.0
                frames = 0
                while loop.time() < end:
                    await ws.recv()
                    frames += 1
                latency = await ws.ping()
                await asyncio.wait_for(latency, 2)
    assert frames > 100


class Burst(Module):
    """A test module yielding many deltas within one loop tick, as a buffered upstream does."""

    namespace = "burst"

    @exposed("burst")
    async def burst(self, count: int) -> AsyncIterator[str | Final]:
        """Yield ``count`` one-character deltas without waiting in between."""
        for i in range(count):
            yield str(i % 10)


async def test_a_burst_of_deltas_sends_the_first_at_once_and_merges_the_rest() -> None:
    """In one tick: the first delta leaves alone (latency), the rest merge; the text is intact."""
    async with gateway_server() as gw:
        register_module(gw.registry, Burst())
        async with raw_client(gw) as client:
            text, deltas, final = await client.stream("burst.burst", [200])
    assert text == "".join(str(i % 10) for i in range(200))
    assert_positions(deltas)
    assert deltas[-1]["seq"] == 199  # the last piece's position, however they merged
    assert deltas[0]["text"] == "0"
    assert len(deltas) < 10
    assert final["result"] == {"finishReason": "stop", "streamId": deltas[0]["streamId"]}


async def test_a_stream_that_never_waits_does_not_hold_up_other_calls() -> None:
    """A long burst yields to the loop in time slices: a later call is answered before it ends."""
    async with gateway_server() as gw:
        register_module(gw.registry, Burst())
        async with raw_client(gw) as client:
            await client.send(
                {"jsonrpc": "2.0", "id": "burst", "method": "burst.burst", "params": [300_000]}
            )
            await client.send({"jsonrpc": "2.0", "id": "model", "method": "chat.getCurrentModel"})
            order = []
            while len(order) < 2:
                frame = await client.recv()
                if frame.get("id") in ("burst", "model"):
                    order.append(frame["id"])
    assert order == ["model", "burst"]
