"""The gateway benchmark suite: gateway vs a raw websockets+orjson server, one command.

    .venv/bin/python bench/run.py            # full run, about 9 minutes
    .venv/bin/python bench/run.py --quick    # smoke run, about a minute
    .venv/bin/python bench/run.py --only s   # Redis store and --workers 2 (bench/scale.py)

Both servers run as subprocesses on 127.0.0.1; client load comes from
separate processes (bench/load.py). Each test starts a fresh server of each
kind, raw first then gateway, back to back. Nothing is asserted: the figures
are printed with pass/fail against the targets. See bench/README.md for the
method.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import ctypes
import datetime
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import load as loadlib  # noqa: E402
from procstat import proc_cpu, proc_rss_kb, system_busy  # noqa: E402

PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
KINDS = ("raw", "gateway")
FAST, PACED = "offline-fast", "offline-paced20"
TPS = 20.0
WAVE1 = 0.4
"""(d) share of the connections opened first; RSS growth is measured over the rest."""

_children: set[int] = set()

# Runs `gateway serve` under cProfile timed by CPU time (wall time would charge the
# profiled process for the time other processes hold the two cores).
_PROFILE_SNIPPET = """
import cProfile, sys, time
from gateway.cli import main
out = sys.argv[1]
prof = cProfile.Profile(time.process_time)
try:
    prof.runcall(main, sys.argv[2:])
finally:
    prof.dump_stats(out)
"""


# Processes


def _child_setup() -> None:
    """In every child: die with the parent, and allow many open files."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    loadlib.raise_nofile()


def _kill_all() -> None:
    for pid in list(_children):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
        _children.discard(pid)


atexit.register(_kill_all)


class Quiet:
    """Optionally wait, before each server starts, for other processes to leave the cores."""

    max_wait = 0.0
    threshold = 0.25
    log: Any = print

    @classmethod
    async def wait(cls) -> None:
        if cls.max_wait <= 0:
            return
        t0 = time.monotonic()
        busy = float("nan")
        while time.monotonic() - t0 < cls.max_wait:
            b0, s0 = system_busy(), time.monotonic()
            await asyncio.sleep(1.0)
            busy = (system_busy() - b0) / (time.monotonic() - s0)
            if busy < cls.threshold:
                break
        waited = time.monotonic() - t0
        if waited > 1.5 or busy >= cls.threshold:
            cls.log(f"  waited {waited:.0f}s for a quiet machine: {busy:.2f} cores busy")


class Server:
    """A gateway or raw server subprocess on a free port."""

    profile_dir: Path | None = None
    """When set, the gateway runs under cProfile and writes a .prof file here per start."""

    def __init__(self, kind: str, users: int, workdir: Path) -> None:
        self.kind = kind
        self.users = users
        self.workdir = workdir
        self.proc: asyncio.subprocess.Process | None = None
        self.port = 0
        self.config = HERE / "gateway.toml"
        """The gateway's config file (bench/resume.py swaps in one with the stream log off)."""
        self.env: dict[str, str] = {}
        """Extra environment of the server process."""
        self.args: list[str] = []
        """Extra arguments of ``gateway serve``."""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self, timeout: float = 60.0) -> None:
        await Quiet.wait()
        env = dict(os.environ)
        if self.kind == "gateway":
            cmd = [
                sys.executable,
                "-m",
                "gateway",
                "serve",
                "--port",
                "0",
                "--config",
                str(self.config),
            ]
            if Server.profile_dir is not None:
                prof = Server.profile_dir / f"gateway-{time.strftime('%H%M%S')}.prof"
                cmd[1:3] = ["-c", _PROFILE_SNIPPET, str(prof)]
            env["GATEWAY_API_KEYS"] = ",".join(f"u{i}:t{i}" for i in range(self.users))
            cmd += self.args
        else:
            cmd = [sys.executable, str(HERE / "raw_server.py"), "--port", "0"]
        env.update(self.env)
        out = self.workdir / f"{self.kind}-{time.monotonic_ns()}.out"
        err = out.with_suffix(".err")
        self.out_path, self.err_path = out, err
        with open(out, "wb") as fo, open(err, "wb") as fe:
            self.proc = await asyncio.create_subprocess_exec(
                *cmd,
                cwd=ROOT,
                env=env,
                stdout=fo,
                stderr=fe,
                stdin=subprocess.DEVNULL,
                preexec_fn=_child_setup,
            )
        _children.add(self.proc.pid)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(out, errors="replace") as fh:
                text = fh.read()
            for line in text.splitlines():
                if "listening on ws://" in line:
                    self.port = int(line.rsplit(":", 1)[1].split("/")[0])
                    return
            if self.proc.returncode is not None:
                break
            await asyncio.sleep(0.05)
        raise RuntimeError(
            f"{self.kind} server did not start: {err.read_text(errors='replace')[-2000:]}"
        )

    def cpu(self) -> float:
        return proc_cpu(self.pid)

    def rss_kb(self) -> int:
        return proc_rss_kb(self.pid)

    async def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 20)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.proc.wait(), 5)
        _children.discard(self.proc.pid)

    def log_tail(self, n: int = 5) -> list[str]:
        with contextlib.suppress(OSError):
            return self.err_path.read_text(errors="replace").splitlines()[-n:]
        return []


