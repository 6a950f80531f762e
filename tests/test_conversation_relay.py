"""relayed: a cancel thrown in at the method's yield reaches the stream it serves."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

from gateway.jsonrpc.registry import Final
from gateway.modules.conversation_answer import relayed

closed: list[str] = []


async def _stream() -> AsyncGenerator[Any, None]:
    try:
        yield "one"
        yield "two"
    except asyncio.CancelledError:
        yield Final({"finishReason": "cancelled", "seen": 1})
    finally:
        closed.append("stream")


@relayed
async def method() -> AsyncGenerator[Any, None]:
    return _stream()


async def test_a_cancel_at_the_yield_is_answered_by_the_stream_and_closes_it() -> None:
    """athrow(CancelledError) on the method returns the stream's own final result."""
    closed.clear()
    agen = method()
    async with asyncio.timeout(5):
        assert await agen.__anext__() == "one"
        reply = await agen.athrow(asyncio.CancelledError())
        assert reply == Final({"finishReason": "cancelled", "seen": 1})
        await agen.aclose()
    assert closed == ["stream"]


async def test_without_a_cancel_everything_passes_through() -> None:
    """Plain iteration yields every item and closes the stream at the end."""
    closed.clear()
    async with asyncio.timeout(5):
        assert [x async for x in method()] == ["one", "two"]
    assert closed == ["stream"]
