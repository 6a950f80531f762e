"""What the gateway adds when streaming from real-model upstreams (OpenAI-compatible, Anthropic).

    .venv/bin/python bench/providers.py            # full run, about 4 minutes
    .venv/bin/python bench/providers.py --quick    # smoke run, about 1 minute

Processes, all on 127.0.0.1:

- a fake upstream (this file, ``_fake`` mode, its own process) speaking both
  wire formats: ``POST /<mode>/v1/chat/completions`` (OpenAI
  ``chat.completion.chunk`` SSE, with the usage chunk and ``[DONE]``) and
  ``POST /<mode>/v1/messages`` (Anthropic's named events, ``message_start``
  to ``message_stop``). Answers are pre-encoded, their text the fixed token
  ``"tok "``, HTTP/1.1 chunked, keep-alive. ``<mode>`` says how:
  ``burst``: ``--chunks`` chunks in one write; ``short``: one chunk, one write
  (per-request cost); ``first``: the first chunk alone, the rest
  ``--first-gap`` ms later (time to first token); ``paced``: ``--chunks``
  chunks at ``--tps`` each; ``slow``: ``--slow-chunks`` chunks at
  ``--slow-tps`` each (the many-streams test);
- the floor (``_floor`` mode, its own process): a WebSocket JSON-RPC relay
  with nothing but what any relay needs: a bare aiohttp client (keep-alive),
  SSE split and orjson decoding of each event, and one WebSocket frame per
  read, written straight to the socket (minimal RFC 6455 framing). It
  answers ``chat.setModel`` and ``chat.postChat`` with the gateway's frames;
- the gateway (``python -m gateway serve``) with one model per provider and
  mode (``<provider>-<mode>``, ``base_url`` = the fake's ``/<mode>``); with
  ``uvloop`` installed, a second gateway runs under uvloop
  (``uvloop.install()`` before ``gateway.cli.main``) for the same phases;
- this process: the client of the floor and the gateways (a minimal
  asyncio WebSocket client, one orjson parse per frame), and the direct SDK
  path (``AsyncOpenAI`` / ``AsyncAnthropic`` with ``stream=True``, their
  default transport, typed events), measured by this process's own CPU.

Measured in one run, for each provider:

1. TTFT: ``--requests`` sequential requests per path in ``first`` mode, the
   paths interleaved request by request: send -> first content token.
2. Bursts: ``--streams`` concurrent back-to-back ``burst`` answers for
   ``--seconds``: CPU per chunk of the subject (floor / gateway process,
   this process for the SDK).
3. Short answers: the same with ``short`` (one chunk each): CPU per request.
4. Paced: ``--streams`` concurrent ``paced`` answers: CPU per chunk.
5. Many paced (OpenAI-compatible, floor and gateway): ``--many`` concurrent
   answers at ``--slow-tps`` chunks/s over ``--many-conns`` connections: CPU,
   delivery (answers complete with every chunk / answers ended) and lateness
   of each frame against the stream's own schedule (first token + i /
   tps), p50 / p99 / max.

CPU is utime+stime from /proc/<pid>/stat. The machine may be shared: before
each phase the run waits (``--quiet-wait`` s at most in all) for other
processes to go quiet, and reports how busy they kept the cores. Nothing is
asserted; every loop is bounded in count and time; every child process is
killed on exit, even on error.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import ctypes
import hashlib
import os
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
KEY_ENV = {"openai": "BENCH_OPENAI_API_KEY", "anthropic": "BENCH_ANTHROPIC_API_KEY"}
KEY = "sk-bench-dummy-key"
USERS = 4
MESSAGE = "How fast can you stream this answer to me?"
SYSTEM = "You are a helpful assistant."  # the gateway's default system prompt
PROVIDERS = ("openai", "anthropic")
MODES = ("burst", "short", "first", "paced", "slow")
PATHS = {b"/v1/chat/completions": "openai", b"/v1/messages": "anthropic"}
perf = time.perf_counter


# --------------------------------------------------------------------------------------------
# The fake upstream (its own process: `providers.py _fake`)


HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
    b"cache-control: no-cache\r\nx-request-id: req_bench\r\nrequest-id: req_bench\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)


def _sse(data: Any, event: str | None = None) -> bytes:
    prefix = b"event: %s\n" % event.encode() if event else b""
    return prefix + b"data: " + (data if isinstance(data, bytes) else orjson.dumps(data)) + b"\n\n"


def openai_events(chunks: int) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """Opening, content and closing SSE events of one OpenAI-compatible completion."""
    created = int(time.time())

    def event(delta: dict[str, Any] | None, finish: str | None = None, usage: Any = None) -> bytes:
        choices = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
        return _sse(
            {
                "id": "chatcmpl-bench",
                "object": "chat.completion.chunk",
                "created": created,
                "model": UPSTREAM_MODEL,
                "system_fingerprint": "fp_bench",
                "choices": choices if delta is not None else [],
                "usage": usage,
            }
        )

    usage = {"prompt_tokens": 20, "completion_tokens": chunks, "total_tokens": 20 + chunks}
    opening = [event({"role": "assistant", "content": "", "refusal": None})]
    closing = [event({}, "stop"), event(None, usage=usage), _sse(b"[DONE]")]
    return opening, [event({"content": TOKEN})] * chunks, closing


def anthropic_events(chunks: int) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """Opening, content and closing SSE events of one Anthropic message."""
    usage = {"input_tokens": 20, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
    start = {
        "type": "message_start",
        "message": {
            "id": "msg_bench",
            "type": "message",
            "role": "assistant",
            "model": UPSTREAM_MODEL,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {**usage, "output_tokens": 1},
        },
    }
    block = {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    delta = {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "text_delta", "text": TOKEN},
    }
    opening = [
        _sse(start, "message_start"),
        _sse(block, "content_block_start"),
        _sse({"type": "ping"}, "ping"),
    ]
    closing = [
        _sse({"type": "content_block_stop", "index": 0}, "content_block_stop"),
        _sse(
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": chunks},
            },
            "message_delta",
        ),
        _sse({"type": "message_stop"}, "message_stop"),
    ]
    return opening, [_sse(delta, "content_block_delta")] * chunks, closing


def framed(events: list[bytes]) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events)


@dataclass
class Answer:
    """One pre-encoded answer: what goes first, then one piece per later chunk."""

    first: bytes
    """Head, opening events, first content chunk (and in one-write modes everything)."""
    rest: list[bytes]
    """Later content chunks, the last one with the closing events and the end of the body."""
    interval: float
    """Seconds between two pieces of ``rest`` (0: all in one write after ``gap``)."""
    gap: float = 0.0


def answers(a: argparse.Namespace) -> dict[tuple[str, str], Answer]:
    out = {}
    for provider, make in (("openai", openai_events), ("anthropic", anthropic_events)):
        for mode in MODES:
            count = {"short": 1, "slow": a.slow_chunks}.get(mode, a.chunks)
            opening, contents, closing = make(count)
            end = framed(closing) + b"0\r\n\r\n"
            if mode in ("burst", "short"):
                out[provider, mode] = Answer(HEAD + framed(opening + contents) + end, [], 0.0)
            elif mode == "first":
                first = HEAD + framed([*opening, contents[0]])
                out[provider, mode] = Answer(first, [framed(contents[1:]) + end], 0.0, a.first_gap)
            else:
                tps = a.tps if mode == "paced" else a.slow_tps
                rest = [framed([c]) for c in contents[1:]]
                rest[-1] += end
                out[provider, mode] = Answer(HEAD + framed([*opening, contents[0]]), rest, 1 / tps)
    return out


class _FakeProtocol(asyncio.Protocol):
    answers: ClassVar[dict[tuple[str, str], Answer]] = {}

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
        target = head.split(b"\r\n", 1)[0].split(b" ")[1]
        mode, _, path = target[1:].partition(b"/")
        answer = self.answers.get((PATHS.get(b"/" + path, ""), mode.decode()))
        if answer is None:
            transport.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
            return
        transport.write(answer.first)
        if not answer.rest:
            return
        loop = asyncio.get_running_loop()
        if not answer.interval:
            self.timer = loop.call_later(answer.gap, transport.write, answer.rest[0])
        else:
            self.timer = loop.call_later(answer.interval, self._pace, answer, 0, loop.time())

    def _pace(self, answer: Answer, i: int, t0: float) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(answer.rest[i])
        if i + 1 < len(answer.rest):
            # Absolute deadlines: one late timer does not delay every later chunk.
            when = t0 + (i + 2) * answer.interval
            self.timer = asyncio.get_running_loop().call_at(when, self._pace, answer, i + 1, t0)


async def run_fake(a: argparse.Namespace) -> None:
    _FakeProtocol.answers = answers(a)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_FakeProtocol, "127.0.0.1", 0, backlog=2048)
    print(f"fake listening on {server.sockets[0].getsockname()[1]}", flush=True)
    await _serve_until_signalled(server)


async def _serve_until_signalled(server: asyncio.Server) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


# --------------------------------------------------------------------------------------------
# The floor: a bare relay (its own process: `providers.py _floor`)


WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def ws_frame(payload: bytes, opcode: int = 0x1, mask: bool = False) -> bytes:
    n = len(payload)
    bit = 0x80 if mask else 0
    if n < 126:
        head = bytes((0x80 | opcode, bit | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, bit | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, bit | 127)) + n.to_bytes(8, "big")
    return head + (b"\x00\x00\x00\x00" if mask else b"") + payload


def ws_frames(buf: bytearray) -> list[tuple[int, bytes]]:
    """Complete frames at the start of ``buf`` (removed from it), unmasked."""
    out = []
    pos, size = 0, len(buf)
    while size - pos >= 2:
        b0, b1 = buf[pos], buf[pos + 1]
        n, head = b1 & 0x7F, 2
        if n == 126:
            if size - pos < 4:
                break
            n, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
        elif n == 127:
            if size - pos < 10:
                break
            n, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
        masked = b1 & 0x80
        key = bytes(buf[pos + head : pos + head + 4]) if masked else b""
        head += 4 if masked else 0
        if size - pos < head + n:
            break
        payload = bytes(buf[pos + head : pos + head + n])
        if masked and key != b"\x00\x00\x00\x00":
            whole = (key * (n // 4 + 1))[:n]
            payload = (int.from_bytes(payload, "big") ^ int.from_bytes(whole, "big")).to_bytes(
                n, "big"
            )
        out.append((b0 & 0x0F, payload))
        pos += head + n
    del buf[:pos]
    return out


class FloorRelay(asyncio.Protocol):
    """One client connection of the floor: answers chat.setModel and relays chat.postChat."""

    upstream: ClassVar[str] = ""
    session: ClassVar[Any] = None  # aiohttp.ClientSession, shared (keep-alive pool)

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.open = False
        self.model = "openai-burst"
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        for task in self.tasks:
            task.cancel()

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buf += data
        if not self.open:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            key = b""
            for line in bytes(self.buf[:end]).split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"sec-websocket-key":
                    key = value.strip()
            del self.buf[: end + 4]
            accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
            self.transport.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            )
            self.open = True
        for opcode, payload in ws_frames(self.buf):
            if opcode == 0x1:
                self.on_request(orjson.loads(payload))
            elif opcode == 0x9:
                self.transport.write(ws_frame(payload, 0xA))
            elif opcode == 0x8:
                self.transport.write(ws_frame(payload[:2], 0x8))
                self.transport.close()

    def on_request(self, message: dict[str, Any]) -> None:
        id_, params = message["id"], message.get("params") or {}
        if message["method"] == "chat.setModel":
            self.model = params["modelName"]
            self.send({"jsonrpc": "2.0", "result": True, "id": id_})
        elif message["method"] == "chat.postChat":
            task = asyncio.get_running_loop().create_task(self.relay(id_, params["message"]))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        else:
            error = {"code": -32601, "message": "Method not found"}
            self.send({"jsonrpc": "2.0", "error": error, "id": id_})

    def send(self, message: Any) -> None:
        assert self.transport is not None
        self.transport.write(ws_frame(orjson.dumps(message)))

    async def relay(self, id_: int, text: str) -> None:
        provider, mode = self.model.split("-", 1)
        messages = [{"role": "user", "content": text}]
        if provider == "openai":
            url = f"{self.upstream}/{mode}/v1/chat/completions"
            body: dict[str, Any] = {"model": UPSTREAM_MODEL, "stream": True, "max_tokens": 1024}
            body["messages"] = [{"role": "system", "content": SYSTEM}, *messages]
            body["stream_options"] = {"include_usage": True}
            headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
        else:
            url = f"{self.upstream}/{mode}/v1/messages"
            body = {"model": UPSTREAM_MODEL, "stream": True, "max_tokens": 1024}
            body.update(system=SYSTEM, messages=messages)
            headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
            headers["Content-Type"] = "application/json"
        prefix = b'{"jsonrpc":"2.0","method":"stream.delta","params":{"id":%d,"seq":' % id_
        seq, tail, usage = 0, b"", None
        transport = self.transport
        assert transport is not None
        async with self.session.post(url, data=orjson.dumps(body), headers=headers) as response:
            async for data in response.content.iter_any():
                blocks = (tail + data).split(b"\n\n")
                tail = blocks.pop()
                parts = []
                for block in blocks:
                    line = block[block.find(b"data: ") + 6 :]
                    if line == b"[DONE]":
                        continue
                    event = orjson.loads(line)
                    if provider == "openai":
                        for choice in event.get("choices") or ():
                            piece = (choice.get("delta") or {}).get("content")
                            if piece:
                                parts.append(piece)
                        usage = event.get("usage") or usage
                    elif event["type"] == "content_block_delta":
                        parts.append(event["delta"].get("text") or "")
                    elif event["type"] == "message_delta":
                        usage = event["usage"]
                if parts:
                    text_json = orjson.dumps("".join(parts))
                    transport.write(ws_frame(b'%s%d,"text":%s}}' % (prefix, seq, text_json)))
                    seq += 1
        result = {"finishReason": "stop", "model": self.model, "usage": usage}
        self.send({"jsonrpc": "2.0", "result": result, "id": id_})


async def run_floor(upstream_port: int) -> None:
    import aiohttp

    FloorRelay.upstream = f"http://127.0.0.1:{upstream_port}"
    connector = aiohttp.TCPConnector(limit=2000, keepalive_timeout=30)
    FloorRelay.session = aiohttp.ClientSession(connector=connector)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(FloorRelay, "127.0.0.1", 0, backlog=2048)
    print(f"floor listening on {server.sockets[0].getsockname()[1]}", flush=True)
    try:
        await _serve_until_signalled(server)
    finally:
        await FloorRelay.session.close()


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


def stop_process(proc: subprocess.Popen[bytes], wait: float = 5.0) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
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
        while self.budget > 0:
            s0 = self.snap()
            await asyncio.sleep(1.0)
            self.budget -= 1.0
            if self.cores(s0, self.snap()) < threshold:
                return

    @contextlib.asynccontextmanager
    async def phase(self, name: str) -> AsyncIterator[None]:
        await self.quiet()
        s0 = self.snap()
        yield
        self.phases[name] = self.cores(s0, self.snap())

    def report(self) -> None:
        busy = sorted(self.phases.values())
        if busy:
            print(
                f"\nOther processes on the machine during the phases (cores busy of "
                f"{os.cpu_count()}): median {statistics.median(busy):.2f}, max {busy[-1]:.2f}"
            )


async def start_child(workdir: Path, name: str, args: list[str], marker: str) -> tuple[Any, int]:
    out = workdir / f"{name}.out"
    proc = spawn([sys.executable, str(SCRIPT), *args], out, dict(os.environ))
    line = await wait_for_line(proc, out, marker, 30)
    return proc, int(line.rsplit(" ", 1)[1])


GATEWAY_TOML = """\
# Written by bench/providers.py: models served by the local fake, one per provider and mode.
default_model = "openai-burst"

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
name = "{provider}-{mode}"
provider = "{provider}"
model = "{upstream}"
base_url = "http://127.0.0.1:{port}/{mode}{v1}"
api_key_env = "{key_env}"
context_window = 8192
max_output_tokens = 1024
"""

UVLOOP_SNIPPET = (
    "import sys, uvloop; uvloop.install(); from gateway.cli import main; sys.exit(main())"
)


async def start_gateway(workdir: Path, fake_port: int, loop: str) -> tuple[Any, int]:
    config = workdir / "gateway.toml"
    text = GATEWAY_TOML + "".join(
        GATEWAY_MODEL.format(
            provider=p,
            mode=m,
            upstream=UPSTREAM_MODEL,
            port=fake_port,
            v1="/v1" if p == "openai" else "",
            key_env=KEY_ENV[p],
        )
        for p in PROVIDERS
        for m in MODES
    )
    config.write_text(text)
    env = dict(os.environ)
    env["GATEWAY_API_KEYS"] = ",".join(f"user{i}:bench-key-{i}" for i in range(USERS))
    env.update({var: KEY for var in KEY_ENV.values()})
    env.pop("GATEWAY_DEFAULT_MODEL", None)
    args = ["serve", "--port", "0", "--config", str(config)]
    if loop == "uvloop":
        cmd = [sys.executable, "-c", UVLOOP_SNIPPET, *args]
    else:
        cmd = [sys.executable, "-m", "gateway", *args]
    out = workdir / f"gateway-{loop}.out"
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
    lateness: list[float] | None = None
    """Per frame: arrival minus the upstream's schedule (request sent + i / tps), if recorded."""
    failures: dict[str, int] = field(default_factory=dict)
    """How answers that were not complete ended (error code or finish reason)."""
    interval: float = 0.0


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

    @classmethod
    async def connect(cls, port: int, user: int) -> WSClient:
        loop = asyncio.get_running_loop()
        _, client = await loop.create_connection(cls, "127.0.0.1", port)
        assert client.transport is not None
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
        assert self.transport is not None
        self.transport.write(ws_frame(payload, opcode, mask=True))

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
        for opcode, payload in ws_frames(buf):
            if opcode == 0x1:
                self.on_message(payload)
            elif opcode == 0x9:
                self.send(payload, 0xA)
            elif opcode == 0x8:
                assert self.transport is not None
                self.transport.close()

    def on_message(self, payload: bytes) -> None:
        now = perf()
        message = orjson.loads(payload)
        if message.get("method") == "stream.delta":
            params = message["params"]
            call = self.calls.get(params["id"])
            if call is None:
                return
            counters = call.counters
            if not call.frames:
                call.first = now
            if counters is not None and counters.lateness is not None:
                # Against the upstream's schedule: its chunk i leaves i intervals after the
                # request arrives (the first frame's lateness is its time to first token).
                counters.lateness.append(now - call.sent - call.tokens * counters.interval)
            if params["seq"] != call.frames:
                call.seq_ok = False
            call.frames += 1
            tokens = params["text"].count(TOKEN)
            call.tokens += tokens
            if counters is not None:
                counters.tokens += tokens
                counters.frames += 1
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