class LoadProc:
    """One bench/load.py process, driven by stdin/stdout lines."""

    def __init__(self, proc: asyncio.subprocess.Process, out: Path) -> None:
        self.proc = proc
        self.out = out

    @classmethod
    async def start(
        cls, port: int, scenario: str, first: int, count: int, workdir: Path, **opts: Any
    ) -> LoadProc:
        out = workdir / f"load-{scenario}-{first}-{time.monotonic_ns()}.json"
        args = [
            sys.executable,
            str(HERE / "load.py"),
            "--port",
            str(port),
            "--scenario",
            scenario,
            "--first-user",
            str(first),
            "--count",
            str(count),
            "--out",
            str(out),
        ]
        for key, value in opts.items():
            args += [f"--{key.replace('_', '-')}", str(value)]
        with open(workdir / "load.err", "ab") as err:
            proc = await asyncio.create_subprocess_exec(
                *args,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
                preexec_fn=_child_setup,
                limit=1 << 20,
            )
        _children.add(proc.pid)
        return cls(proc, out)

    async def expect(self, word: str, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            while True:
                line = await self.proc.stdout.readline()
                if not line:
                    raise RuntimeError(f"load process exited while waiting for {word}")
                text = line.decode().strip()
                if text.startswith(word):
                    rest = text[len(word) :].strip()
                    return json.loads(rest) if rest else {}

    def send(self, cmd: str) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.proc.stdin.write((cmd + "\n").encode())

    def result(self) -> dict[str, Any]:
        return json.loads(self.out.read_bytes())

    async def stop(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.proc.wait(), 10)
        _children.discard(self.proc.pid)
        with contextlib.suppress(OSError):
            self.out.unlink()


async def start_loads(
    n_procs: int, port: int, scenario: str, total: int, workdir: Path, **opts: Any
) -> list[LoadProc]:
    n_procs = max(1, min(n_procs, total))
    share = [total // n_procs + (1 if i < total % n_procs else 0) for i in range(n_procs)]
    procs, first = [], 0
    for count in share:
        procs.append(await LoadProc.start(port, scenario, first, count, workdir, **opts))
        first += count
    return procs


async def all_ready(procs: list[LoadProc], timeout: float) -> dict[str, Any]:
    t0 = time.monotonic()
    ready = await asyncio.gather(*(p.expect("READY", timeout) for p in procs))
    errors: dict[str, int] = {}
    for r in ready:
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    return {
        "connected": sum(r["connected"] for r in ready),
        "failed": sum(r["failed"] for r in ready),
        "seconds": time.monotonic() - t0,
        "errors": errors,
    }


async def mark(procs: list[LoadProc], server: Server) -> dict[str, Any]:
    snap = {"t": time.monotonic(), "server_cpu": server.cpu(), "busy": system_busy()}
    redis = getattr(server, "redis", None)  # a gateway on a private redis-server (scale.py)
    snap["redis_cpu"] = redis.cpu() if redis is not None else 0.0
    for p in procs:
        p.send("MARK")
    marks = await asyncio.gather(*(p.expect("MARK", 30) for p in procs))
    for key in ("frames", "words", "streams", "calls", "cpu"):
        snap[key] = sum(m[key] for m in marks)
    return snap


async def finish(procs: list[LoadProc], timeout: float) -> list[dict[str, Any]]:
    for p in procs:
        p.send("STOP")
    await asyncio.gather(*(p.expect("DONE", timeout) for p in procs))
    results = [p.result() for p in procs]
    for p in procs:
        await p.stop()
    return results


async def measure_window(
    procs: list[LoadProc], server: Server, warmup: float, seconds: float
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """Wait for every load process, start them, and mark a window after ``warmup``.

    Returns (ready, first mark, second mark, the load processes' results)."""
    return (await measure_windows([(server, procs)], warmup, seconds))[0]


async def measure_windows(
    groups: list[tuple[Server, list[LoadProc]]], warmup: float, seconds: float
) -> list[tuple[dict[str, Any], dict[str, Any], dict[str, Any], list[dict[str, Any]]]]:
    """:func:`measure_window` for several servers under load at the same time, each with its
    own load processes: one window, the same marks for all (side by side, the machine's
    drift is the same for each)."""
    ready = await asyncio.gather(*(all_ready(procs, 120) for _, procs in groups))
    for _, procs in groups:
        for p in procs:
            p.send("GO")
    await asyncio.sleep(warmup)
    m1 = await asyncio.gather(*(mark(procs, server) for server, procs in groups))
    await asyncio.sleep(seconds)
    m2 = await asyncio.gather(*(mark(procs, server) for server, procs in groups))
    results = await asyncio.gather(*(finish(procs, 60) for _, procs in groups))
    return list(zip(ready, m1, m2, results, strict=True))


def merge_errors(results: list[dict[str, Any]]) -> dict[str, int]:
    errors: dict[str, int] = {}
    for r in results:
        for k, v in r["end"]["errors"].items():
            errors[k] = errors.get(k, 0) + v
        for k, v in r.get("close_codes", {}).items():
            errors[f"close{k}"] = errors.get(f"close{k}", 0) + v
        if r.get("seq_gaps"):
            errors["seq_gaps"] = errors.get("seq_gaps", 0) + r["seq_gaps"]
    return errors


async def warm_up(server: Server, user: int) -> int:
    """One connection: a few fast streams and calls (loads lazy imports, e.g. tiktoken).

    Returns the words of one reply (the same for the paced model: only the
    model's name, one word, differs).
    """
    stats = loadlib.Stats()
    conns, failed = await loadlib.open_conns(
        host="127.0.0.1",
        port=server.port,
        path="/ws",
        tokens=[f"t{user}"],
        stats=stats,
        setup=("chat.setModel", [FAST]),
        concurrency=1,
        timeout=30,
    )
    if failed or not conns:
        raise RuntimeError(f"warm-up could not connect to {server.kind}: {stats.errors}")
    conn = conns[0]
    words = 0
    try:
        async with asyncio.timeout(30):
            for _ in range(3):
                out = await conn.stream("chat.postChat", [loadlib.MESSAGE])
                words = out["words"]
                await conn.call("chat.getCurrentModel")
    finally:
        conn.close()
        await asyncio.sleep(0.2)
    return words


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of an already sorted list."""
    if not values:
        return float("nan")
    idx = min(len(values) - 1, max(0, round(q / 100.0 * (len(values) - 1))))
    return values[idx]


# Tests


@dataclass
class Plan:
    loads: int
    a_conns: int
    a_warmup: float
    a_seconds: float
    c_clients: tuple[int, ...]
    c_warmup: float
    c_seconds: float
    bd_counts: tuple[int, ...]
    b_replies: int
    b_ramp: float
    d_settle: float
    connect_concurrency: int


FULL = Plan(
    loads=2,
    a_conns=100,
    a_warmup=2.0,
    a_seconds=10.0,
    c_clients=(1, 100),
    c_warmup=1.0,
    c_seconds=6.0,
    bd_counts=(1000, 5000),
    b_replies=3,
    b_ramp=1.0,
    d_settle=2.0,
    connect_concurrency=32,
)
QUICK = Plan(
    loads=2,
    a_conns=20,
    a_warmup=1.0,
    a_seconds=3.0,
    c_clients=(1, 20),
    c_warmup=0.5,
    c_seconds=2.0,
    bd_counts=(500,),
    b_replies=1,
    b_ramp=0.5,
    d_settle=1.0,
    connect_concurrency=32,
)


def _window(m1: dict[str, Any], m2: dict[str, Any]) -> dict[str, float]:
    dt = m2["t"] - m1["t"]
    server = m2["server_cpu"] - m1["server_cpu"]
    clients = m2["cpu"] - m1["cpu"]
    busy = m2["busy"] - m1["busy"]
    return {
        "seconds": dt,
        "server_cores": server / dt,
        "client_cores": clients / dt,
        "other_cores": max(0.0, busy - server - clients) / dt,
        "server_cpu": server,
    }


def median_run(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The run with the median ``key`` (the lower middle one for an even count), plus all values."""
    ordered = sorted(runs, key=lambda r: r[key])
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["runs"] = [round(r[key], 1) for r in runs]
    return chosen


async def test_a(
    plan: Plan, workdir: Path, users: int, log: Any, repeat: int = 1
) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
    for kind in [k for _ in range(repeat) for k in KINDS]:
        out: dict[str, Any] = {}
        server = Server(kind, users, workdir)
        procs: list[LoadProc] = []
        try:
            await server.start()
            await warm_up(server, users - 1)
            procs = await start_loads(
                plan.loads,
                server.port,
                "flood",
                plan.a_conns,
                workdir,
                model=FAST,
                concurrency=plan.connect_concurrency,
            )
            ready, m1, m2, results = await measure_window(
                procs, server, plan.a_warmup, plan.a_seconds
            )
            w = _window(m1, m2)
            frames = m2["frames"] - m1["frames"]
            words = m2["words"] - m1["words"]
            out[kind] = {
                **w,
                "connected": ready["connected"],
                "frames_per_s": frames / w["seconds"],
                "words_per_s": words / w["seconds"],
                "streams_per_s": (m2["streams"] - m1["streams"]) / w["seconds"],
                "cpu_us_per_frame": w["server_cpu"] / frames * 1e6 if frames else float("nan"),
                "cpu_us_per_word": w["server_cpu"] / words * 1e6 if words else float("nan"),
                "errors": {**ready["errors"], **merge_errors(results)},
            }
            log(
                f"  (a) {kind:7s} {out[kind]['frames_per_s']:9.0f} frames/s "
                f"{out[kind]['cpu_us_per_frame']:6.1f} us/frame  server {w['server_cores']:.2f} "
                f"cores, clients {w['client_cores']:.2f}, other {w['other_cores']:.2f}"
            )
            runs[kind].append(out[kind])
        finally:
            for p in procs:
                await p.stop()
            await server.stop()
    return {kind: median_run(runs[kind], "frames_per_s") for kind in KINDS}


async def test_c(
    plan: Plan, workdir: Path, users: int, log: Any, repeat: int = 1
) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {}
    for kind in [k for _ in range(repeat) for k in KINDS]:
        out: dict[str, Any] = {}
        server = Server(kind, users, workdir)
        try:
            await server.start()
            await warm_up(server, users - 1)
            for clients in plan.c_clients:
                procs: list[LoadProc] = []
                try:
                    procs = await start_loads(
                        plan.loads,
                        server.port,
                        "rpc",
                        clients,
                        workdir,
                        model=FAST,
                        concurrency=plan.connect_concurrency,
                    )
                    ready, m1, m2, results = await measure_window(
                        procs, server, plan.c_warmup, plan.c_seconds
                    )
                finally:
                    for p in procs:
                        await p.stop()
                w = _window(m1, m2)
                calls = m2["calls"] - m1["calls"]
                out[f"{kind}/{clients}"] = {
                    **w,
                    "connected": ready["connected"],
                    "calls_per_s": calls / w["seconds"],
                    "cpu_us_per_call": w["server_cpu"] / calls * 1e6 if calls else float("nan"),
                    "errors": {**ready["errors"], **merge_errors(results)},
                }
                r = out[f"{kind}/{clients}"]
                log(
                    f"  (c) {kind:7s} {clients:4d} clients {r['calls_per_s']:8.0f} calls/s "
                    f"{r['cpu_us_per_call']:6.1f} us/call  server {w['server_cores']:.2f} cores, "
                    f"clients {w['client_cores']:.2f}, other {w['other_cores']:.2f}"
                )
                runs.setdefault(f"{kind}/{clients}", []).append(r)
        finally:
            await server.stop()
    return {key: median_run(value, "calls_per_s") for key, value in runs.items()}


async def test_bd(plan: Plan, workdir: Path, users: int, log: Any) -> dict[str, Any]:
    """(d) then (b) on the same connections, a fresh server per count and kind.

    Memory: the connections open in two waves, 40% then 60%; the figure is the
    RSS growth over the second wave divided by its connections (the first wave
    soaks up memory the warm-up freed, which would otherwise be reused for free).
    """
    out: dict[str, Any] = {}
    interval = 1.0 / TPS
    for n in plan.bd_counts:
        for kind in KINDS:
            server = Server(kind, users, workdir)
            procs: list[LoadProc] = []
            try:
                await server.start()
                words_per_reply = await warm_up(server, users - 1)
                await asyncio.sleep(0.5)
                rss0 = server.rss_kb()
                run_seconds = plan.b_ramp + plan.b_replies * words_per_reply * interval * 1.1 + 2.0
                n_procs = max(1, min(plan.loads, n))
                shares = [n // n_procs + (1 if i < n % n_procs else 0) for i in range(n_procs)]
                first = 0
                wave1 = 0
                for count in shares:
                    w1 = max(1, round(count * WAVE1)) if count > 1 else count
                    waves = f"{w1},{count - w1}" if count - w1 > 0 else str(count)
                    wave1 += w1
                    procs.append(
                        await LoadProc.start(
                            server.port,
                            "paced",
                            first,
                            count,
                            workdir,
                            model=PACED,
                            tps=TPS,
                            replies=plan.b_replies,
                            ramp=plan.b_ramp,
                            deadline=round(run_seconds, 3),
                            concurrency=plan.connect_concurrency,
                            timeout=120,
                            waves=waves,
                        )
                    )
                    first += count
                ready1 = await all_ready(procs, 300)
                await asyncio.sleep(plan.d_settle)
                rss1 = server.rss_kb()
                two_waves = [p for p, c in zip(procs, shares, strict=True) if c > 1]
                for p in two_waves:
                    p.send("MORE")
                ready2 = await all_ready(two_waves, 300) if two_waves else ready1
                await asyncio.sleep(plan.d_settle)
                rss2 = server.rss_kb()
                connected = ready1["connected"] + (ready2["connected"] if two_waves else 0)
                failed = ready1["failed"] + (ready2["failed"] if two_waves else 0)
                wave2 = connected - ready1["connected"]
                connect_seconds = ready1["seconds"] + (ready2["seconds"] if two_waves else 0)
                # (b): paced streams on those same connections.
                m1 = {"t": time.monotonic(), "server_cpu": server.cpu(), "busy": system_busy()}
                for p in procs:
                    p.send("GO")
                await asyncio.gather(*(p.expect("DONE", run_seconds + 120) for p in procs))
                m2 = {"t": time.monotonic(), "server_cpu": server.cpu(), "busy": system_busy()}
                rss3 = server.rss_kb()
                results = [p.result() for p in procs]
                m1["cpu"] = sum(r["start"]["cpu"] for r in results)
                m2["cpu"] = sum(r["end"]["cpu"] for r in results)
                w = _window(m1, m2)
                lateness: list[float] = []
                ttft: list[float] = []
                gaps: list[float] = []
                stream_words: list[int] = []
                frames = words = 0
                for r in results:
                    lateness += r["lateness_ms"]
                    ttft += r["ttft_ms"]
                    gaps += r["gap_excess_ms"]
                    stream_words += r["words_per_stream"]
                    frames += r["end"]["frames"] - r["start"]["frames"]
                    words += r["end"]["words"] - r["start"]["words"]
                lateness.sort()
                ttft.sort()
                gaps.sort()
                expected = connected * plan.b_replies * words_per_reply
                odd = sorted({x for x in stream_words if x != words_per_reply})
                out[f"{kind}/{n}"] = r = {
                    **w,
                    "connections": n,
                    "connected": connected,
                    "connect_failed": failed,
                    "connect_seconds": connect_seconds,
                    "rss_start_kb": rss0,
                    "rss_wave1_kb": rss1,
                    "rss_all_kb": rss2,
                    "rss_after_streams_kb": rss3,
                    "wave1": ready1["connected"],
                    "kb_per_conn": (rss2 - rss1) / wave2 if wave2 else (rss2 - rss0) / connected,
                    "kb_per_conn_all": (rss2 - rss0) / max(1, connected),
                    "words_per_reply": words_per_reply,
                    "odd_stream_lengths": odd[:5],
                    "expected_words": expected,
                    "delivered_words": words,
                    "delivered_pct": 100.0 * words / expected if expected else float("nan"),
                    "frames": frames,
                    "words_per_frame": words / frames if frames else float("nan"),
                    "late_p50_ms": pct(lateness, 50),
                    "late_p99_ms": pct(lateness, 99),
                    "late_max_ms": lateness[-1] if lateness else float("nan"),
                    "gap_p50_ms": pct(gaps, 50),
                    "gap_p99_ms": pct(gaps, 99),
                    "ttft_p50_ms": pct(ttft, 50),
                    "ttft_p99_ms": pct(ttft, 99),
                    "streams_done": len(stream_words),
                    "streams_expected": connected * plan.b_replies,
                    "errors": {**ready1["errors"], **merge_errors(results)},
                }
                log(
                    f"  (d) {kind:7s} {n:5d} conns  RSS {rss0 / 1024:.1f} -> {rss1 / 1024:.1f} -> "
                    f"{rss2 / 1024:.1f} MiB = {r['kb_per_conn']:.1f} KiB/conn (2nd wave; "
                    f"{r['kb_per_conn_all']:.1f} over all) connect {connect_seconds:.1f}s, "
                    f"{connected} ok, {failed} failed"
                )
                log(
                    f"  (b) {kind:7s} {n:5d} streams lateness p50 {r['late_p50_ms']:.1f} ms "
                    f"p99 {r['late_p99_ms']:.1f} ms, gap excess p99 {r['gap_p99_ms']:.1f} ms, "
                    f"TTFT p50 {r['ttft_p50_ms']:.0f} ms, delivered {r['delivered_pct']:.1f}% "
                    f"({r['streams_done']}/{r['streams_expected']} streams), "
                    f"{r['words_per_frame']:.2f} words/frame, server {w['server_cores']:.2f} "
                    f"cores, clients {w['client_cores']:.2f}, other {w['other_cores']:.2f}"
                )
                if r["errors"] or odd:
                    log(f"      errors: {r['errors']} odd stream lengths: {odd[:5]}")
            finally:
                for p in procs:
                    await p.stop()
                await server.stop()
    return out


# Report


def _f(x: float, digits: int = 0) -> str:
    if x != x:  # nan
        return "n/a"
    return f"{x:,.{digits}f}"


def report(res: dict[str, Any], plan: Plan) -> str:
    rows: list[tuple[str, str, str, str, str]] = []

    def ratio(g: float, r: float) -> float:
        return g / r if r else float("nan")

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else ("PASS" if ok else "FAIL")

    def add(
        label: str,
        raw: dict[str, Any],
        gw: dict[str, Any],
        key: str,
        digits: int = 0,
        *,
        compare: bool = False,
        target: str = "",
    ) -> None:
        cmp = _f(ratio(gw[key], raw[key]), 2) if compare else ""
        rows.append((label, _f(raw[key], digits), _f(gw[key], digits), cmp, target))

    def add_cores(label: str, raw: dict[str, Any], gw: dict[str, Any]) -> None:
        def cores(r: dict[str, Any]) -> str:
            return f"{r['server_cores']:.2f}/{r['client_cores']:.2f}/{r['other_cores']:.2f}"

        rows.append((label, cores(raw), cores(gw), "", ""))

    if "a" in res:
        raw, gw = res["a"]["raw"], res["a"]["gateway"]
        rt = ratio(gw["frames_per_s"], raw["frames_per_s"])
        target = f">= 0.60  {verdict(rt >= 0.6)}"
        add(
            f"(a) frames/s, {plan.a_conns} conns",
            raw,
            gw,
            "frames_per_s",
            compare=True,
            target=target,
        )
        rw = ratio(gw["words_per_s"], raw["words_per_s"])
        add(
            "(a) words/s (tokens)",
            raw,
            gw,
            "words_per_s",
            compare=True,
            target=f">= 0.60  {verdict(rw >= 0.6)}",
        )
        rc = ratio(gw["cpu_us_per_frame"], raw["cpu_us_per_frame"])
        add(
            "(a) server CPU us/frame",
            raw,
            gw,
            "cpu_us_per_frame",
            1,
            compare=True,
            target=f"<= 1.67  {verdict(rc <= 1 / 0.6)}",
        )
        add("(a) server CPU us/word", raw, gw, "cpu_us_per_word", 1, compare=True)
        add_cores("(a) server/clients/other cores", raw, gw)
    if "bd" in res:
        for n in plan.bd_counts:
            raw, gw = res["bd"].get(f"raw/{n}"), res["bd"].get(f"gateway/{n}")
            if not raw or not gw:
                continue
            ok = gw["late_p99_ms"] < 50 and gw["delivered_words"] >= gw["expected_words"]
            target = (
                f"p99<50ms, 100%  {verdict(ok)}"
                if n >= 5000
                else (f"(p99<50ms, 100%: {verdict(ok)})")
            )
            add(f"(b) {n} streams p50 lateness ms", raw, gw, "late_p50_ms", 1, compare=True)
            add(
                f"(b) {n} streams p99 lateness ms",
                raw,
                gw,
                "late_p99_ms",
                1,
                compare=True,
                target=target,
            )
            add(f"(b) {n} streams gap excess p99 ms", raw, gw, "gap_p99_ms", 1)
            add(f"(b) {n} streams delivered %", raw, gw, "delivered_pct", 2)
            rows.append(
                (
                    f"(b) {n} streams TTFT p50/p99 ms",
                    f"{_f(raw['ttft_p50_ms'])}/{_f(raw['ttft_p99_ms'])}",
                    f"{_f(gw['ttft_p50_ms'])}/{_f(gw['ttft_p99_ms'])}",
                    "",
                    "",
                )
            )
            add(f"(b) {n} streams words/frame", raw, gw, "words_per_frame", 2)
            add_cores(f"(b) {n} server/clients/other cores", raw, gw)
    if "c" in res:
        for clients in plan.c_clients:
            raw, gw = res["c"].get(f"raw/{clients}"), res["c"].get(f"gateway/{clients}")
            if not raw or not gw:
                continue
            rt = ratio(gw["calls_per_s"], raw["calls_per_s"])
            add(
                f"(c) round trips/s, {clients} client(s)",
                raw,
                gw,
                "calls_per_s",
                compare=True,
                target=f">= 0.60  {verdict(rt >= 0.6)}",
            )
            add(f"(c) server CPU us/call, {clients}", raw, gw, "cpu_us_per_call", 1, compare=True)
    if "bd" in res:
        for n in plan.bd_counts:
            raw, gw = res["bd"].get(f"raw/{n}"), res["bd"].get(f"gateway/{n}")
            if not raw or not gw:
                continue
            rt = ratio(gw["kb_per_conn"], raw["kb_per_conn"])
            add(
                f"(d) RSS KiB per idle conn, {n}",
                raw,
                gw,
                "kb_per_conn",
                1,
                compare=True,
                target=f"<= 1.30  {verdict(rt <= 1.3)}",
            )
    head = ("measure", "raw", "gateway", "gw/raw", "target")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(5)]
    lines = ["  ".join(c.ljust(widths[i]) for i, c in enumerate(head))]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(c.ljust(widths[i]) for i, c in enumerate(row)))
    notes = []
    for test, key in (("a", "frames_per_s"), ("c", "calls_per_s")):
        for name, row in sorted(res.get(test, {}).items()):
            if len(row.get("runs", ())) > 1:
                notes.append(f"  ({test}) {name} {key}: runs {row['runs']}, median shown")
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts, under a minute")
    parser.add_argument(
        "--only",
        default="a,b,c,d,s",
        help="comma-separated tests to run (b and d run together; s: Redis and workers)",
    )
    parser.add_argument("--json", help="also write all figures to this JSON file")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="N",
        help="run (a) and (c) N times, raw and gateway alternating, and report the median run "
        "(s: N rounds of its three set-ups, medians)",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each server start, wait up to SECONDS for the machine's "
        "other processes to use < 0.25 cores (for shared machines)",
    )
    parser.add_argument(
        "--profile-gateway",
        metavar="DIR",
        help="run the gateway under cProfile, one .prof file per server start in "
        "DIR (slows it down: for finding hot spots, not for the figures)",
    )
    args = parser.parse_args(argv)
    if args.profile_gateway:
        Server.profile_dir = Path(args.profile_gateway).resolve()
        Server.profile_dir.mkdir(parents=True, exist_ok=True)
    return args


async def main(args: argparse.Namespace) -> int:
    plan = QUICK if args.quick else FULL
    only = set(args.only.split(","))
    loadlib.raise_nofile()
    users = max((*plan.bd_counts, plan.a_conns, *plan.c_clients)) + 1
    started = time.monotonic()
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    print(
        f"gateway bench {'(quick) ' if args.quick else ''}"
        f"{datetime.datetime.now().isoformat(timespec='seconds')}  "
        f"python {platform.python_version()}  {os.cpu_count()} cores  "
        f"RLIMIT_NOFILE {soft}  {plan.loads} load processes",
        flush=True,
    )

    b0, t0 = system_busy(), time.monotonic()
    await asyncio.sleep(2.0)
    background = (system_busy() - b0) / (time.monotonic() - t0)
    print(
        f"background load before the run: {background:.2f} of {os.cpu_count()} cores busy"
        + (
            "  -- WARNING: the machine is not idle; figures will be skewed"
            if background > 0.25
            else ""
        ),
        flush=True,
    )

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {msg}", flush=True)

    Quiet.max_wait, Quiet.log = args.wait_quiet, log

    res: dict[str, Any] = {"background_cores": background}
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp:
        workdir = Path(tmp)
        try:
            if "a" in only:
                log("(a) streamed frames/s")
                res["a"] = await test_a(plan, workdir, users, log, args.repeat)
            if "c" in only:
                log("(c) JSON-RPC round trips/s")
                res["c"] = await test_c(plan, workdir, users, log, args.repeat)
            if "b" in only or "d" in only:
                log("(b)+(d) idle connections' memory, then paced streams on them")
                res["bd"] = await test_bd(plan, workdir, users, log)
            if "s" in only:
                import scale

                log("(s) memory vs Redis store vs --workers 2; idle memory over 2 workers")
                scale_plan = scale.SCALE_QUICK if args.quick else scale.SCALE_FULL
                res["s"] = await scale.test_s(scale_plan, workdir, users, log, args.repeat)
        finally:
            _kill_all()
            errs = workdir / "load.err"
            if errs.exists() and errs.stat().st_size:
                print("load process stderr (tail):", file=sys.stderr)
                print(
                    "\n".join(errs.read_text(errors="replace").splitlines()[-20:]), file=sys.stderr
                )
    if only & {"a", "b", "c", "d"}:
        print()
        print(report(res, plan))
    if "s" in res:
        import scale

        print()
        print(scale.report(res["s"]))
    print(f"\ntotal {time.monotonic() - started:.0f}s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"plan": plan.__dict__, "results": res}, fh, indent=1, default=str)
    return 0


if __name__ == "__main__":

    def _on_sigterm(*_: object) -> None:
        _kill_all()
        sys.exit(1)

    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in background
    try:
        sys.exit(asyncio.run(main(parse_args())))
    except KeyboardInterrupt:
        _kill_all()
        sys.exit(130)
