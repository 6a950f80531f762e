"""What the gateway adds when streaming from an OpenAI-compatible upstream.

    .venv/bin/python bench/providers.py            # full run, about 2 minutes
    .venv/bin/python bench/providers.py --quick    # smoke run, under 30 s
    .venv/bin/python bench/providers.py --profile /tmp/gw   # plus a profiled gateway run

Three kinds of process, all on 127.0.0.1:

- a fake OpenAI-compatible server (this file, ``_fake`` mode, its own process).
  Every ``POST /<mode>/v1/chat/completions`` gets the same pre-encoded answer:
  a role chunk, ``--chunks`` content chunks whose text is the fixed token
  ``"tok "``, a finish chunk, a usage chunk and ``data: [DONE]``, as
  ``chat.completion.chunk`` SSE events in HTTP/1.1 chunked encoding,
  keep-alive. ``<mode>`` says how it is written:
  ``burst``: all of it in one write, no delay;
  ``first``: the first content chunk alone, the rest ``--first-gap`` ms later
  in one write (a real model's first token arrives on its own);
  ``paced``: one content chunk every 1/``--tps`` s (a real model's stream);
- the gateway (``python -m gateway serve``), with one ``provider = "openai"``
  model per mode (``bench-<mode>``, ``base_url`` = the fake's ``/<mode>/v1``);
  users pick them with ``chat.setModel``;
- this process, the client: the official ``openai`` SDK (``AsyncOpenAI``,
  ``stream=True``) straight to the fake; a minimal raw HTTP client straight to
  the fake (the floor); a minimal WebSocket JSON-RPC client (asyncio Protocol +
  orjson) to the gateway.

Measured in one run:

1. TTFT, ``--requests`` sequential requests per path, the three paths
   interleaved request by request, each read to its end: send -> first
   content token (SDK: the first chunk with content out of the stream
   iterator; gateway: the first ``stream.delta`` frame parsed by the client).
   In ``first`` and in ``burst`` mode.
2. Throughput: ``--streams`` concurrent back-to-back streams for
   ``--seconds`` after a warm-up, through the gateway and then straight to the
   fake with the SDK, in ``burst`` mode (saturating) and ``paced`` mode (one
   chunk per read). Chunks are counted as occurrences of ``"tok "`` in the
   received text (the gateway merges the deltas of a lagging stream into
   fewer frames). CPU is utime+stime from /proc/<pid>/stat (gateway, fake)
   and ``time.process_time`` (this process, which runs the SDK in the direct
   rows).

The machine may be shared: before each phase the run waits (30 s at most in
all) for other processes to go quiet, and it reports how busy they kept the
cores during each phase.

With ``--profile PREFIX`` a second gateway runs under cProfile (CPU-time
timer), enabled only during a burst and a paced throughput window (SIGUSR1
starts it, SIGUSR2 writes ``PREFIX-<mode>.prof``); selected entries are
printed as shares and per chunk, then the top entries.

Nothing is asserted; every loop is bounded in count and time; every child
process is killed on exit, even on error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import pstats
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import orjson
from procstat import proc_cpu, proc_sys, system_busy

SCRIPT = Path(__file__).resolve()
HERE = SCRIPT.parent
ROOT = HERE.parent
TOKEN = "tok "
UPSTREAM_MODEL = "bench-model"
KEY_ENV = "BENCH_OPENAI_API_KEY"
USERS = 4
MESSAGE = "How fast can you stream this answer to me?"
SYSTEM = "You are a helpful assistant."  # the gateway's default system prompt
perf = time.perf_counter


# --------------------------------------------------------------------------------------------
# The fake OpenAI-compatible server (runs in its own process: `providers.py _fake`)


HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
    b"cache-control: no-cache\r\nx-request-id: req_bench\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)
MODES = ("burst", "first", "paced")
"""How the fake sends an answer, chosen by the first path segment (``/<mode>/v1/...``):