async def set_model(clients: list[WSClient], model: str) -> None:
    """Point every connection at ``model`` (the floor keeps it per connection)."""
    await asyncio.gather(*(ws.call("chat.setModel", {"modelName": model}) for ws in clients))


def sdk_client(provider: str, port: int, mode: str) -> Any:
    if provider == "openai":
        import openai

        url = f"http://127.0.0.1:{port}/{mode}/v1"
        return openai.AsyncOpenAI(api_key=KEY, base_url=url, max_retries=0)
    import anthropic

    url = f"http://127.0.0.1:{port}/{mode}"
    return anthropic.AsyncAnthropic(api_key=KEY, base_url=url, max_retries=0)


async def sdk_completion(
    provider: str, client: Any, counters: Counters | None = None
) -> tuple[float, float, int]:
    """(sent, first token, tokens) of one streamed answer through the provider's SDK."""
    sent = perf()
    first = 0.0
    tokens = 0
    messages = [{"role": "user", "content": MESSAGE}]
    if provider == "openai":
        stream = await client.chat.completions.create(
            model=UPSTREAM_MODEL,
            messages=[{"role": "system", "content": SYSTEM}, *messages],
            stream=True,
            stream_options={"include_usage": True},
            max_tokens=1024,
        )
    else:
        stream = await client.messages.create(
            model=UPSTREAM_MODEL, system=SYSTEM, messages=messages, max_tokens=1024, stream=True
        )
    try:
        async for event in stream:
            if provider == "openai":
                text = event.choices[0].delta.content if event.choices else None
            else:
                text = event.delta.text if event.type == "content_block_delta" else None
            if text:
                first = first or perf()
                n = text.count(TOKEN)
                tokens += n
                if counters is not None:
                    counters.tokens += n
                    counters.frames += 1
    finally:
        await stream.close()
    return sent, first, tokens


