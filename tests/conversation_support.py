"""Helpers for the conversation tests: a gateway on SQLite or PostgreSQL, fresh per test."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

from gateway.config import Config, ConversationsConfig
from gateway.server.app import Gateway
from tests.postgres import PostgresServer
from tests.support import RawClient, gateway_server

__all__ = [
    "BACKENDS",
    "Backend",
    "PatientClient",
    "call_ok",
    "fresh_database",
    "gateway_on",
    "send",
]

BACKENDS = ("sqlite", "postgres")
_counter = itertools.count()


@dataclasses.dataclass
class Backend:
    """Where a test's conversations live: ``url`` for PostgreSQL, else ``data_dir``."""

    name: str
    url: str | None = None
    data_dir: str | None = None

    def config(self, **conversations: Any) -> Config:
        conv = ConversationsConfig(url=self.url, **conversations)
        return Config(conversations=conv, data_dir=self.data_dir)


async def fresh_database(pg: PostgresServer) -> str:
    """A new empty database on the test server; its URL."""
    name = f"t{next(_counter)}_{id(pg) % 10000}"
    async with asyncio.timeout(20):
        conn = await asyncpg.connect(pg.url())
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
    return pg.url(name)


@contextlib.asynccontextmanager
async def gateway_on(backend: Backend, **overrides: Any) -> AsyncIterator[Gateway]:
    """A real gateway whose conversations live on ``backend``; ``conversations=`` takes a
    dict of ConversationsConfig fields."""
    conv = overrides.pop("conversations", {})
    base = backend.config(**conv)
    async with gateway_server(
        conversations=base.conversations, data_dir=base.data_dir, **overrides
    ) as gw:
        yield gw


class PatientClient(RawClient):
    """A RawClient that waits up to a minute per frame: for tests that load a shared,
    busy machine with hundreds of users at once (the wait is bounded all the same)."""

    async def recv(self, timeout: float = 60.0) -> Any:
        return await super().recv(timeout)


async def call_ok(client: RawClient, method: str, params: Any = None) -> Any:
    """The result of a call that must succeed."""
    response = await client.call(method, params)
    assert "result" in response, response
    return response["result"]


async def send(client: RawClient, method: str, params: dict[str, Any]) -> tuple[str, dict]:
    """A streaming conversation call that must succeed: (text, result)."""
    text, _, final = await client.stream(method, params)
    assert "result" in final, final
    return text, final["result"]
