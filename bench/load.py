"""Client load for bench/run.py: one process drives many WebSocket connections.

The client is a small WebSocket implementation on ``asyncio.Protocol`` (not
the ``websockets`` client) so that the load processes, which share the two
cores with the server under test, spend as little CPU per frame as possible:
a frame is parsed with a few slicing operations and its JSON with orjson.
Client frames are masked with an all-zero key (valid framing; the server
unmasks as usual, the XOR is just a no-op).

Run by bench/run.py, controlled through stdin/stdout lines:

  -> READY {...}    all connections are open and made their setup call
  <- MORE           (with --waves) open the next wave  -> READY {...}
  <- GO             start the workload
  <- MARK           snapshot the counters          -> MARK {...}
  <- STOP           stop the workload (flood/rpc)
  -> DONE           results written to --out (JSON)

Scenarios:
  flood  each connection calls chat.postChat back to back (test a)
  rpc    each connection calls chat.getCurrentModel back to back (test c)
  paced  each connection, after a random start offset within --ramp seconds,
         calls chat.postChat --replies times back to back and records, for
         every word received, its lateness against the ideal schedule
         first_delta_arrival + word_index / tokens_per_second (test b).
         Stops by itself at --deadline seconds after GO.
  idle   connections just stay open (for ad-hoc probes; run.py measures
         memory, test d, on the paced connections before GO)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import random
import resource
import sys
import threading
import time
from typing import Any

import orjson

MASK = b"\x00\x00\x00\x00"
MESSAGE = "How fast can you stream this answer to me?"
perf = time.perf_counter


class HandshakeError(Exception):
    pass


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


class WSClient(asyncio.Protocol):
    """A minimal RFC 6455 client: text frames in and out, pings answered, close handled."""

    def __init__(self, host: str, port: int, path: str, token: str | None, on_text: Any) -> None:
        loop = asyncio.get_running_loop()
        self.host, self.port, self.path, self.token = host, port, path, token
        self.on_text = on_text
        self.handshake: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.close_code: int | None = None
        self.open = False
        self.buf = bytearray()
        self.frags: list[bytes] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {self.path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
        if self.token:
            lines.append(f"Authorization: Bearer {self.token}")
        transport.write(("\r\n".join(lines) + "\r\n\r\n").encode())  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > 65536:
                    self._fail(HandshakeError("oversized handshake response"))
                return
            status = bytes(buf[: buf.find(b"\r\n")])
            del buf[: end + 4]
            if b" 101 " not in status + b" ":
                self._fail(HandshakeError(status.decode(errors="replace")))
                return
            self.open = True
            if not self.handshake.done():
                self.handshake.set_result(None)
        self._parse()

    def _parse(self) -> None:
        buf = self.buf
        n = len(buf)
        pos = 0
        while n - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            length = b1 & 0x7F
            hdr = 2
            if length == 126:
                if n - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                hdr = 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                hdr = 10
            if b1 & 0x80:  # servers never mask; treat as a protocol error
                self._fail(HandshakeError("masked frame from server"))
                return
            end = pos + hdr + length
            if end > n:
                break
            payload = bytes(buf[pos + hdr : end])
            pos = end
            opcode = b0 & 0x0F
            fin = b0 & 0x80
            if opcode == 1 or opcode == 2:
                if fin:
                    self.on_text(payload)
                else:
                    self.frags = [payload]
            elif opcode == 0:
                self.frags.append(payload)
                if fin:
                    whole = b"".join(self.frags)
                    self.frags = []
                    self.on_text(whole)
            elif opcode == 9:  # ping -> pong
                self._write_frame(0x8A, payload)
            elif opcode == 8:
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self._write_frame(0x88, payload[:2])
                if self.transport is not None:
                    self.transport.close()
                break
        if pos:
            del buf[:pos]

    def _write_frame(self, head: int, payload: bytes) -> None:
        n = len(payload)
        if n < 126:
            header = bytes((head, 0x80 | n))
        elif n < 65536:
            header = bytes((head, 0x80 | 126)) + n.to_bytes(2, "big")
        else:
            header = bytes((head, 0x80 | 127)) + n.to_bytes(8, "big")
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(header + MASK + payload)

    def send_text(self, payload: bytes) -> None:
        self._write_frame(0x81, payload)

    def close(self) -> None:
        if self.open:
            self._write_frame(0x88, (1000).to_bytes(2, "big"))
        if self.transport is not None:
            self.transport.close()

    def _fail(self, exc: Exception) -> None:
        if not self.handshake.done():
            self.handshake.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        if not self.handshake.done():
            self.handshake.set_exception(exc or HandshakeError("connection lost in handshake"))
        if not self.closed.done():
            self.closed.set_result(None)
        self.on_text(None)


class Stats:
    def __init__(self) -> None:
        self.frames = 0  # stream.delta frames
        self.words = 0  # words carried by those frames
        self.streams = 0  # completed streams (final response received)
        self.calls = 0  # completed non-streaming calls
        self.errors: dict[str, int] = {}
        self.seq_gaps = 0  # deltas whose seq did not increase (a protocol violation)
        self.lateness_ms: list[float] = []
        self.ttft_ms: list[float] = []
        self.gap_excess_ms: list[float] = []

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        return {
            "t": perf(),
            "cpu": cpu_seconds(),
            "frames": self.frames,
            "words": self.words,
            "streams": self.streams,
            "calls": self.calls,
            "errors": dict(self.errors),
        }


class _Stream:
    __slots__ = ("done", "first", "last", "next_seq", "sent", "words")

    def __init__(self, done: asyncio.Future[Any], sent: float) -> None:
        self.done = done
        self.sent = sent
        self.first: float | None = None
        self.last = 0.0
        self.words = 0
        self.next_seq = 0


class Conn:
    """One JSON-RPC connection: calls by id, stream.delta bookkeeping."""

    def __init__(self, stats: Stats, *, interval: float | None = None) -> None:
        self.stats = stats
        self.interval = interval  # seconds per token for lateness (paced); None = don't time
        self.ws: WSClient | None = None
        self.next_id = 0
        self.pending: dict[Any, asyncio.Future[Any]] = {}
        self.streams: dict[Any, _Stream] = {}
        self.loop = asyncio.get_running_loop()

    async def connect(self, host: str, port: int, path: str, token: str | None) -> None:
        _, ws = await self.loop.create_connection(
            lambda: WSClient(host, port, path, token, self._on_text), host, port
        )
        self.ws = ws
        await ws.handshake

    def _on_text(self, payload: bytes | None) -> None:
        if payload is None:  # connection lost: fail everything waiting
            for fut in list(self.pending.values()):
                if not fut.done():
                    fut.set_exception(ConnectionError("closed"))
            for st in list(self.streams.values()):
                if not st.done.done():
                    st.done.set_exception(ConnectionError("closed"))
            self.pending.clear()
            self.streams.clear()
            return
        msg = orjson.loads(payload)
        if type(msg) is not dict:
            self.stats.error("batch")
            return
        params = msg.get("params")
        if params is not None and msg.get("method") == "stream.delta":
            now = perf()
            found = self.streams.get(params["id"])
            if found is None:
                self.stats.error("orphan-delta")
                return
            st = found
            stats = self.stats
            # seq is the position of the frame's last piece: it skips where pieces
            # merged, but must never repeat or go back.
            if params["seq"] < st.next_seq:
                stats.seq_gaps += 1
            st.next_seq = params["seq"] + 1
            k = len(params["text"].split())
            stats.frames += 1
            stats.words += k
            interval = self.interval
            if interval is not None and k:
                if st.first is None:
                    st.first = now
                    stats.ttft_ms.append((now - st.sent) * 1000.0)
                else:
                    # Gap since the previous frame, less the ideal gap for the words it carries.
                    stats.gap_excess_ms.append((now - st.last - k * interval) * 1000.0)
                st.last = now
                base = st.first
                lat = stats.lateness_ms
                for j in range(st.words, st.words + k):
                    lat.append((now - (base + j * interval)) * 1000.0)
            st.words += k
            return
        id_ = msg.get("id")
        ended = self.streams.pop(id_) if id_ in self.streams else None
        if ended is not None:
            if not ended.done.done():
                ended.done.set_result(msg)
            return
        waiter = self.pending.pop(id_) if id_ in self.pending else None
        if waiter is None:
            self.stats.error("unexpected-frame")
        elif not waiter.done():
            waiter.set_result(msg)

    def _request(self, method: str, params: Any) -> tuple[int, bytes]:
        self.next_id += 1
        id_ = self.next_id
        body = {"jsonrpc": "2.0", "method": method, "id": id_}
        if params is not None:
            body["params"] = params
        return id_, orjson.dumps(body)

    async def call(self, method: str, params: Any = None) -> Any:
        assert self.ws is not None
        id_, frame = self._request(method, params)
        fut = self.loop.create_future()
        self.pending[id_] = fut
        self.ws.send_text(frame)
        msg = await fut
        if "error" in msg:
            self.stats.error(f"rpc{msg['error'].get('code')}")
            raise RuntimeError(f"{method}: {msg['error']}")
        return msg["result"]

    async def stream(self, method: str, params: Any) -> dict[str, Any]:
        assert self.ws is not None
        id_, frame = self._request(method, params)
        st = _Stream(self.loop.create_future(), perf())
        self.streams[id_] = st
        self.ws.send_text(frame)
        msg = await st.done
        if "error" in msg:
            self.stats.error(f"rpc{msg['error'].get('code')}")
            raise RuntimeError(f"{method}: {msg['error']}")
        self.stats.streams += 1
        return {"words": st.words, "result": msg["result"]}

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()


async def open_conns(
    *,
    host: str,
    port: int,
    path: str,
    tokens: list[str],
    stats: Stats,
    setup: tuple[str, Any] | None,
    concurrency: int,
    timeout: float,
    interval: float | None = None,
) -> tuple[list[Conn], int]:
    """Open one connection per token, ``concurrency`` handshakes at a time, then the setup call."""
    sem = asyncio.Semaphore(concurrency)
    conns: list[Conn] = []
    failed = 0

    async def one(token: str) -> None:
        nonlocal failed
        async with sem:
            for attempt in range(3):
                conn = Conn(stats, interval=interval)
                try:
                    async with asyncio.timeout(timeout):
                        await conn.connect(host, port, path, token)
                        if setup is not None:
                            await conn.call(*setup)
                    conns.append(conn)
                    return
                except (OSError, HandshakeError, RuntimeError, TimeoutError) as exc:
                    conn.close()
                    stats.error(f"connect:{type(exc).__name__}")
                    await asyncio.sleep(0.5 * (attempt + 1))
            failed += 1

    await asyncio.gather(*(one(t) for t in tokens))
    return conns, failed


async def _flood(conn: Conn, stop: asyncio.Event, message: str) -> None:
    while not stop.is_set():
        try:
            await conn.stream("chat.postChat", [message])
        except (RuntimeError, ConnectionError):
            if conn.ws is None or not conn.ws.open:
                return
            await asyncio.sleep(0.05)


async def _rpc(conn: Conn, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            await conn.call("chat.getCurrentModel")
        except (RuntimeError, ConnectionError):
            if conn.ws is None or not conn.ws.open:
                return
            await asyncio.sleep(0.05)
        else:
            conn.stats.calls += 1


async def _paced(conn: Conn, message: str, replies: int, ramp: float, results: list) -> None:
    await asyncio.sleep(random.uniform(0.0, ramp))
    for _ in range(replies):
        try:
            out = await conn.stream("chat.postChat", [message])
        except (RuntimeError, ConnectionError):
            return
        results.append(out["words"])


async def _wait_all(tasks: list[asyncio.Task[Any]]) -> None:
    if tasks:
        await asyncio.wait(tasks)


def _emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def main(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[str] = asyncio.Queue()

    def reader() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(commands.put_nowait, line.strip())
        loop.call_soon_threadsafe(commands.put_nowait, "EOF")

    threading.Thread(target=reader, daemon=True).start()

    stats = Stats()
    tokens = [f"t{i}" for i in range(args.first_user, args.first_user + args.count)]
    waves = [int(x) for x in args.waves.split(",")] if args.waves else [args.count]
    if sum(waves) != args.count:
        raise SystemExit("--waves must add up to --count")
    interval = 1.0 / args.tps if args.scenario == "paced" else None
    conns: list[Conn] = []
    failed = 0
    first = 0
    for i, size in enumerate(waves):
        if i:  # wait for the go-ahead to open the next wave
            while (cmd := await commands.get()) != "MORE":
                if cmd in ("STOP", "EOF"):
                    return
        t0 = perf()
        opened, lost = await open_conns(
            host=args.host,
            port=args.port,
            path="/ws",
            tokens=tokens[first : first + size],
            stats=stats,
            setup=("chat.setModel", [args.model]),
            concurrency=args.concurrency,
            timeout=args.timeout,
            interval=interval,
        )
        first += size
        conns += opened
        failed += lost
        _emit(
            "READY "
            + orjson.dumps(
                {
                    "connected": len(opened),
                    "failed": lost,
                    "seconds": perf() - t0,
                    "errors": stats.errors,
                }
            ).decode()
        )

    marks: list[dict[str, Any]] = []
    result: dict[str, Any] = {"connected": len(conns), "failed": failed}
    while True:
        cmd = await commands.get()
        if cmd == "GO":
            break
        if cmd in ("STOP", "EOF"):
            cmd = "QUIT"
            break
    stop = asyncio.Event()
    tasks: list[asyncio.Task[Any]] = []
    words_per_stream: list[int] = []
    start = stats.snapshot()
    if cmd == "GO":
        if args.scenario == "flood":
            tasks = [loop.create_task(_flood(c, stop, args.message)) for c in conns]
        elif args.scenario == "rpc":
            tasks = [loop.create_task(_rpc(c, stop)) for c in conns]
        elif args.scenario == "paced":
            tasks = [
                loop.create_task(_paced(c, args.message, args.replies, args.ramp, words_per_stream))
                for c in conns
            ]
        deadline = loop.time() + args.deadline
        all_done = loop.create_task(_wait_all(tasks))
        paced = args.scenario == "paced"
        while not (paced and all_done.done()):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            cmd_task = loop.create_task(commands.get())
            finished, _ = await asyncio.wait(
                {cmd_task, all_done} if paced else {cmd_task},
                timeout=remaining,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if cmd_task not in finished:
                cmd_task.cancel()
                if all_done in finished:
                    break
                continue
            cmd = cmd_task.result()
            if cmd == "MARK":
                snap = stats.snapshot()
                marks.append(snap)
                _emit("MARK " + orjson.dumps(snap).decode())
            elif cmd in ("STOP", "EOF"):
                break
        all_done.cancel()
    end = stats.snapshot()
    stop.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    closed_by_server: dict[str, int] = {}
    for c in conns:
        if c.ws is not None and c.ws.close_code is not None:
            code = str(c.ws.close_code)
            closed_by_server[code] = closed_by_server.get(code, 0) + 1
    result.update(
        start=start,
        end=end,
        marks=marks,
        seq_gaps=stats.seq_gaps,
        close_codes=closed_by_server,
        words_per_stream=words_per_stream,
        lateness_ms=[round(x, 3) for x in stats.lateness_ms],
        ttft_ms=[round(x, 3) for x in stats.ttft_ms],
        gap_excess_ms=[round(x, 3) for x in stats.gap_excess_ms],
    )
    with open(args.out, "wb") as fh:
        fh.write(orjson.dumps(result))
    for c in conns:
        c.close()
    await asyncio.sleep(0.2)
    _emit("DONE")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="bench client load (driven by bench/run.py)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--scenario", choices=("flood", "rpc", "paced", "idle"), required=True)
    p.add_argument("--first-user", type=int, default=0)
    p.add_argument("--count", type=int, required=True, help="connections (one user each)")
    p.add_argument("--model", default="offline-fast")
    p.add_argument("--message", default=MESSAGE)
    p.add_argument("--tps", type=float, default=20.0, help="paced: tokens per second")
    p.add_argument("--replies", type=int, default=3, help="paced: streams per connection")
    p.add_argument("--ramp", type=float, default=1.0, help="paced: spread of stream starts (s)")
    p.add_argument("--deadline", type=float, default=600.0, help="seconds after GO to give up")
    p.add_argument(
        "--waves",
        help="open the connections in waves of these sizes (a,b,...); "
        "READY after each, MORE to open the next",
    )
    p.add_argument("--concurrency", type=int, default=32, help="handshakes in flight")
    p.add_argument("--timeout", type=float, default=60.0, help="per connection setup (s)")
    p.add_argument("--out", required=True)
    return p.parse_args(argv)


if __name__ == "__main__":
    raise_nofile()
    asyncio.run(main(parse_args()))
