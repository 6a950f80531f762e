"""A JSON-RPC client nobody here wrote (jsonrpc-websocket, from PyPI) talks to the gateway."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from jsonrpc_base import ProtocolError
from jsonrpc_websocket import Server

from gateway.server.app import Gateway
from tests.support import assert_positions, gateway_server

TIMEOUT = 10.0


@contextlib.asynccontextmanager
async def third_party(gw: Gateway, token: str | None = "tok-alice") -> AsyncIterator[Server]:
    """A connected jsonrpc-websocket Server, authenticated by header unless ``token`` is None."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    server = Server(gw.ws_url, timeout=TIMEOUT, headers=headers)
    async with asyncio.timeout(TIMEOUT):
        await server.ws_connect()
    try:
        yield server
    finally:
        async with asyncio.timeout(TIMEOUT):
            await server.close()


async def test_third_party_client_lists_sets_and_reads_the_model() -> None:
    """chat.listModels, chat.setModel (positional and named) and chat.getCurrentModel work."""
    async with gateway_server() as gw, third_party(gw) as server:
        async with asyncio.timeout(TIMEOUT):
            models = await server.chat.listModels()
            assert {m["name"] for m in models} >= {"offline", "offline-fast"}
            assert [m["name"] for m in models if m["current"]] == ["offline"]
            assert await server.chat.setModel("offline-fast") is True
            current = await server.chat.getCurrentModel()
            assert current["name"] == "offline-fast"
            assert current["available"] is True
            assert await server.chat.setModel(modelName="offline") is True
            assert (await server.chat.getCurrentModel())["name"] == "offline"


async def test_third_party_client_can_log_in_with_a_call() -> None:
    """Without headers, auth.login first; before it, calls fail with -32001."""
    async with gateway_server() as gw, third_party(gw, token=None) as server:
        async with asyncio.timeout(TIMEOUT):
            with pytest.raises(ProtocolError) as info:
                await server.chat.listModels()
            assert info.value.args[0] == -32001
            login = await server.auth.login(token="tok-bob")
            assert login["user"]["id"] == "bob"
            assert await server.chat.setModel("offline-fast") is True
            assert (await server.chat.getCurrentModel())["name"] == "offline-fast"


async def test_third_party_client_sees_gateway_errors_as_protocol_errors() -> None:
    """An unknown model is -32602 and an unknown method -32601, as the client reports them."""
    async with gateway_server() as gw, third_party(gw) as server:
        async with asyncio.timeout(TIMEOUT):
            with pytest.raises(ProtocolError) as info:
                await server.chat.setModel("no-such-model")
            assert info.value.args[0] == -32602
            with pytest.raises(ProtocolError) as info:
                await server.chat.noSuchMethod()
            assert info.value.args[0] == -32601


async def test_third_party_client_receives_a_stream() -> None:
    """stream.delta notifications reach the client's handler; the call returns the final result."""
    deltas: list[dict[str, Any]] = []

    def on_delta(**params: Any) -> None:
        deltas.append(params)

    async with gateway_server() as gw, third_party(gw) as server:
        server.stream.delta = on_delta
        async with asyncio.timeout(TIMEOUT):
            await server.chat.setModel("offline-fast")
            result = await server.chat.postChat("hello there")
            await asyncio.sleep(0.05)  # notifications are handled in tasks of their own
    assert result["finishReason"] == "stop"
    assert deltas
    assert_positions(deltas)
    assert deltas[0]["streamId"] == result["streamId"]
    assert "hello there" in "".join(d["text"] for d in deltas)