- burst: the whole answer in one write (no delay at all);
- first: the role chunk and the first content chunk, then after ``--first-gap`` ms the rest
  in one write (a real model's first token arrives alone);
- paced: one content chunk every 1/``--tps`` s (a real model's steady stream).
"""


def sse_payloads(chunks: int) -> list[bytes]:
    """The SSE events of one completion: role, contents, finish, usage, DONE."""
    created = int(time.time())

    def event(delta: dict[str, Any] | None, finish: str | None = None, usage: Any = None) -> bytes:
        choices = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
        body = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": created,
            "model": UPSTREAM_MODEL,
            "system_fingerprint": "fp_bench",
            "choices": choices if delta is not None else [],
            "usage": usage,
        }
        return b"data: " + orjson.dumps(body) + b"\n\n"

    usage = {"prompt_tokens": 20, "completion_tokens": chunks, "total_tokens": 20 + chunks}
    return [
        event({"role": "assistant", "content": "", "refusal": None}),
        *[event({"content": TOKEN})] * chunks,
        event({}, "stop"),
        event(None, usage=usage),  # the usage chunk has no choices
        b"data: [DONE]\n\n",
    ]


def sse_events(chunks: int) -> list[bytes]:
    """HTTP chunks (chunked encoding) of one completion; the last three events go together."""
    framed = [b"%x\r\n%s\r\n" % (len(e), e) for e in sse_payloads(chunks)]
    return [*framed[:-3], b"".join(framed[-3:]) + b"0\r\n\r\n"]


class _FakeProtocol(asyncio.Protocol):
    events: ClassVar[list[bytes]] = []
    burst: ClassVar[bytes] = b""
    first_gap: ClassVar[float] = 0.02
    interval: ClassVar[float] = 0.02

    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            if b"transfer-encoding: chunked" in head:
                raise RuntimeError("fake: chunked request bodies are not supported")
            length = 0
            i = head.find(b"content-length:")
            if i >= 0:
                j = head.find(b"\r\n", i)
                length = int(head[i + 15 : j if j >= 0 else len(head)])
            if len(self.buf) < end + 4 + length:
                return
            self.buf = self.buf[end + 4 + length :]
            self.respond(head)

    def respond(self, head: bytes) -> None:
        transport = self.transport
        assert transport is not None
        line = head.split(b"\r\n", 1)[0].split(b" ")
        mode = line[1].split(b"/")[1].decode() if len(line) > 2 else ""
        if line[0] != b"post" or not line[1].endswith(b"/chat/completions") or mode not in MODES:
            transport.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
        elif mode == "burst":
            transport.write(self.burst)
        else:
            events = self.events
            transport.write(HEAD + events[0] + events[1])
            loop = asyncio.get_running_loop()
            if mode == "first":
                rest = b"".join(events[2:])
                self.timer = loop.call_later(self.first_gap, transport.write, rest)
            else:
                self.timer = loop.call_later(self.interval, self._pace, 2, loop.time())
        if b"connection: close" in head:
            transport.close()

    def _pace(self, i: int, t0: float) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(self.events[i])
        if i + 1 < len(self.events):
            loop = asyncio.get_running_loop()
            self.timer = loop.call_at(t0 + i * self.interval, self._pace, i + 1, t0)


async def run_fake(port: int, chunks: int, first_gap: float, tps: float) -> None:
    events = sse_events(chunks)
    _FakeProtocol.events = events
    _FakeProtocol.burst = HEAD + b"".join(events)
    _FakeProtocol.first_gap = first_gap
    _FakeProtocol.interval = 1.0 / tps
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_FakeProtocol, "127.0.0.1", port, backlog=1024)
    print(f"fake listening on {server.sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


# --------------------------------------------------------------------------------------------
# Child processes


_children: list[subprocess.Popen[bytes]] = []


def _child_setup() -> None:
    """In every child: die with the parent."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def spawn(cmd: list[str], out: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(out, "wb") as fo, open(out.with_suffix(".err"), "wb") as fe:
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=fo,
            stderr=fe,
            stdin=subprocess.DEVNULL,
            preexec_fn=_child_setup,
        )
    _children.append(proc)
    return proc


async def wait_for_line(
    proc: subprocess.Popen[bytes], out: Path, marker: str, timeout: float
) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(out, errors="replace") as fh:
            lines = fh.read().splitlines()
        for line in lines:
            if marker in line:
                return line
        if proc.poll() is not None:
            break
        await asyncio.sleep(0.05)
    err = out.with_suffix(".err").read_text(errors="replace")[-2000:]
    raise RuntimeError(f"{out.stem} did not start (looked for {marker!r}): {err}")


def stop_process(
    proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, wait: float = 5.0
) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def kill_all() -> None:
    for proc in _children:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)


def self_sys() -> float:
    return os.times().system


class Background:
    """CPU used by processes other than this benchmark's (the machine may be shared)."""

    def __init__(self, pids: list[int], budget: float) -> None:
        self.pids = [os.getpid(), *pids]
        self.budget = budget
        """Seconds left to spend waiting for a quiet machine, for the whole run."""
        self.phases: dict[str, float] = {}

    def snap(self) -> tuple[float, float, float]:
        ours = 0.0
        for pid in self.pids:
            with contextlib.suppress(OSError):
                ours += proc_cpu(pid)
        return perf(), system_busy(), ours

    @staticmethod
    def cores(s0: tuple[float, float, float], s1: tuple[float, float, float]) -> float:
        return max(0.0, (s1[1] - s0[1]) - (s1[2] - s0[2])) / max(s1[0] - s0[0], 1e-9)

    async def quiet(self, threshold: float = 0.3) -> None:
        """Wait (within the budget) until other processes use less than ``threshold`` cores."""
        waited, busy = 0.0, 0.0
        while self.budget > 0:
            s0 = self.snap()
            await asyncio.sleep(1.0)
            busy = self.cores(s0, self.snap())
            self.budget -= 1.0
            waited += 1.0
            if busy < threshold:
                return
        if waited:
            print(f"  other processes still use {busy:.2f} cores; measuring anyway", flush=True)

    @contextlib.asynccontextmanager
    async def phase(self, name: str) -> AsyncIterator[None]:
        await self.quiet()
        s0 = self.snap()
        yield
        self.phases[name] = self.cores(s0, self.snap())

    def report(self) -> None:
        text = ", ".join(f"{name} {cores:.2f}" for name, cores in self.phases.items())
        print(f"\nOther processes on the machine during each phase (cores busy): {text}")


async def start_fake(
    workdir: Path, chunks: int, first_gap: float, tps: float
) -> tuple[subprocess.Popen[bytes], int]:
    out = workdir / "fake.out"
    cmd = [sys.executable, str(SCRIPT), "_fake", "--chunks", str(chunks)]
    cmd += ["--first-gap", str(first_gap), "--tps", str(tps)]
    proc = spawn(cmd, out, dict(os.environ))
    line = await wait_for_line(proc, out, "fake listening on", 20)
    return proc, int(line.rsplit(" ", 1)[1])


