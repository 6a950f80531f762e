"""Fake model providers: real HTTP/1.1 servers on 127.0.0.1 speaking each provider's SSE format.

Use them with the real SDKs (no patching)::

    async with OpenAIFake() as fake:               # or AnthropicFake()
        fake.script(Reply(text=["Hel", "lo"]), Reply(status=503))
        config = fake.model_config("gpt", fallbacks=("offline",))
        router = ModelRouter([config, ...], env=fake.env)
        ...
        fake.requests[0].json["stream_options"]    # what the SDK sent
        record = await fake.finished()             # the last request's response is over
        assert record.disconnected                 # the client hung up before the end

Replies are used in order, one per request; with none left the fake sends
``fake.default``. A request carrying a key other than ``fake.api_key`` is
answered 401, as the real API would. Connections are kept alive, as the real
APIs' are: one connection serves request after request, and each
:class:`RecordedRequest` names its ``connection`` (numbered from 1 in the
order they were opened; ``fake.connections`` counts them, and
``fake.open_connections`` those the client has not closed yet). A client that
closes its response early must close the connection (HTTP/1.1 has no other
way to stop a response), which the fake sees at once as end-of-file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import secrets
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, ClassVar, Protocol, Self, TypeVar

from gateway.providers.base import ModelConfig

__all__ = [
    "AnthropicFake",
    "FakeServer",
    "OpenAIFake",
    "RecordedRequest",
    "Reply",
    "collect",
    "shut",
]

T = TypeVar("T")

HOST = "127.0.0.1"
_READ_TIMEOUT = 10.0


@dataclass
class Reply:
    """One scripted response. Text is sent as one text event per piece."""

    text: Sequence[str] = ("Hello", ", world", "!")
    reasoning: Sequence[str] = ()
    """Reasoning pieces sent before the text (OpenAI-compatible ``reasoning_content``,
    Anthropic ``thinking_delta``); they count as output tokens."""
    status: int = 200
    """Anything but 200 sends the provider's JSON error body instead of a stream."""
    error: str | None = None
    """Error type for a non-200 status (default: the provider's for the status)."""
    message: str | None = None
    """Error message text (default: a generic one)."""
    headers: Mapping[str, str] = field(default_factory=dict)
    """Extra response headers, e.g. ``{"retry-after": "7"}``."""
    # Timing (seconds)
    delay: float = 0.0
    """Before the response head (a slow or silent upstream)."""
    interval: float = 0.0
    """Between two text events."""
    # Endings
    finish: str | None = None
    """The provider's finish/stop reason literal (default: its normal end)."""
    usage: bool = True
    """OpenAI: send the usage chunk when asked to (compatible servers may not)."""
    prompt_tokens: int = 17
    completion_tokens: int | None = None
    """Default: the number of text pieces."""
    drop_after: int | None = None
    """Abort the connection (no end of body) after this many text events."""
    hang_after: int | None = None
    """Go silent after this many text events, until the client leaves."""
    malformed_after: int | None = None
    """Send an event whose data is not JSON after this many text events."""
    stream_error: str | None = None
    """After the text, send an in-stream error event of this type."""
    truncate: bool = False
    """End the body cleanly but without the end marker ([DONE] / message_stop)."""

    @property
    def completion(self) -> int:
        """Output tokens reported in the usage (default: one per text and reasoning piece)."""
        if self.completion_tokens is None:
            return len(self.text) + len(self.reasoning)
        return self.completion_tokens


@dataclass
class RecordedRequest:
    """One request as the fake saw it, and how its response ended."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    connection: int = 0
    """Which TCP connection carried it (1 = the first the fake accepted)."""
    reply: Reply | None = None
    completed: bool = False
    """The whole response was written."""
    disconnected: bool = False
    """The client closed the connection before the response was complete."""
    dropped: bool = False
    """The fake aborted the connection mid-stream, as scripted (``drop_after``)."""
    finished: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class _ClientGone(Exception):
    """The client closed the connection."""


class _Exchange:
    """Writing one response, watching for the client leaving meanwhile."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self._eof = asyncio.ensure_future(reader.read(1))

    async def pause(self, seconds: float) -> None:
        if seconds > 0:
            timeout = None if math.isinf(seconds) else seconds
            await asyncio.wait({self._eof}, timeout=timeout)
        if self._eof.done():
            # Clients do not pipeline: anything read while a response runs is end-of-file.
            raise _ClientGone

    async def write(self, data: bytes) -> None:
        await self.pause(0)
        self.writer.write(data)
        try:
            await self.writer.drain()
        except ConnectionError:
            raise _ClientGone from None

    async def chunk(self, data: bytes) -> None:
        """One piece of a chunked body."""
        await self.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

    async def close(self) -> bytes:
        """Stop watching; the bytes of a next request read meanwhile, if any."""
        self._eof.cancel()
        # Wait for the read to let go of the stream before the next request is read.
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            return await self._eof
        return b""


