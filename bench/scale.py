"""Test (s) of bench/run.py: what the Redis store and `--workers 2` cost and give.

Three gateway set-ups, fresh servers in each round:

  memory     one process, memory store (the baseline)
  redis      one process, Redis store (a private redis-server started here)
  redis-w2   `gateway serve --workers 2`, Redis store

``memory`` and ``redis`` run side by side: both up and loaded at once and
measured in the same window (this machine's speed drifts by up to 50 % within
a minute; one after the other, the ratio compared that drift), and the
reported ratio is the median over rounds of redis / memory within a round.
``redis-w2`` runs after them on its own (two processes beside two others
would take two shares of the cores), so its ratio spans two windows.

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
import statistics
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
    servers: list[GatewaySetup], scenario: str, count: int, plan: ScalePlan, workdir: Path
) -> list[dict[str, Any]]:
    """One window of ``scenario`` on every server at once, each under its own load."""
    groups = []
    try:
        for server in servers:
            procs = await runlib.start_loads(
                2, server.port, scenario, count, workdir, model=runlib.FAST, concurrency=32
            )
            groups.append((server, procs))
        windows = await runlib.measure_windows(groups, plan.warmup, plan.seconds)  # type: ignore[arg-type]
    finally:
        for _, procs in groups:
            for p in procs:
                await p.stop()
    out = []
    for ready, m1, m2, results in windows:
        w = runlib._window(m1, m2)
        unit = "frames" if scenario == "flood" else "calls"
        done = m2[unit] - m1[unit]
        redis_cpu = m2["redis_cpu"] - m1["redis_cpu"]
        out.append({
            **w,
            "connected": ready["connected"],
            "per_s": done / w["seconds"],
            "cpu_us": w["server_cpu"] / done * 1e6 if done else float("nan"),
            "redis_cpu_us": redis_cpu / done * 1e6 if done else float("nan"),
            "errors": {**ready["errors"], **runlib.merge_errors(results)},
        })  # fmt: skip
    return out


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
        # memory and redis side by side (one process each: an equal share of the cores);
        # then redis-w2 alone (two processes would take two shares).
        for batch in (SETUPS[:2], SETUPS[2:]):
            redises = {setup: RedisProc(workdir) for setup in batch if setup != "memory"}
            servers = [GatewaySetup(setup, users, workdir, redises.get(setup)) for setup in batch]
            try:
                for server in servers:
                    await server.start()
                    await runlib.warm_up(server, users - 1)
                for scenario, count in (("flood", plan.flood_conns), ("rpc", plan.rpc_clients)):
                    results = await _measure(servers, scenario, count, plan, workdir)
                    for server, r in zip(servers, results, strict=True):
                        runs.setdefault(f"{server.setup}/{scenario}", []).append(r)
                        unit = "frames" if scenario == "flood" else "calls"
                        log(
                            f"  (s) {server.setup:8s} {r['per_s']:8.0f} {unit}/s"
                            f" {r['cpu_us']:6.1f} us/{unit[:-1]}"
                            f" (redis-server {r['redis_cpu_us']:.1f}) server"
                            f" {r['server_cores']:.2f} cores, clients {r['client_cores']:.2f},"
                            f" other {r['other_cores']:.2f}"
                            + (f" errors {r['errors']}" if r["errors"] else "")
                        )
                w2 = servers[0]
                if w2.setup == "redis-w2" and round_ == repeat - 1:
                    r = out["redis-w2/idle"] = await _idle_memory(w2, plan.idle_conns, workdir)
                    log(f"  (s) redis-w2 {r['connected']} idle: {r['kb_per_conn']:.1f} KiB/conn")
            finally:
                for server in servers:
                    await server.stop()
                for redis in redises.values():
                    redis.stop()
    for key, rows in runs.items():
        out[key] = _medians(rows)
        # Per round, then the median: memory and redis ran side by side in each round.
        base = runs["memory/" + key.split("/")[1]]
        out[key]["ratio"] = statistics.median(
            r["per_s"] / b["per_s"] for r, b in zip(rows, base, strict=True)
        )
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
        lines = [f"{label} ({unit}/s; server CPU µs per {unit[:-1]}; ratio to memory)"]
        for setup in SETUPS:
            r = res[f"{setup}/{key}"]
            extra = f" + redis-server {r['redis_cpu_us']:.1f}" if setup != "memory" else ""
            lines.append(
                f"  {setup:9s} {r['per_s']:9,.0f}  {r['ratio']:5.2f}x"
                f"   {r['cpu_us']:6.1f} µs{extra}"
            )
        return lines

    lines = [
        "(s) Redis store and --workers 2 (medians of the rounds; memory and redis side by side,"
        " ratio per round; redis-w2 alone after them)"
    ]
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