GATEWAY_TOML = """\
# Written by bench/providers.py: OpenAI-compatible models served by the local fake, one per
# fake mode (the first path segment of base_url picks it).
default_model = "bench-burst"

[server]
host = "127.0.0.1"

[limits]
connections_per_user = 10000
streams_per_user = 10000
inflight_per_connection = 64
requests_per_second = 1000000.0
request_burst = 1000000
flood_close_after = 1000000
"""

GATEWAY_MODEL = """
[[models]]
name = "bench-{mode}"
provider = "openai"
model = "{upstream}"
base_url = "http://127.0.0.1:{port}/{mode}/v1"
api_key_env = "{key_env}"
context_window = 8192
max_output_tokens = 1024
description = "Local fake OpenAI-compatible server, {mode} mode (bench/providers.py)."
"""

# `gateway serve` under cProfile with a CPU-time timer, profiling only between SIGUSR1
# (enable) and SIGUSR2 (disable, write the next of the comma-separated paths in argv[1], clear).
PROFILE_SNIPPET = """
import cProfile, signal, sys, time
from gateway.cli import main
outs = sys.argv[1].split(",")
prof = cProfile.Profile(time.process_time)
def _on(*_):
    prof.enable()
def _off(*_):
    prof.disable()
    if outs:
        prof.dump_stats(outs.pop(0))
    prof.clear()
signal.signal(signal.SIGUSR1, _on)
signal.signal(signal.SIGUSR2, _off)
sys.exit(main(sys.argv[2:]))
"""


async def start_gateway(
    workdir: Path, fake_port: int, profiles: list[str] | None = None
) -> tuple[subprocess.Popen[bytes], int]:
    config = workdir / "gateway.toml"
    text = GATEWAY_TOML + "".join(
        GATEWAY_MODEL.format(mode=m, upstream=UPSTREAM_MODEL, port=fake_port, key_env=KEY_ENV)
        for m in MODES
    )
    with open(config, "w") as fh:
        fh.write(text)
    env = dict(os.environ)
    env["GATEWAY_API_KEYS"] = ",".join(f"user{i}:bench-key-{i}" for i in range(USERS))
    env[KEY_ENV] = "sk-bench-dummy-key"
    env.pop("GATEWAY_DEFAULT_MODEL", None)
    args = ["serve", "--port", "0", "--config", str(config)]
    if profiles is None:
        cmd = [sys.executable, "-m", "gateway", *args]
    else:
        cmd = [sys.executable, "-c", PROFILE_SNIPPET, ",".join(profiles), *args]
    out = workdir / f"gateway-{time.monotonic_ns()}.out"
    proc = spawn(cmd, out, env)
    line = await wait_for_line(proc, out, "Gateway listening on ws://", 60)
    return proc, int(line.rsplit(":", 1)[1].split("/")[0])


# --------------------------------------------------------------------------------------------
# Clients


@dataclass
class Counters:
    tokens: int = 0
    frames: int = 0
    completed: int = 0
    wrong_length: int = 0
    errors: int = 0


@dataclass
class Call:
    """One call in flight on a WebSocket connection."""

    counters: Counters | None = None
    sent: float = 0.0
    first: float = 0.0
    tokens: int = 0
    frames: int = 0
    seq_ok: bool = True
    done: asyncio.Future[Any] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class WSClient(asyncio.Protocol):
    """A minimal WebSocket JSON-RPC client: one orjson parse per frame, nothing else.

    Client frames are masked with an all-zero key (valid framing; the XOR is a no-op).
    """

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.calls: dict[int, Call] = {}
        self.next_id = 1
        self.user = ""

    @classmethod
    async def connect(cls, port: int, user: int) -> WSClient:
        loop = asyncio.get_running_loop()
        _, client = await loop.create_connection(cls, "127.0.0.1", port)
        assert client.transport is not None
        client.user = f"user{user}"
        client.transport.write(
            (
                f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer bench-key-{user}\r\n\r\n"
            ).encode()
        )
        async with asyncio.timeout(10):
            await client.opened
        return client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        err = ConnectionError("websocket closed")
        if not self.opened.done():
            self.opened.set_exception(err)
        for call in self.calls.values():
            if not call.done.done():
                call.done.set_exception(err)
        self.calls.clear()

    def send(self, payload: bytes, opcode: int = 0x1) -> None:
        n = len(payload)
        if n < 126:
            head = bytes((0x80 | opcode, 0x80 | n))
        elif n < 65536:
            head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
        else:
            head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
        assert self.transport is not None
        self.transport.write(head + b"\x00\x00\x00\x00" + payload)

    def start(self, method: str, params: Any, counters: Counters | None = None) -> Call:
        call_id = self.next_id
        self.next_id += 1
        call = self.calls[call_id] = Call(counters=counters)
        payload = orjson.dumps(
            {"jsonrpc": "2.0", "id": call_id, "method": method, "params": params}
        )
        call.sent = perf()
        self.send(payload)
        return call

    def post_chat(self, counters: Counters | None = None) -> Call:
        return self.start("chat.postChat", {"message": MESSAGE}, counters)

    async def call(self, method: str, params: Any) -> Any:
        async with asyncio.timeout(10):
            reply = await self.start(method, params).done
        if "result" not in reply:
            raise RuntimeError(f"{method} failed: {reply}")
        return reply["result"]

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.opened.done():
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buf[: buf.find(b"\r\n")])
            del buf[: end + 4]
            if b" 101 " not in status:
                self.opened.set_exception(ConnectionError(status.decode(errors="replace")))
                return
            self.opened.set_result(None)
        pos, size = 0, len(buf)
        while size - pos >= 2:
            b0, n = buf[pos], buf[pos + 1] & 0x7F
            head = 2
            if n == 126:
                if size - pos < 4:
                    break
                n, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif n == 127:
                if size - pos < 10:
                    break
                n, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            if size - pos < head + n:
                break
            payload = bytes(buf[pos + head : pos + head + n])
            pos += head + n
            opcode = b0 & 0x0F
            if opcode == 0x1:
                self.on_message(payload)
            elif opcode == 0x9:
                self.send(payload, 0xA)
            elif opcode == 0x8:
                assert self.transport is not None
                self.transport.close()
        del buf[:pos]

    def on_message(self, payload: bytes) -> None:
        message = orjson.loads(payload)
        if message.get("method") == "stream.delta":
            params = message["params"]
            call = self.calls.get(params["id"])
            if call is None:
                return
            if not call.frames:
                call.first = perf()
            if params["seq"] != call.frames:
                call.seq_ok = False
            call.frames += 1
            tokens = params["text"].count(TOKEN)
            call.tokens += tokens
            if call.counters is not None:
                call.counters.tokens += tokens
                call.counters.frames += 1
        elif "id" in message:
            call = self.calls.pop(message["id"], None)
            if call is not None and not call.done.done():
                call.done.set_result(message)

    async def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.send(b"\x03\xe8", 0x8)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    await asyncio.shield(self.closed)
            self.transport.close()