# --------------------------------------------------------------------------------------------
# Measurements


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


@dataclass
class Subject:
    """A path under test: the floor, a gateway (asyncio or uvloop), or the SDK in-process."""

    name: str
    port: int = 0
    pid: int = 0
    """0: the SDK, in this process."""

    def cpu(self) -> float:
        return proc_cpu(self.pid) if self.pid else time.process_time()

    def sys(self) -> float:
        return proc_sys(self.pid) if self.pid else os.times().system


async def measure_ttft(
    provider: str, subjects: list[Subject], fake_port: int, a: argparse.Namespace
) -> dict[str, list[float]]:
    """Sequential ``first``-mode answers, the subjects interleaved; each read to its end."""
    out: dict[str, list[float]] = {s.name: [] for s in subjects}
    sockets: dict[str, WSClient] = {}
    sdk = sdk_client(provider, fake_port, "first")
    try:
        for s in subjects:
            if s.pid:
                sockets[s.name] = await WSClient.connect(s.port, 0)
                await set_model([sockets[s.name]], f"{provider}-first")
        deadline = perf() + a.ttft_budget
        for i in range(a.warmup_requests + a.requests):
            if perf() > deadline:
                print(f"  TTFT {provider}: time budget spent after {i} requests", flush=True)
                break
            for s in subjects:
                async with asyncio.timeout(10):
                    if s.pid:
                        call = sockets[s.name].post_chat()
                        reply = await call.done
                        assert "result" in reply and call.tokens == a.chunks, (reply, call.tokens)
                        ttft = call.first - call.sent
                    else:
                        sent, first, got = await sdk_completion(provider, sdk)
                        assert got == a.chunks, got
                        ttft = first - sent
                if i >= a.warmup_requests:
                    out[s.name].append(ttft)
    finally:
        for ws in sockets.values():
            await ws.close()
        await sdk.close()
    return out


