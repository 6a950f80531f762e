"""The outbound queue merges only consecutive deltas of one kind (text or reasoning)."""

from __future__ import annotations

import asyncio

import orjson

from gateway.jsonrpc.outbound import DeltaStream, Outbound
from gateway.jsonrpc.registry import Reasoning


async def drain(outbound: Outbound, count: int) -> list[dict[str, object]]:
    async with asyncio.timeout(5):
        return [orjson.loads(await outbound.get())["params"] for _ in range(count)]


async def test_a_lagging_reader_gets_runs_of_one_kind_merged_in_order() -> None:
    """Reasoning merges with reasoning and text with text; a change of kind starts a frame.
    Each frame's seq is the position of its last piece."""
    outbound = Outbound()
    stream = DeltaStream(b"7")
    pieces = [Reasoning("Let "), Reasoning("me think."), "It ", "is ", Reasoning("hm"), "42."]
    for piece in pieces:
        await outbound.put_delta(stream, piece)
    assert await drain(outbound, 4) == [
        {"id": 7, "seq": 1, "reasoning": "Let me think."},
        {"id": 7, "seq": 3, "text": "It is "},
        {"id": 7, "seq": 4, "reasoning": "hm"},
        {"id": 7, "seq": 5, "text": "42."},
    ]
    assert outbound.merged == 2
    assert outbound.queued_bytes == 0


async def test_reasoning_of_two_streams_merges_separately() -> None:
    """Kinds are tracked per stream: one stream's reasoning never joins another's text."""
    outbound = Outbound()
    a, b = DeltaStream(b"1"), DeltaStream(b"2")
    for stream, piece in ((a, Reasoning("x")), (b, "p"), (a, Reasoning("y")), (b, "q")):
        await outbound.put_delta(stream, piece)
    assert await drain(outbound, 2) == [
        {"id": 1, "seq": 1, "reasoning": "xy"},
        {"id": 2, "seq": 1, "text": "pq"},
    ]