async def set_model(clients: list[WSClient], mode: str) -> None:
    """Point every user of ``clients`` at the model of ``mode`` (sessions are per user)."""
    done: set[str] = set()
    for ws in clients:
        if ws.user not in done:
            assert await ws.call("chat.setModel", {"modelName": f"bench-{mode}"}) is True
            done.add(ws.user)


class RawHTTP(asyncio.Protocol):
    """A minimal keep-alive HTTP/1.1 client for the floor: send -> first content event."""

    FIRST = b'"content":"' + TOKEN.encode() + b'"'
    END = b"data: [DONE]\n\n\r\n0\r\n\r\n"

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.first: asyncio.Future[float] | None = None
        self.end: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        for fut in (self.first, self.end):
            if fut is not None and not fut.done():
                fut.set_exception(ConnectionError("raw http connection closed"))

    def data_received(self, data: bytes) -> None:
        now = perf()
        self.buf += data
        if self.first is not None and not self.first.done() and self.FIRST in self.buf:
            self.first.set_result(now)
        if self.end is not None and self.buf.endswith(self.END):
            self.buf.clear()
            self.end.set_result(None)

    async def request(self, port: int, mode: str, body: bytes) -> tuple[float, float]:
        """(sent, first token) perf_counter times of one completion, read to its end."""
        loop = asyncio.get_running_loop()
        self.first, self.end = loop.create_future(), loop.create_future()
        assert self.transport is not None
        sent = perf()
        self.transport.write(
            b"POST /%s/v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
            b"Authorization: Bearer sk-bench\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (mode.encode(), port, len(body), body)
        )
        first = await self.first
        await self.end
        return sent, first


def request_kwargs() -> dict[str, Any]:
    """What the gateway sends upstream for chat.postChat, as SDK keyword arguments."""
    return {
        "model": UPSTREAM_MODEL,
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": MESSAGE},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 1024,
    }


async def sdk_completion(client: Any, counters: Counters | None = None) -> tuple[float, float, int]:
    """(sent, first token, tokens) of one streamed completion through the openai SDK."""
    sent = perf()
    first = 0.0
    tokens = 0
    stream = await client.chat.completions.create(**request_kwargs())
    try:
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                if not first:
                    first = perf()
                n = chunk.choices[0].delta.content.count(TOKEN)
                tokens += n
                if counters is not None:
                    counters.tokens += n
                    counters.frames += 1
    finally:
        await stream.close()
    return sent, first, tokens


def sdk_client(port: int, mode: str) -> Any:
    import openai

    return openai.AsyncOpenAI(
        api_key="sk-bench-dummy-key", base_url=f"http://127.0.0.1:{port}/{mode}/v1", max_retries=0
    )


# --------------------------------------------------------------------------------------------
# Measurements


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


@dataclass
class Latency:
    name: str
    values: list[float] = field(default_factory=list)