@dataclass
class Load:
    provider: str
    mode: str
    subject: str
    seconds: float
    tokens: int
    frames: int
    completed: int
    cpu: float
    sys: float
    errors: int
    wrong: int
    streams: int
    lateness: list[float] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)

    @property
    def us_per_chunk(self) -> float:
        return self.cpu / self.tokens * 1e6 if self.tokens else float("nan")

    @property
    def ms_per_request(self) -> float:
        return self.cpu / self.completed * 1e3 if self.completed else float("nan")


Worker = Callable[[Counters], Coroutine[Any, Any, None]]
MAX_CALLS = 1_000_000
"""Per worker: a bound on answers, whatever the time."""


async def run_load(
    provider: str,
    mode: str,
    subject: Subject,
    fake_port: int,
    *,
    streams: int,
    connections: int,
    expected: int,
    seconds: float,
    warmup: float,
    interval: float = 0.0,
    late: bool = False,
) -> Load:
    """``streams`` back-to-back answers at once; counted from ``warmup`` for ``seconds``."""
    counters = Counters(interval=interval)
    clients: list[WSClient] = []
    sdk = None
    if subject.pid:
        for i in range(connections):
            clients.append(await WSClient.connect(subject.port, i % USERS))
        await set_model(clients, f"{provider}-{mode}")
    else:
        sdk = sdk_client(provider, fake_port, mode)

    def worker(i: int) -> Worker:
        async def run(counters: Counters) -> None:
            # Paced streams start spread over one chunk interval, as real users would.
            await asyncio.sleep(i / streams * interval)
            for _ in range(MAX_CALLS):
                if sdk is not None:
                    async with asyncio.timeout(60):
                        _, _, got = await sdk_completion(provider, sdk, counters)
                    ok = got == expected
                else:
                    call = clients[i % len(clients)].post_chat(counters)
                    async with asyncio.timeout(60):
                        reply = await call.done
                    if "result" not in reply:
                        counters.errors += 1
                        code = str(reply.get("error", {}).get("code"))
                        counters.failures[code] = counters.failures.get(code, 0) + 1
                        await asyncio.sleep(0.01)
                        continue
                    ok = call.tokens == expected and call.seq_ok
                    if not ok:
                        why = f"{reply['result'].get('finishReason')}/{call.tokens} chunks"
                        counters.failures[why] = counters.failures.get(why, 0) + 1
                counters.completed += 1
                counters.wrong_length += not ok

        return run

    tasks = [asyncio.create_task(worker(i)(counters)) for i in range(streams)]
    try:
        await asyncio.sleep(warmup)
        if late:
            counters.lateness = []
        t0, c0, y0 = perf(), subject.cpu(), subject.sys()
        k0, f0, d0, e0, w0 = (
            counters.tokens,
            counters.frames,
            counters.completed,
            counters.errors,
            counters.wrong_length,
        )
        await asyncio.sleep(seconds)
        t1, c1, y1 = perf(), subject.cpu(), subject.sys()
        k1, f1, d1, e1, w1 = (
            counters.tokens,
            counters.frames,
            counters.completed,
            counters.errors,
            counters.wrong_length,
        )
    finally:
        for task in tasks:
            task.cancel()
        async with asyncio.timeout(30):
            await asyncio.gather(*tasks, return_exceptions=True)
        for ws in clients:
            await ws.close()
        if sdk is not None:
            await sdk.close()
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            print(f"  {subject.name}: a worker failed: {task.exception()!r}", flush=True)
            break
    return Load(
        provider=provider,
        mode=mode,
        subject=subject.name,
        seconds=t1 - t0,
        tokens=k1 - k0,
        frames=f1 - f0,
        completed=d1 - d0,
        cpu=c1 - c0,
        sys=y1 - y0,
        errors=e1 - e0,
        wrong=w1 - w0,
        streams=streams,
        lateness=list(counters.lateness or ()),
        failures=dict(counters.failures),
    )


