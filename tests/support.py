"""Helpers shared by the tests: a real gateway on a free port, and a raw JSON-RPC client."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from gateway.config import (
    Config,
    LimitsConfig,
    ServerConfig,
    SessionsConfig,
    StreamsConfig,
)
from gateway.server.app import Gateway

__all__ = [
    "TEST_JWT_SECRET",
    "RawClient",
    "assert_positions",
    "gateway_server",
    "raw_client",
    "until_closed",
]

TIMEOUT = 10.0
TEST_JWT_SECRET = "test-secret-for-signing-tokens-0123456789"
"""The signing secret of :func:`gateway_server` (long enough for HS256)."""


def _split(cls: type, overrides: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: overrides.pop(k) for k in list(overrides) if k in names}


@contextlib.asynccontextmanager
async def gateway_server(
    *,
    api_keys: Mapping[str, str] | None = None,
    admins: set[str] | frozenset[str] = frozenset(),
    jwt_secret: str | None = TEST_JWT_SECRET,
    config: Config | None = None,
    gateway_kwargs: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> AsyncIterator[Gateway]:
    """Start a real gateway on 127.0.0.1 and a free port.

    ``api_keys`` maps token -> user id. Other keyword arguments override
    fields of the server, limits or sessions config, or of Config itself
    (e.g. ``models=...``, ``default_model=...``).
    """
    base = config or Config()
    server = dataclasses.replace(
        base.server, host="127.0.0.1", port=0, **_split(ServerConfig, overrides)
    )
    limits = dataclasses.replace(base.limits, **_split(LimitsConfig, overrides))
    sessions = dataclasses.replace(base.sessions, **_split(SessionsConfig, overrides))
    streams = dataclasses.replace(base.streams, **_split(StreamsConfig, overrides))
    auth = (
        dataclasses.replace(
            base.auth,
            api_keys=dict(api_keys or {"tok-alice": "alice", "tok-bob": "bob"}),
            admins=frozenset(admins),
            jwt_secret=jwt_secret,
        )
        if config is None
        else base.auth
    )
    cfg = dataclasses.replace(
        base,
        server=server,
        limits=limits,
        sessions=sessions,
        streams=streams,
        auth=auth,
        **overrides,
    )
    gw = Gateway(cfg, **(gateway_kwargs or {}))
    async with asyncio.timeout(TIMEOUT):
        await gw.start()
    try:
        yield gw
    finally:
        async with asyncio.timeout(TIMEOUT):
            await gw.stop()


class RawClient:
    """A thin JSON-RPC client over a plain websockets connection, for exact-frame tests."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self._next_id = 0

    async def send(self, message: Any) -> None:
        await self.ws.send(message if isinstance(message, str) else json.dumps(message))

    async def recv(self, timeout: float = TIMEOUT) -> Any:
        async with asyncio.timeout(timeout):
            return json.loads(await self.ws.recv())

    async def request(self, method: str, params: Any = None, *, id: Any = None) -> Any:
        """Send a request (with the next free integer id unless given); return its id."""
        if id is None:
            self._next_id += 1
            id = self._next_id
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": id}
        if params is not None:
            message["params"] = params
        await self.send(message)
        return id

    async def call(self, method: str, params: Any = None, *, id: Any = None) -> dict[str, Any]:
        """Send a request and return its response, skipping notifications."""
        id = await self.request(method, params, id=id)
        while True:
            frame = await self.recv()
            if isinstance(frame, dict) and frame.get("id") == id and "method" not in frame:
                return frame

    async def stream(
        self, method: str, params: Any = None, *, id: Any = None
    ) -> tuple[str, list[dict[str, Any]], dict[str, Any]]:
        """Call a streaming method: (joined text, delta params, final response)."""
        id = await self.request(method, params, id=id)
        deltas = []
        while True:
            frame = await self.recv()
            if frame.get("method") == "stream.delta" and frame["params"]["id"] == id:
                deltas.append(frame["params"])
            elif frame.get("id") == id and "method" not in frame:
                return "".join(d.get("text", "") for d in deltas), deltas, frame


@contextlib.asynccontextmanager
async def raw_client(
    gw: Gateway, token: str | None = "tok-alice", **kwargs: Any
) -> AsyncIterator[RawClient]:
    """A connected :class:`RawClient`, authenticated by header unless ``token`` is None."""
    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with asyncio.timeout(TIMEOUT):
        ws = await connect(gw.ws_url, additional_headers=headers, **kwargs)
    try:
        yield RawClient(ws)
    finally:
        await ws.close()


def assert_positions(deltas: list[dict[str, Any]]) -> None:
    """Delta seqs are positions: they start at 0 or later and strictly increase (merging skips)."""
    seqs = [d["seq"] for d in deltas]
    assert all(isinstance(q, int) for q in seqs), seqs
    assert seqs == sorted(set(seqs)) and (not seqs or seqs[0] >= 0), seqs


async def until_closed(client: RawClient) -> tuple[list[Any], int | None]:
    """Every frame the server still sends, and the close code it ends with."""
    frames = []
    async with asyncio.timeout(TIMEOUT):
        try:
            while True:
                frames.append(json.loads(await client.ws.recv()))
        except ConnectionClosed:
            pass
    return frames, client.ws.close_code