async def measure_ttft(
    mode: str, chunks: int, fake_port: int, gw_port: int, requests: int, warmup: int, budget: float
) -> tuple[Latency, Latency, Latency]:
    """Sequential requests, the three paths interleaved; each read to its end."""
    sdk = sdk_client(fake_port, mode)
    loop = asyncio.get_running_loop()
    _, raw = await loop.create_connection(RawHTTP, "127.0.0.1", fake_port)
    raw_body = orjson.dumps(request_kwargs())
    ws = await WSClient.connect(gw_port, 0)
    await set_model([ws], mode)
    out = Latency("raw HTTP -> fake"), Latency("openai SDK -> fake"), Latency("gateway (WS)")
    deadline = perf() + budget
    try:
        for i in range(warmup + requests):
            if perf() > deadline:
                print(f"  TTFT {mode}: time budget spent after {i - warmup} requests", flush=True)
                break
            async with asyncio.timeout(10):
                sent, first = await raw.request(fake_port, mode, raw_body)
                raw_ttft = first - sent
                sent, first, got = await sdk_completion(sdk)
                sdk_ttft = first - sent
                assert got == chunks, f"SDK received {got} tokens, expected {chunks}"
                call = ws.post_chat()
                reply = await call.done
                assert "result" in reply, reply
                assert call.tokens == chunks and call.seq_ok, (call.tokens, call.seq_ok)
                gw_ttft = call.first - call.sent
            if i >= warmup:
                out[0].values.append(raw_ttft)
                out[1].values.append(sdk_ttft)
                out[2].values.append(gw_ttft)
    finally:
        await ws.close()
        assert raw.transport is not None
        raw.transport.close()
        await sdk.close()
    return out


@dataclass
class Throughput:
    name: str
    seconds: float
    tokens: int
    frames: int
    completed: int
    subject_cpu: float
    subject_sys: float
    """CPU seconds of the process doing the work measured (gateway, or the SDK client)."""
    client_cpu: float
    fake_cpu: float
    errors: int
    wrong: int

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds

    @property
    def per_cpu(self) -> float:
        return self.tokens / self.subject_cpu if self.subject_cpu else float("nan")


Worker = Callable[[Counters], Coroutine[Any, Any, None]]
MAX_CALLS = 1_000_000
"""Per worker: a bound on completions, whatever the time."""


async def drive(
    name: str,
    workers: list[Worker],
    cpu_of_subject: Callable[[], float],
    sys_of_subject: Callable[[], float],
    fake_pid: int,
    warmup: float,
    seconds: float,
    marks: tuple[Callable[[], None], Callable[[], None]] | None = None,
) -> Throughput:
    """Run the workers; count from ``warmup`` to ``warmup + seconds``; then cancel them."""
    counters = Counters()
    tasks = [asyncio.create_task(w(counters)) for w in workers]
    try:
        await asyncio.sleep(warmup)
        if marks:
            marks[0]()
        t0, s0, m0, f0 = perf(), cpu_of_subject(), time.process_time(), proc_cpu(fake_pid)
        y0 = sys_of_subject()
        k0, fr0, c0 = counters.tokens, counters.frames, counters.completed
        await asyncio.sleep(seconds)
        t1, s1, m1, f1 = perf(), cpu_of_subject(), time.process_time(), proc_cpu(fake_pid)
        y1 = sys_of_subject()
        k1, fr1, c1 = counters.tokens, counters.frames, counters.completed
        if marks:
            marks[1]()
    finally:
        for task in tasks:
            task.cancel()
        async with asyncio.timeout(30):
            await asyncio.gather(*tasks, return_exceptions=True)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            print(f"  {name}: a worker failed: {task.exception()!r}", flush=True)
    return Throughput(
        name=name,
        seconds=t1 - t0,
        tokens=k1 - k0,
        frames=fr1 - fr0,
        completed=c1 - c0,
        subject_cpu=s1 - s0,
        subject_sys=y1 - y0,
        client_cpu=m1 - m0,
        fake_cpu=f1 - f0,
        errors=counters.errors,
        wrong=counters.wrong_length,
    )


def stagger(mode: str, i: int, streams: int, tps: float) -> float:
    """Start offset of stream ``i``: paced streams are spread over one chunk interval."""
    return i / streams / tps if mode == "paced" else 0.0


async def load_gateway(
    mode: str,
    gw_pid: int,
    gw_port: int,
    fake_pid: int,
    a: argparse.Namespace,
    seconds: float,
    warmup: float,
    marks: tuple[Callable[[], None], Callable[[], None]] | None = None,
) -> Throughput:
    clients = [await WSClient.connect(gw_port, i % USERS) for i in range(a.streams)]

    def worker(i: int, ws: WSClient) -> Worker:
        async def run(counters: Counters) -> None:
            await asyncio.sleep(stagger(mode, i, a.streams, a.tps))
            for _ in range(MAX_CALLS):
                call = ws.post_chat(counters)
                async with asyncio.timeout(30):
                    reply = await call.done
                if "result" not in reply:
                    counters.errors += 1
                    await asyncio.sleep(0.01)
                    continue
                counters.completed += 1
                if call.tokens != a.chunks or not call.seq_ok:
                    counters.wrong_length += 1

        return run

    try:
        await set_model(clients, mode)
        return await drive(
            f"gateway {mode}",
            [worker(i, ws) for i, ws in enumerate(clients)],
            lambda: proc_cpu(gw_pid),
            lambda: proc_sys(gw_pid),
            fake_pid,
            warmup,
            seconds,
            marks,
        )
    finally:
        for ws in clients:
            await ws.close()