# --------------------------------------------------------------------------------------------
# Report


def ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x" if base and value == value and base == base else "-"


def print_ttft(provider: str, ttft: dict[str, list[float]]) -> None:
    print(f"\nTTFT {provider}, first token alone (ms, send -> first content token):")
    print(f"  {'path':<16} {'p50':>8} {'p90':>8} {'p99':>8} {'mean':>8} {'n':>5} {'p50-floor':>10}")
    floor = pct(ttft.get("floor", []), 0.5)
    for name, values in ttft.items():
        v = [x * 1e3 for x in values]
        if v:
            over = (pct(values, 0.5) - floor) * 1e3
            print(
                f"  {name:<16} {pct(v, 0.5):8.3f} {pct(v, 0.9):8.3f} {pct(v, 0.99):8.3f} "
                f"{statistics.fmean(v):8.3f} {len(v):5d} {over:+10.3f}"
            )


def print_loads(loads: list[Load]) -> None:
    print(
        f"\n  {'provider':<9} {'mode':<6} {'path':<16} {'streams':>7} {'chunks/s':>9} "
        f"{'answers/s':>9} {'CPU %':>6} {'sys%':>5} {'µs/chunk':>9} {'ms/answer':>9} "
        f"{'vs floor':>9} {'err':>4} {'bad':>4}"
    )
    floors = {(x.provider, x.mode): x for x in loads if x.subject == "floor"}
    for x in loads:
        base = floors.get((x.provider, x.mode))
        per = x.ms_per_request if x.mode == "short" else x.us_per_chunk
        base_per = (
            (base.ms_per_request if x.mode == "short" else base.us_per_chunk) if base else 0.0
        )
        print(
            f"  {x.provider:<9} {x.mode:<6} {x.subject:<16} {x.streams:7d} "
            f"{x.tokens / x.seconds:9.0f} {x.completed / x.seconds:9.1f} "
            f"{100 * x.cpu / x.seconds:6.0f} {100 * x.sys / max(x.cpu, 1e-9):5.0f} "
            f"{x.us_per_chunk:9.1f} {x.ms_per_request:9.3f} {ratio(per, base_per):>9} "
            f"{x.errors:4d} {x.wrong:4d}"
        )
    print(
        "  CPU = the floor / gateway process, or this process for the SDK rows; vs floor: "
        "µs/chunk (ms/answer for short answers) over the floor's"
    )
    by = {(x.provider, x.mode, x.subject): x for x in loads}
    for provider in PROVIDERS:
        burst, short = (
            by.get((provider, "burst", "gateway")),
            by.get((provider, "short", "gateway")),
        )
        if burst and short and burst.tokens:
            beyond = short.ms_per_request - burst.us_per_chunk / 1e3
            print(
                f"  {provider}: gateway CPU per request beyond its one chunk: {beyond:.3f} ms "
                f"(short answer {short.ms_per_request:.3f} ms - burst chunk "
                f"{burst.us_per_chunk / 1e3:.3f} ms)"
            )


