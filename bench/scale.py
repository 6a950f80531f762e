"""Test (s) of bench/run.py: what the Redis store and `--workers 2` cost and give.

Three gateway set-ups, each a fresh server, back to back:

  memory     one process, memory store (the baseline)
  redis      one process, Redis store (a private redis-server started here)
  redis-w2   `gateway serve --workers 2`, Redis store

For each: streamed frames/s (the flood scenario of test a) and JSON-RPC round
trips/s (`chat.getCurrentModel`, the rpc scenario of test c, which reads the
session: one Redis round trip per call), with the gateway's CPU per call
(all its processes; the redis-server's CPU is reported separately). Then
memory of idle authenticated connections: ``idle_conns`` spread over the two
workers of `redis-w2` against the raw websockets server, in two waves like
test d (the figure is RSS growth over the second wave per connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import run as runlib
from procstat import proc_cpu, proc_rss_kb

__all__ = ["SCALE_FULL", "SCALE_QUICK", "report", "test_s"]

SETUPS = ("memory", "redis", "redis-w2")


@dataclass
class ScalePlan:
    flood_conns: int
    rpc_clients: int
    warmup: float
    seconds: float
    idle_conns: int


SCALE_FULL = ScalePlan(flood_conns=100, rpc_clients=50, warmup=2.0, seconds=6.0, idle_conns=10_000)
SCALE_QUICK = ScalePlan(flood_conns=20, rpc_clients=10, warmup=0.5, seconds=2.0, idle_conns=1000)


class RedisProc:
    """A private redis-server on a free port (never the shared one on 6379)."""

    def __init__(self, workdir: Path) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        # fmt: off
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(workdir),
             "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        # fmt: on
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def cpu(self) -> float:
        return proc_cpu(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def _children(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(p) for p in fh.read().split()]
    return []


class GatewaySetup(runlib.Server):
    """A gateway in one of :data:`SETUPS`; CPU and RSS summed over its processes."""

    def __init__(self, setup: str, users: int, workdir: Path, redis: RedisProc | None) -> None:
        super().__init__("gateway", users, workdir)
        self.setup = setup
        self.redis = redis
        self.workers = 2 if setup.endswith("-w2") else 1

    async def start(self, timeout: float = 60.0) -> None:
        await runlib.Quiet.wait()
        env = dict(os.environ)
        env["GATEWAY_API_KEYS"] = ",".join(f"u{i}:t{i}" for i in range(self.users))
        env["GATEWAY_LOG_LEVEL"] = "WARNING"
        if self.redis is not None:
            env["GATEWAY_REDIS_URL"] = self.redis.url
        cmd = [sys.executable, "-m", "gateway", "serve", "--port", "0"]
        cmd += ["--config", str(runlib.HERE / "gateway.toml"), "--workers", str(self.workers)]
        out = self.workdir / f"{self.setup}-{time.monotonic_ns()}.out"
        self.out_path, self.err_path = out, out.with_suffix(".err")
        with open(out, "wb") as fo, open(self.err_path, "wb") as fe:
            self.proc = await asyncio.create_subprocess_exec(
                *cmd,
                cwd=runlib.ROOT,
                env=env,
                stdout=fo,
                stderr=fe,
                stdin=subprocess.DEVNULL,
                preexec_fn=runlib._child_setup,
            )
        runlib._children.add(self.proc.pid)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = [ln for ln in out.read_text(errors="replace").splitlines() if "listening" in ln]
            if len(lines) >= self.workers:
                self.port = int(lines[0].rsplit(":", 1)[1].split("/")[0])
                return
            if self.proc.returncode is not None:
                break
            await asyncio.sleep(0.05)
        raise RuntimeError(f"{self.setup} did not start: {self.log_tail(20)}")

    def pids(self) -> list[int]:
        return [self.pid, *_children(self.pid)] if self.workers > 1 else [self.pid]

    def cpu(self) -> float:
        return sum(proc_cpu(p) for p in self.pids())

    def rss_kb(self) -> int:
        return sum(proc_rss_kb(p) for p in self.pids())


async def _measure(
    server: GatewaySetup | runlib.Server,
    scenario: str,
    count: int,
    plan: ScalePlan,
    workdir: Path,
    redis: RedisProc | None,
) -> dict[str, Any]:
    procs = await runlib.start_loads(
        2, server.port, scenario, count, workdir, model=runlib.FAST, concurrency=32
    )
    try:
        ready = await runlib.all_ready(procs, 120)
        for p in procs:
            p.send("GO")
        await asyncio.sleep(plan.warmup)
        r1 = redis.cpu() if redis else 0.0
        m1 = await runlib.mark(procs, server)  # type: ignore[arg-type]
        await asyncio.sleep(plan.seconds)
        m2 = await runlib.mark(procs, server)  # type: ignore[arg-type]
        r2 = redis.cpu() if redis else 0.0
        results = await runlib.finish(procs, 60)
    finally:
        for p in procs:
            await p.stop()
    w = runlib._window(m1, m2)
    unit = "frames" if scenario == "flood" else "calls"
    done = m2[unit] - m1[unit]
    return {
        **w,
        "connected": ready["connected"],
        "per_s": done / w["seconds"],
        "cpu_us": w["server_cpu"] / done * 1e6 if done else float("nan"),
        "redis_cpu_us": (r2 - r1) / done * 1e6 if done else float("nan"),
        "errors": {**ready["errors"], **runlib.merge_errors(results)},
    }


async def _idle_memory(server: runlib.Server, n: int, workdir: Path) -> dict[str, Any]:
    """RSS growth per connection over the second wave of ``n`` idle authenticated sockets."""
    procs: list[runlib.LoadProc] = []
    first = 0
    shares = [n // 2 + n % 2, n // 2]
    wave1 = 0
    try:
        for count in shares:
            w1 = max(1, round(count * runlib.WAVE1))
            wave1 += w1
            procs.append(
                await runlib.LoadProc.start(
                    server.port,
                    "idle",
                    first,
                    count,
                    workdir,
                    model=runlib.FAST,
                    concurrency=32,
                    timeout=120,
                    waves=f"{w1},{count - w1}",
                )
            )
            first += count
        ready1 = await runlib.all_ready(procs, 300)
        await asyncio.sleep(2.0)
        rss1 = server.rss_kb()
        for p in procs:
            p.send("MORE")
        ready2 = await runlib.all_ready(procs, 300)
        await asyncio.sleep(2.0)
        rss2 = server.rss_kb()
    finally:
        for p in procs:
            await p.stop()
    wave2 = ready2["connected"]
    return {
        "connected": ready1["connected"] + wave2,
        "failed": ready1["failed"] + ready2["failed"],
        "kb_per_conn": (rss2 - rss1) / wave2 if wave2 else float("nan"),
        "rss_kb": rss2,
        "errors": {**ready1["errors"], **ready2["errors"]},
    }


async def test_s(
    plan: ScalePlan, workdir: Path, users: int, log: Any, repeat: int = 1
) -> dict[str, Any]:
    """``repeat`` rounds of the three set-ups in turn; throughput and CPU are medians."""
    out: dict[str, Any] = {}
    runs: dict[str, list[dict[str, Any]]] = {}
    users = max(users, plan.idle_conns + 1)
    for round_ in range(repeat):
        for setup in SETUPS:
            redis = RedisProc(workdir) if setup != "memory" else None
            server = GatewaySetup(setup, users, workdir, redis)
            try:
                await server.start()
                await runlib.warm_up(server, users - 1)
                for scenario, count in (("flood", plan.flood_conns), ("rpc", plan.rpc_clients)):
                    r = await _measure(server, scenario, count, plan, workdir, redis)
                    runs.setdefault(f"{setup}/{scenario}", []).append(r)
                    unit = "frames" if scenario == "flood" else "calls"
                    log(
                        f"  (s) {setup:8s} {r['per_s']:8.0f} {unit}/s"
                        f" {r['cpu_us']:6.1f} us/{unit[:-1]}"
                        f" (redis-server {r['redis_cpu_us']:.1f}) server"
                        f" {r['server_cores']:.2f} cores, clients {r['client_cores']:.2f},"
                        f" other {r['other_cores']:.2f}"
                        + (f" errors {r['errors']}" if r["errors"] else "")
                    )
                if setup == "redis-w2" and round_ == repeat - 1:
                    r = out["redis-w2/idle"] = await _idle_memory(server, plan.idle_conns, workdir)
                    log(f"  (s) {setup:8s} {r['connected']} idle: {r['kb_per_conn']:.1f} KiB/conn")
            finally:
                await server.stop()
                if redis is not None:
                    redis.stop()
    for key, rows in runs.items():
        out[key] = _medians(rows)
    raw = runlib.Server("raw", users, workdir)
    try:
        await raw.start()
        r = out["raw/idle"] = await _idle_memory(raw, plan.idle_conns, workdir)
        log(f"  (s) raw      {r['connected']} idle: {r['kb_per_conn']:.1f} KiB/conn")
    finally:
        await raw.stop()
    return out


def _medians(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The median run by throughput, with the median CPU figures and every run's values."""
    chosen = runlib.median_run(rows, "per_s")
    for key in ("cpu_us", "redis_cpu_us", "other_cores"):
        values = sorted(r[key] for r in rows)
        chosen[key] = values[(len(values) - 1) // 2]
        chosen[f"{key}_runs"] = [round(r[key], 2) for r in rows]
    return chosen


def report(res: dict[str, Any]) -> str:
    def row(label: str, key: str, unit: str) -> list[str]:
        base = res["memory/" + key]
        lines = [f"{label} ({unit}/s; server CPU µs per {unit[:-1]}; ratio to memory)"]
        for setup in SETUPS:
            r = res[f"{setup}/{key}"]
            extra = f" + redis-server {r['redis_cpu_us']:.1f}" if setup != "memory" else ""
            lines.append(
                f"  {setup:9s} {r['per_s']:9,.0f}  {r['per_s'] / base['per_s']:5.2f}x"
                f"   {r['cpu_us']:6.1f} µs{extra}"
            )
        return lines

    lines = ["(s) Redis store and --workers 2 (one run, same machine; medians of the rounds)"]
    lines += row("streamed frames", "flood", "frames")
    lines += row("round trips", "rpc", "calls")
    for setup in SETUPS:
        for key in ("flood", "rpc"):
            r = res[f"{setup}/{key}"]
            if len(r.get("runs", ())) > 1:
                lines.append(
                    f"  {setup}/{key}: per s {r['runs']}, CPU µs {r['cpu_us_runs']},"
                    f" other cores {r['other_cores_runs']}"
                )
    w2, raw = res["redis-w2/idle"], res["raw/idle"]
    ratio = w2["kb_per_conn"] / raw["kb_per_conn"] if raw["kb_per_conn"] else float("nan")
    lines.append(
        f"idle authenticated connections: redis-w2 {w2['connected']} at "
        f"{w2['kb_per_conn']:.1f} KiB/conn vs raw {raw['connected']} at "
        f"{raw['kb_per_conn']:.1f} KiB/conn = {ratio:.2f}x (target <= 1.3x)"
    )
    return "\n".join(lines)