async def load_direct(
    mode: str, fake_port: int, fake_pid: int, a: argparse.Namespace, seconds: float, warmup: float
) -> Throughput:
    sdk = sdk_client(fake_port, mode)

    def worker(i: int) -> Worker:
        async def run(counters: Counters) -> None:
            await asyncio.sleep(stagger(mode, i, a.streams, a.tps))
            for _ in range(MAX_CALLS):
                async with asyncio.timeout(30):
                    _, _, got = await sdk_completion(sdk, counters)
                counters.completed += 1
                if got != a.chunks:
                    counters.wrong_length += 1

        return run

    try:
        return await drive(
            f"SDK direct {mode}",
            [worker(i) for i in range(a.streams)],
            time.process_time,
            self_sys,
            fake_pid,
            warmup,
            seconds,
        )
    finally:
        await sdk.close()


async def sdk_costs(chunks: int, budget: float = 5.0) -> list[tuple[str, float]]:
    """The openai SDK's own costs, timed in isolation (no cProfile): µs per chunk or request.

    Uses SDK internals (``construct_type``, ``SSEDecoder``, ``async_maybe_transform``): if
    a future SDK moves them, this part is skipped.
    """
    try:
        from openai._models import construct_type
        from openai._streaming import SSEDecoder
        from openai._utils import async_maybe_transform
        from openai.types.chat import ChatCompletionChunk, completion_create_params
    except ImportError as exc:
        print(f"  (SDK cost breakdown skipped: {exc})")
        return []
    events = sse_payloads(chunks)
    data = events[1].removeprefix(b"data: ").rstrip().decode()
    deadline = perf() + budget

    def timed(fn: Callable[[], Any], n: int) -> float:
        fn()
        t0 = perf()
        for _ in range(n):
            fn()
            if perf() > deadline:
                return float("nan")
        return (perf() - t0) / n * 1e6

    async def decode(pieces: list[bytes]) -> int:
        async def source() -> AsyncIterator[bytes]:
            for piece in pieces:
                yield piece

        return sum([1 async for _ in SSEDecoder().aiter_bytes(source())])

    async def atimed(pieces: list[bytes], n: int) -> float:
        t0 = perf()
        for _ in range(n):
            await decode(pieces)
        return (perf() - t0) / n / len(events) * 1e6

    params = completion_create_params.CompletionCreateParamsStreaming

    async def transform_us(n: int) -> float:
        await async_maybe_transform(request_kwargs(), params)
        t0 = perf()
        for _ in range(n):
            await async_maybe_transform(request_kwargs(), params)
        return (perf() - t0) / n * 1e6

    return [
        ("json.loads of one chunk (the SDK's parser)", timed(lambda: json.loads(data), 5000)),
        (
            "construct_type(ChatCompletionChunk) of one chunk",
            timed(lambda: construct_type(type_=ChatCompletionChunk, value=json.loads(data)), 2000),
        ),
        ("SSEDecoder, per event, whole answer in one piece", await atimed([b"".join(events)], 20)),
        ("SSEDecoder, per event, one event per piece", await atimed(events, 20)),
        ("request params transform, per request", await transform_us(200)),
    ]


# --------------------------------------------------------------------------------------------
# Profile


PROFILE_KEYS = (
    ("openai create(): params, request, headers", "completions.py", "create"),
    ("openai AsyncStream.__stream__ (all per chunk)", "_streaming.py", "__stream__"),
    ("  SSEDecoder.aiter_bytes (incl. HTTP read)", "_streaming.py", "aiter_bytes"),
    ("    httpx2 aiter_raw (httpcore2+h11+anyio)", "httpx2/_models.py", "aiter_raw"),
    ("      anyio socket read", "_backends/anyio.py", "read"),
    ("  _process_response_data (pydantic build)", "_base_client.py", "_process_response_data"),
    ("gateway OpenAIProvider.stream", "providers/openai.py", "stream"),
    ("gateway OpenAIProvider._read", "providers/openai.py", "_read"),
    ("gateway RoutedStream._attempts", "router.py", "_attempts"),
    ("gateway router fit() (tiktoken)", "router.py", "fit"),
    ("gateway ChatModule._chat", "chat.py", "_chat"),
    ("gateway Session._stream", "session.py", "_stream"),
    ("gateway Outbound.put_delta", "outbound.py", "put_delta"),
    ("gateway Connection._pump (frame writer)", "server/connection.py", "_pump"),
    ("  websockets send", "websockets/asyncio/connection.py", "send"),
)


def written(path: str) -> bool:
    """Whether ``path`` exists and is not empty."""
    return os.path.exists(path) and os.path.getsize(path) > 0


