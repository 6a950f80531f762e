"""websockets' server connection, bounded: what a client makes the server hold, and bad HTTP.

:class:`GatewaySocket` is the ``create_connection`` of :func:`serve`. It
stops reading from a client while the transport's write buffer is above its
high-water mark (``write_limit``, 32 KiB): websockets answers every ping with
a pong written straight to that buffer, so a client sending pings without
reading could otherwise make the server hold any amount of pongs. Reading
resumes once the buffer has drained below the low-water mark (and
websockets' own pause for a full message queue is over). How long the buffer
has stayed full is exposed for the send watchdog, which closes with 4000.

Its protocol answers an HTTP request it cannot parse (a body, a non-ASCII
target, a malformed request line) with ``400`` instead of dropping it, and
logs one line per plain HTTP answer or refused handshake (websockets' own
"HTTP response sent (403 Forbidden)"; the "connection closed" after it goes
to DEBUG), so refused requests cannot flood the log.
"""

from __future__ import annotations

import asyncio
import http
import logging
from collections.abc import Generator
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import (
    HeaderLineTooLong,
    InvalidMessage,
    RequestLineTooLong,
    TooManyHeaders,
)
from websockets.http11 import Request, Response
from websockets.protocol import CONNECTING, Protocol
from websockets.server import ServerProtocol

__all__ = ["GatewaySocket"]


class _QuietInfo(logging.LoggerAdapter[Any]):
    """A logger whose INFO lines go out at DEBUG."""

    def log(self, level: int, msg: Any, *args: Any, **kwargs: Any) -> None:
        super().log(logging.DEBUG if level == logging.INFO else level, msg, *args, **kwargs)


class _StrictHttpProtocol(ServerProtocol):
    """ServerProtocol answering unparsable requests with 400 (mirrors websockets 17's parse)."""

    def parse(self) -> Generator[None]:
        if self.state is CONNECTING:
            try:
                request = yield from Request.parse(self.reader.read_line)
            except EOFError as exc:
                # The client went away mid-request: nobody to answer.
                self.handshake_exc = InvalidMessage("connection closed during the request")
                self.handshake_exc.__cause__ = exc
                self.send_eof()
                self.parser = self.discard()
                next(self.parser)
                yield
            except Exception as exc:
                self.handshake_exc = exc
                if isinstance(exc, RequestLineTooLong):
                    status = http.HTTPStatus.REQUEST_URI_TOO_LONG
                elif isinstance(exc, HeaderLineTooLong | TooManyHeaders):
                    status = http.HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
                else:
                    # A body, a transfer coding, a non-ASCII target, not HTTP/1.x at all.
                    status = http.HTTPStatus.BAD_REQUEST
                self.send_response(self.reject(status, f"{status.phrase}.\n"))
                yield
            self.events.append(request)
        yield from Protocol.parse(self)

    def send_response(self, response: Response) -> None:
        super().send_response(response)
        if response.status_code != http.HTTPStatus.SWITCHING_PROTOCOLS:
            self.logger = _QuietInfo(self.logger, {})


class GatewaySocket(ServerConnection):
    """A server connection that stops reading while its write buffer is full."""

    def __init__(self, protocol: ServerProtocol, *args: Any, **kwargs: Any) -> None:
        # Swapped before any byte arrives: the parser restarts with the strict parse.
        protocol.__class__ = _StrictHttpProtocol
        protocol.parser = protocol.parse()
        next(protocol.parser)
        super().__init__(protocol, *args, **kwargs)
        self._queue_full = False
        self.write_blocked_since: float | None = None
        """Loop time since when the write buffer has been above its high-water mark."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.recv_messages.pause = self._pause_for_queue
        self.recv_messages.resume = self._resume_for_queue

    def _pause_for_queue(self) -> None:
        self._queue_full = True
        self._sync_reading()

    def _resume_for_queue(self) -> None:
        self._queue_full = False
        self._sync_reading()

    def pause_writing(self) -> None:
        super().pause_writing()
        self.write_blocked_since = self.loop.time()
        self._sync_reading()

    def resume_writing(self) -> None:
        super().resume_writing()
        self.write_blocked_since = None
        self._sync_reading()

    def _sync_reading(self) -> None:
        transport = self.transport
        if transport.is_closing():
            return
        if self._queue_full or self.write_blocked_since is not None:
            transport.pause_reading()
        else:
            transport.resume_reading()