class FakeServer:
    """An asyncio HTTP/1.1 server answering one endpoint with scripted replies."""

    path: ClassVar[str]
    provider: ClassVar[str]
    base_path: ClassVar[str] = ""
    """What the SDK's base_url needs after host:port."""
    request_id_header: ClassVar[str] = "x-request-id"

    def __init__(self, *, api_key: str | None = None, default: Reply | None = None) -> None:
        self.api_key = api_key or f"sk-fake-{secrets.token_hex(12)}"
        self.default = default or Reply()
        self.requests: list[RecordedRequest] = []
        self._replies: deque[Reply] = deque()
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.StreamWriter, asyncio.Task[None]] = {}
        self._arrived = asyncio.Event()
        self.port = 0
        self.connections = 0
        """TCP connections accepted so far."""

    # Set-up

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._accept, HOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        # Hanging up (rather than cancelling handlers) lets each handler end on its own.
        for writer in self._connections:
            writer.transport.abort()
        async with asyncio.timeout(5):
            await asyncio.gather(*self._connections.values(), return_exceptions=True)
            await self._server.wait_closed()

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}{self.base_path}"

    @property
    def open_connections(self) -> int:
        """TCP connections open now (the client has not closed them)."""
        return len(self._connections)

    async def all_closed(self, *, timeout: float = 5.0) -> None:
        """Return once every connection the fake accepted has been closed by the client."""
        async with asyncio.timeout(timeout):
            while self._connections:
                await asyncio.sleep(0.01)

    @property
    def env(self) -> dict[str, str]:
        """An environment holding this fake's key under :attr:`key_env`."""
        return {self.key_env: self.api_key}

    @property
    def key_env(self) -> str:
        return f"FAKE_{self.provider.upper()}_KEY_{self.port}"

    def model_config(self, name: str = "fake", **overrides: Any) -> ModelConfig:
        """A model served by this fake (key in :attr:`env`); ``overrides`` set other fields."""
        fields: dict[str, Any] = {
            "name": name,
            "provider": self.provider,
            "model": f"{self.provider}-fake-model",
            "base_url": self.base_url,
            "api_key_env": self.key_env,
            "description": f"{self.provider} fake",
        }
        fields.update(overrides)
        return ModelConfig(**fields)

    def script(self, *replies: Reply) -> None:
        """Queue replies for the next requests, in order."""
        self._replies.extend(replies)

    async def received(self, count: int = 1, *, timeout: float = 5.0) -> RecordedRequest:
        """The ``count``-th request, once it has arrived (its response may still be running)."""
        async with asyncio.timeout(timeout):
            while len(self.requests) < count:
                self._arrived.clear()
                await self._arrived.wait()
        return self.requests[count - 1]

    async def finished(self, index: int = -1, *, timeout: float = 5.0) -> RecordedRequest:
        """Request ``index`` once its response is over (written whole, or abandoned)."""
        async with asyncio.timeout(timeout):
            await self.received(timeout=timeout)
            record = self.requests[index]
            await record.finished.wait()
        return record

    # The provider's wire format (subclasses)

    def presented_key(self, headers: Mapping[str, str]) -> str:
        raise NotImplementedError

    def error_body(self, status: int, kind: str | None, message: str | None) -> dict[str, Any]:
        raise NotImplementedError

    def events(self, reply: Reply, request: Any) -> tuple[list[bytes], list[bytes], list[bytes]]:
        """Opening events, one event per text piece, and closing events."""
        raise NotImplementedError

    def stream_error_event(self, kind: str) -> bytes:
        raise NotImplementedError

    malformed_event: ClassVar[bytes] = b'data: {"choices": [{"delta": \n\n'

    # HTTP

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[writer] = task
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            del self._connections[writer]
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        connection = self.connections
        leftover = b""
        # Keep-alive: request after request until the client closes (or the fake shuts down).
        while not writer.is_closing():
            head = leftover + await reader.readuntil(b"\r\n\r\n")
            leftover = await self._exchange(head, connection, reader, writer)

    async def _exchange(
        self,
        head: bytes,
        connection: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bytes:
        """Answer the request whose head is ``head``; the bytes of the next one read meanwhile."""
        async with asyncio.timeout(_READ_TIMEOUT):
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
        record = RecordedRequest(method, path, headers, body, connection=connection)
        self.requests.append(record)
        self._arrived.set()
        exchange = _Exchange(reader, writer)
        try:
            await self._respond(record, exchange)
            record.completed = not record.dropped
        except _ClientGone:
            record.disconnected = True
            writer.transport.abort()
        finally:
            leftover = await exchange.close()
            record.finished.set()
        return leftover

    async def _respond(self, record: RecordedRequest, exchange: _Exchange) -> None:
        if record.method != "POST" or record.path.split("?")[0] != self.path:
            await self._send_json(exchange, 404, self.error_body(404, None, "no such endpoint"), {})
            return
        if self.presented_key(record.headers) != self.api_key:
            await self._send_json(exchange, 401, self.error_body(401, None, None), {})
            return
        reply = self._replies.popleft() if self._replies else self.default
        record.reply = reply
        await exchange.pause(reply.delay)
        if reply.status != 200:
            body = self.error_body(reply.status, reply.error, reply.message)
            await self._send_json(exchange, reply.status, body, reply.headers)
            return
        await self._stream(reply, record, exchange)

    async def _send_json(
        self, exchange: _Exchange, status: int, body: Any, headers: Mapping[str, str]
    ) -> None:
        data = json.dumps(body).encode()
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        await exchange.write(
            f"HTTP/1.1 {status} Fake\r\ncontent-type: application/json\r\n"
            f"content-length: {len(data)}\r\n{self.request_id_header}: req_fake\r\n"
            f"{extra}\r\n".encode()
            + data
        )

    async def _stream(self, reply: Reply, record: RecordedRequest, exchange: _Exchange) -> None:
        extra = "".join(f"{k}: {v}\r\n" for k, v in reply.headers.items())
        await exchange.write(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
            f"transfer-encoding: chunked\r\ncache-control: no-cache\r\n"
            f"{self.request_id_header}: req_fake\r\n{extra}\r\n".encode()
        )
        opening, pieces, closing = self.events(reply, record.json)
        for event in opening:
            await exchange.chunk(event)
        for i in range(len(pieces) + 1):
            if i == reply.drop_after:
                exchange.writer.transport.abort()
                record.dropped = True
                return
            if i == reply.hang_after:
                await exchange.pause(math.inf)
            if i == reply.malformed_after:
                await exchange.chunk(self.malformed_event)
                await exchange.write(b"0\r\n\r\n")
                return
            if i < len(pieces):
                await exchange.chunk(pieces[i])
                await exchange.pause(reply.interval)
        if reply.stream_error is not None:
            closing = [self.stream_error_event(reply.stream_error)]
        elif reply.truncate:
            closing = []
        for event in closing:
            await exchange.chunk(event)
        await exchange.write(b"0\r\n\r\n")


def sse(data: Any, event: str | None = None) -> bytes:
    """One server-sent event; ``data`` is JSON-encoded unless it is already a string."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    prefix = f"event: {event}\n" if event else ""
    return f"{prefix}data: {text}\n\n".encode()


async def collect(stream: AsyncIterator[T], *, timeout: float = 5.0) -> list[T]:
    """Everything ``stream`` yields, failing if that takes longer than ``timeout``."""
    async with asyncio.timeout(timeout):
        return [item async for item in stream]


class _Closeable(Protocol):
    async def aclose(self) -> None: ...


async def shut(*closeables: _Closeable, timeout: float = 5.0) -> None:
    """Close providers, routers or streams, failing if that takes longer than ``timeout``."""
    async with asyncio.timeout(timeout):
        for closeable in closeables:
            await closeable.aclose()


# Imported last: the provider fakes build on the classes above.
from .anthropic_server import AnthropicFake  # noqa: E402
from .openai_server import OpenAIFake  # noqa: E402