def report_profile(
    path: str, t: Throughput, per_answer: int, top: int, unprofiled_us: float | None
) -> None:
    """Selected entries as shares of the profile and per chunk, then the top entries.

    cProfile slows the gateway several times over (most where calls are many and small), so
    the per-chunk figures are also given scaled to the unprofiled run: share x unprofiled
    µs per chunk.
    """
    stats = pstats.Stats(path)
    total = stats.total_tt  # type: ignore[attr-defined]
    entries = stats.stats  # type: ignore[attr-defined]
    # Chunks the gateway parsed in the window: OpenAIProvider._read runs once per SSE chunk
    # (per answer: a role chunk, the content chunks, a finish chunk and a usage chunk).
    reads = sum(v[1] for k, v in entries.items() if k[2] == "_read" and k[0].endswith("openai.py"))
    chunks = max(round(reads * per_answer / (per_answer + 3)), 1)
    print(
        f"\nProfile {path} ({t.name}): {total:.2f} CPU-s profiled, {chunks} content chunks "
        f"parsed (the client received {t.tokens} in {t.frames} frames) "
        f"-> {total / chunks * 1e6:.0f} µs per chunk profiled"
        + (f", {unprofiled_us:.0f} unprofiled" if unprofiled_us else "")
    )
    scale = f"{'µs/chunk scaled':>16}" if unprofiled_us else ""
    print(
        f"  {'selected entry (cumulative)':<48} {'share':>6} {'self':>6} {scale} "
        f"{'calls':>7} {'ms/call profiled':>16}"
    )
    for label, filename, func in PROFILE_KEYS:
        best = None
        for (fname, _line, fn), (_cc, nc, tt, ct, _callers) in entries.items():
            if fn == func and fname.endswith(filename) and (best is None or ct > best[2]):
                best = (nc, tt, ct)
        if best is not None:
            nc, tt, ct = best
            scaled = f"{ct / total * unprofiled_us:16.1f}" if unprofiled_us else ""
            print(
                f"  {label:<48} {100 * ct / total:5.1f}% {100 * tt / total:5.1f}% {scaled} "
                f"{nc:7d} {ct / max(nc, 1) * 1e3:16.3f}"
            )
    stats.strip_dirs()
    for order in ("cumulative", "tottime"):
        print(f"\n  Top {top} by {order}:")
        stats.sort_stats(order).print_stats(top)