def print_many(loads: list[Load], a: argparse.Namespace) -> None:
    print(
        f"\nMany paced answers: {a.many} at once over {a.many_conns} connections, "
        f"{a.slow_tps:g} chunks/s each, {a.slow_chunks} chunks per answer, OpenAI-compatible:"
    )
    print(
        "  (late: frame arrival minus the upstream's schedule, request sent + i / tps; delivered:"
        " answers ended in the window with every chunk, in order)"
    )
    print(
        f"  {'path':<16} {'chunks/s':>9} {'CPU %':>6} {'µs/chunk':>9} {'delivered':>10} "
        f"{'late p50':>9} {'p99':>8} {'max':>8} {'frames/chunk':>12}  failures"
    )
    for x in loads:
        ended = x.completed + x.errors
        late = [v * 1e3 for v in x.lateness]
        print(
            f"  {x.subject:<16} {x.tokens / x.seconds:9.0f} {100 * x.cpu / x.seconds:6.0f} "
            f"{x.us_per_chunk:9.1f} {100 * (x.completed - x.wrong) / max(ended, 1):9.1f}% "
            f"{pct(late, 0.5):8.1f}ms {pct(late, 0.99):6.1f}ms {max(late, default=0):6.1f}ms "
            f"{x.frames / max(x.tokens, 1):12.3f}  {x.failures or ''}"
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


# --------------------------------------------------------------------------------------------
# Main


async def main_async(a: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="bench-providers-"))
    try:
        import uvloop  # noqa: F401

        loops = ["asyncio", "uvloop"] if not a.no_uvloop else ["asyncio"]
    except ImportError:
        loops = ["asyncio"]
    print(
        f"bench/providers.py: {a.chunks} chunks per answer, {a.streams} streams, {a.seconds:g} s "
        f"windows, paced {a.tps:g}/s, many {a.many} x {a.slow_tps:g}/s; {os.cpu_count()} cores; "
        f"gateway at {revision()} ({', '.join(loops)}); logs in {workdir}",
        flush=True,
    )
    fake_args = ["_fake", "--chunks", str(a.chunks), "--slow-chunks", str(a.slow_chunks)]
    fake_args += ["--first-gap", str(a.first_gap), "--tps", str(a.tps)]
    fake_args += ["--slow-tps", str(a.slow_tps)]
    _, fake_port = await start_child(workdir, "fake", fake_args, "fake listening on")
    floor, floor_port = await start_child(
        workdir, "floor", ["_floor", "--upstream", str(fake_port)], "floor listening on"
    )
    subjects = [Subject("floor", floor_port, floor.pid), Subject("SDK direct")]
    for loop in loops:
        gw, gw_port = await start_gateway(workdir, fake_port, loop)
        name = "gateway" if loop == "asyncio" else "gateway uvloop"
        subjects.append(Subject(name, gw_port, gw.pid))
    bg = Background([p.pid for p in _children], a.quiet_wait)
    ttfts: dict[str, dict[str, list[float]]] = {}
    loads: list[Load] = []
    many: list[Load] = []
    for provider in PROVIDERS:
        if "ttft" in a.only:
            async with bg.phase(f"TTFT {provider}"):
                ttfts[provider] = await measure_ttft(provider, subjects, fake_port, a)
            print(f"  TTFT {provider} done", flush=True)
        for mode in ("burst", "short", "paced"):
            if mode not in a.only:
                continue
            for s in subjects:
                async with bg.phase(f"{provider} {mode} {s.name}"):
                    loads.append(
                        await run_load(
                            provider,
                            mode,
                            s,
                            fake_port,
                            streams=a.streams,
                            connections=a.streams,
                            expected=1 if mode == "short" else a.chunks,
                            seconds=a.seconds,
                            warmup=a.warmup,
                            interval=1 / a.tps if mode == "paced" else 0.0,
                        )
                    )
            print(f"  {provider} {mode} done", flush=True)
    for s in subjects:
        if not s.pid or "many" not in a.only:
            continue  # the SDK cannot keep up with thousands of chunks per second
        async with bg.phase(f"many {s.name}"):
            many.append(
                await run_load(
                    "openai",
                    "slow",
                    s,
                    fake_port,
                    streams=a.many,
                    connections=a.many_conns,
                    expected=a.slow_chunks,
                    seconds=a.many_seconds,
                    warmup=a.many_warmup,
                    interval=1 / a.slow_tps,
                    late=True,
                )
            )
        print(f"  many {s.name} done", flush=True)
    for provider, ttft in ttfts.items():
        print_ttft(provider, ttft)
    print(
        "\nThroughput (burst: whole answers in one write; short: one chunk; paced: "
        f"{a.tps:g} chunks/s per stream):"
    )
    print_loads(loads)
    if many:
        print_many(many, a)
    bg.report()
    print("Figures from a shared machine: compare rows within this run, not across runs.")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("_fake", "_floor"):
        p = argparse.ArgumentParser()
        p.add_argument("role")
        p.add_argument("--chunks", type=int, default=200)
        p.add_argument("--slow-chunks", type=int, default=60)
        p.add_argument("--first-gap", type=float, default=20.0)
        p.add_argument("--tps", type=float, default=50.0)
        p.add_argument("--slow-tps", type=float, default=20.0)
        p.add_argument("--upstream", type=int, default=0)
        f = p.parse_args()
        f.first_gap /= 1e3
        if f.role == "_fake":
            asyncio.run(run_fake(f))
        else:
            asyncio.run(run_floor(f.upstream))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run, about a minute")
    parser.add_argument("--chunks", type=int, default=200, help="chunks per answer")
    parser.add_argument("--requests", type=int, default=100, help="TTFT requests per path")
    parser.add_argument("--streams", type=int, default=50, help="concurrent streams")
    parser.add_argument("--seconds", type=float, default=3.0, help="measuring window")
    parser.add_argument("--tps", type=float, default=50.0, help="paced: chunks/s per stream")
    parser.add_argument("--first-gap", type=float, default=20.0, help="ms after the 1st token")
    parser.add_argument("--many", type=int, default=1000, help="many: concurrent answers")
    parser.add_argument("--many-conns", type=int, default=250, help="many: connections")
    parser.add_argument("--slow-tps", type=float, default=20.0, help="many: chunks/s each")
    parser.add_argument("--slow-chunks", type=int, default=60, help="many: chunks per answer")
    parser.add_argument("--many-seconds", type=float, default=8.0)
    parser.add_argument("--no-uvloop", action="store_true", help="skip the uvloop gateway")
    parser.add_argument(
        "--only", default="ttft,burst,short,paced,many", help="phases to run (comma-separated)"
    )
    parser.add_argument("--quiet-wait", type=float, default=20.0, help="s to wait for quiet")
    a = parser.parse_args()
    a.only = set(a.only.split(","))
    a.warmup_requests, a.warmup, a.many_warmup, a.ttft_budget = 10, 1.0, 3.0, 20.0
    if a.quick:
        a.requests, a.seconds, a.many, a.many_conns, a.many_seconds = 20, 1.0, 200, 50, 3.0
        a.warmup_requests, a.warmup, a.many_warmup, a.ttft_budget, a.quiet_wait = (
            3,
            0.5,
            2.0,
            5.0,
            0.0,
        )
    try:
        asyncio.run(main_async(a))
    finally:
        kill_all()


if __name__ == "__main__":
    main()