async def run_profile(
    fake_port: int, fake_pid: int, workdir: Path, a: argparse.Namespace, loads: list[Throughput]
) -> None:
    paths = [f"{a.profile}-{mode}.prof" for mode in ("burst", "paced")]
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    gw, port = await start_gateway(workdir, fake_port, profiles=paths)
    results = []
    try:
        # Warm the path (first requests import and connect) before profiling.
        await load_gateway("burst", gw.pid, port, fake_pid, a, 0.5, 0.5)
        marks = (lambda: os.kill(gw.pid, signal.SIGUSR1), lambda: os.kill(gw.pid, signal.SIGUSR2))
        for mode, path in zip(("burst", "paced"), paths, strict=True):
            # cProfile slows the gateway ~6x: paced, it must stay far from saturation or reads
            # would merge chunks; a fifth of the streams keeps one chunk per read.
            b = argparse.Namespace(**vars(a))
            if mode == "paced":
                b.streams = max(1, a.streams // 5)
            t = await load_gateway(mode, gw.pid, port, fake_pid, b, a.profile_seconds, 1.0, marks)
            for _ in range(200):
                if written(path):
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
            results.append((path, t))
    finally:
        stop_process(gw, signal.SIGINT)
    for path, t in results:
        base = next((x for x in loads if x.name == t.name), None)
        report_profile(
            path, t, a.chunks, a.top, 1e6 / base.per_cpu if base and base.per_cpu else None
        )


# --------------------------------------------------------------------------------------------
# Main


def print_ttft(mode: str, ttft: tuple[Latency, Latency, Latency], note: str) -> None:
    print(f"\nTTFT, {mode} mode ({note}), ms, send -> first content token:")
    print(f"  {'path':<20} {'p50':>8} {'p90':>8} {'p99':>8} {'mean':>8} {'max':>8} {'n':>5}")
    for lat in ttft:
        v = [x * 1e3 for x in lat.values]
        if v:
            print(
                f"  {lat.name:<20} {pct(v, 0.5):8.3f} {pct(v, 0.9):8.3f} {pct(v, 0.99):8.3f} "
                f"{statistics.fmean(v):8.3f} {max(v):8.3f} {len(v):5d}"
            )
    raw, sdk, via = ttft
    if not (via.values and sdk.values and raw.values):
        return
    for base, label in ((sdk, "SDK direct"), (raw, "raw HTTP")):
        p50 = (pct(via.values, 0.5) - pct(base.values, 0.5)) * 1e3
        p99 = (pct(via.values, 0.99) - pct(base.values, 0.99)) * 1e3
        paired = [g - s for g, s in zip(via.values, base.values, strict=True)]
        print(
            f"  gateway added vs {label:<10}: p50 {p50:+8.3f}  p99 {p99:+8.3f}   (paired per "
            f"request: p50 {pct(paired, 0.5) * 1e3:+.3f}, p99 {pct(paired, 0.99) * 1e3:+.3f})"
        )


def print_loads(loads: list[Throughput], a: argparse.Namespace) -> None:
    print(
        f"\nThroughput: {a.streams} concurrent streams, {a.chunks} chunks per completion, "
        f"{a.seconds:g} s window after {a.warmup:g} s warm-up"
    )
    print(
        f"  {'path':<18} {'chunks/s':>9} {'compl/s':>8} {'frames/chunk':>12} "
        f"{'subject CPU-s':>13} {'sys%':>5} {'chunks/CPU-s':>12} {'µs CPU/chunk':>12} "
        f"{'client CPU-s':>12} {'fake CPU-s':>10} {'err':>4} {'bad':>4}"
    )
    for t in loads:
        print(
            f"  {t.name:<18} {t.rate:9.0f} {t.completed / t.seconds:8.1f} "
            f"{t.frames / max(t.tokens, 1):12.3f} {t.subject_cpu:13.2f} "
            f"{100 * t.subject_sys / max(t.subject_cpu, 1e-9):5.0f} {t.per_cpu:12.0f} "
            f"{1e6 / t.per_cpu if t.per_cpu else float('nan'):12.1f} {t.client_cpu:12.2f} "
            f"{t.fake_cpu:10.2f} {t.errors:4d} {t.wrong:4d}"
        )
    print(
        "  subject CPU = the gateway process (gateway rows) / this process running the openai "
        "SDK (direct rows); sys% = its kernel share (on loopback a sender also pays the "
        "receiver's TCP work);\n  client CPU = this process (for gateway rows: the WebSocket "
        "client)"
    )
    by_name = {t.name: t for t in loads}
    for mode in ("burst", "paced"):
        gw, direct = by_name.get(f"gateway {mode}"), by_name.get(f"SDK direct {mode}")
        if gw and direct and gw.per_cpu and direct.per_cpu:
            print(
                f"  {mode}: gateway chunks/CPU-s / SDK-direct chunks/CPU-s = "
                f"{gw.per_cpu / direct.per_cpu:.2f};  chunks/s gateway / direct = "
                f"{gw.rate / direct.rate:.2f};  gateway µs/chunk - SDK µs/chunk = "
                f"{1e6 / gw.per_cpu - 1e6 / direct.per_cpu:+.1f}"
            )


def revision() -> str:
    """The commit of the gateway under test, and whether gateway/ has local changes."""
    try:
        git = ["git", "-C", str(ROOT)]
        head = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--", "gateway"], capture_output=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head or 'unknown'}{' + local changes in gateway/' if dirty else ''}"


async def main_async(a: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="bench-providers-"))
    print(
        f"bench/providers.py: {a.chunks} chunks/completion, TTFT {a.requests} requests per mode, "
        f"throughput {a.streams} streams x {a.seconds:g} s, paced at {a.tps:g} chunks/s; "
        f"{os.cpu_count()} cores; gateway at {revision()}; logs in {workdir}",
        flush=True,
    )
    fake, fake_port = await start_fake(workdir, a.chunks, a.first_gap / 1e3, a.tps)
    gw, gw_port = await start_gateway(workdir, fake_port)
    print(
        f"  fake pid {fake.pid} port {fake_port}; gateway pid {gw.pid} port {gw_port}", flush=True
    )
    ttfts = {}
    loads: list[Throughput] = []
    bg = Background([fake.pid, gw.pid], a.quiet_wait)
    try:
        for mode in ("first", "burst"):
            async with bg.phase(f"TTFT {mode}"):
                ttfts[mode] = await measure_ttft(
                    mode, a.chunks, fake_port, gw_port, a.requests, a.warmup_requests, a.ttft_budget
                )
            print(f"  TTFT {mode} done", flush=True)
        for mode in ("burst", "paced"):
            async with bg.phase(f"gateway {mode}"):
                t = await load_gateway(mode, gw.pid, gw_port, fake.pid, a, a.seconds, a.warmup)
            loads.append(t)
            async with bg.phase(f"direct {mode}"):
                t = await load_direct(mode, fake_port, fake.pid, a, a.seconds, a.warmup)
            loads.append(t)
            print(f"  throughput {mode} done", flush=True)
    finally:
        stop_process(gw)
    print_ttft(
        "first",
        ttfts["first"],
        f"the first content chunk alone, the rest {a.first_gap:g} ms later",
    )
    print_ttft("burst", ttfts["burst"], "the whole answer in one write")
    print_loads(loads, a)
    bg.report()
    costs = await sdk_costs(a.chunks)
    if costs:
        print("\nThe openai SDK's own costs, timed in isolation in this process (µs):")
        for label, us in costs:
            print(f"  {label:<52} {us:8.1f}")
    if a.profile:
        await run_profile(fake_port, fake.pid, workdir, a, loads)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_fake":
        p = argparse.ArgumentParser()
        p.add_argument("_fake")
        p.add_argument("--port", type=int, default=0)
        p.add_argument("--chunks", type=int, required=True)
        p.add_argument("--first-gap", type=float, required=True)
        p.add_argument("--tps", type=float, required=True)
        f = p.parse_args()
        asyncio.run(run_fake(f.port, f.chunks, f.first_gap, f.tps))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run, under 30 s")
    parser.add_argument("--chunks", type=int, default=200, help="content chunks per completion")
    parser.add_argument("--requests", type=int, default=200, help="TTFT requests per path")
    parser.add_argument("--streams", type=int, default=20, help="concurrent streams (throughput)")
    parser.add_argument("--seconds", type=float, default=10.0, help="throughput window")
    parser.add_argument("--tps", type=float, default=50.0, help="paced mode: chunks/s per stream")
    parser.add_argument(
        "--first-gap", type=float, default=20.0, help="first mode: ms between token 1 and the rest"
    )
    parser.add_argument(
        "--profile",
        metavar="PREFIX",
        help="also profile a gateway: writes PREFIX-{burst,paced}.prof",
    )
    parser.add_argument("--profile-seconds", type=float, default=5.0)
    parser.add_argument("--top", type=int, default=25, help="profile entries to print")
    a = parser.parse_args()
    a.warmup_requests, a.warmup, a.ttft_budget, a.quiet_wait = 20, 1.0, 45.0, 30.0
    if a.quick:
        a.requests, a.seconds, a.profile_seconds = 25, 2.0, 2.0
        a.warmup_requests, a.warmup, a.ttft_budget, a.quiet_wait = 5, 0.5, 6.0, 0.0
    try:
        asyncio.run(main_async(a))
    finally:
        kill_all()


if __name__ == "__main__":
    main()
