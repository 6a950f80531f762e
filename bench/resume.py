"""Resumable streams: streamed frames/s with the stream log on vs off, in one run.

    .venv/bin/python bench/resume.py              # memory and Redis, 3 rounds each, ~1.5 minutes
    .venv/bin/python bench/resume.py --rounds 1   # a smoke run
    .venv/bin/python bench/resume.py --stores redis

The same workload as bench/run.py test (a): ``--conns`` connections (one user
each) call ``chat.postChat`` on ``offline-fast`` back to back, from 2 load
processes (bench/load.py) per server. The gateway runs as ``gateway serve``
with bench/gateway.toml (stream log on, the default) and with the same file
plus ``[streams] enabled = false`` (no log, no resume: the old path). The two
run **side by side**: in each round both are up and loaded at once and
measured in the same window, so the machine's drift (its speed moves by up to
50 % within a minute here; servers measured one after the other compared
that drift, 0.62 to 0.98 for the same code) is the same for both, and the
kernel gives each busy server an equal share of the cores. Reported: the
median over rounds of on/off within a round, and the server's CPU time per
word (off/on). Target: >= 0.85.

``--stores memory,redis`` (the default) runs both: ``memory`` is the embedded
default (the log in the process); ``redis`` gives the gateway a private
redis-server (a free port, started here, one per server and round) through
``GATEWAY_REDIS_URL``, so sessions, leases and the stream log live in Redis.
Its "log off" is the same Redis setup with ``[streams] enabled = false``: the
ratio is what the Redis stream log costs on top of the Redis store. For
Redis, the run also reads the redis-server's ``INFO`` at both marks and
reports, per streamed delta frame, the read events it processed
(``total_reads_processed``: one per request or pipeline that arrives; the
round trips of every kind, sessions and leases included) and the commands.
Target: at most 0.2 round trips per delta with the log on.
Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import load as loadlib  # noqa: E402
import redis  # noqa: E402
import run as runlib  # noqa: E402
import scale  # noqa: E402

TARGET = 0.85
RT_TARGET = 0.2
LOAD_PROCS = 2
"""Load processes per server."""
EXTRA_ON = ""
"""Extra ``[streams]`` settings for the log-on server (``--on-config``)."""


def redis_counts(client: redis.Redis | None) -> dict[str, int]:
    """The redis-server's read events and commands so far (0 without Redis)."""
    if client is None:
        return {"reads": 0, "commands": 0}
    stats = client.info("stats")
    return {"reads": stats["total_reads_processed"], "commands": stats["total_commands_processed"]}


class Subject:
    """One gateway of a round (log on or off), with its own redis-server for ``redis``."""

    def __init__(self, store: str, log_on: bool, conns: int, workdir: Path) -> None:
        self.store, self.log_on = store, log_on
        self.server = runlib.Server("gateway", conns + 1, workdir)
        self.rproc = scale.RedisProc(workdir) if store == "redis" else None
        self.client = redis.Redis(port=self.rproc.port) if self.rproc is not None else None
        if self.rproc is not None:
            self.server.env["GATEWAY_REDIS_URL"] = self.rproc.url
        extra = EXTRA_ON if log_on else "enabled = false\n"
        if extra:
            config = workdir / f"gateway-{'log' if log_on else 'nolog'}.toml"
            config.write_text((HERE / "gateway.toml").read_text() + "\n[streams]\n" + extra)
            self.server.config = config
        self.procs: list[runlib.LoadProc] = []

    async def stop(self) -> None:
        for p in self.procs:
            await p.stop()
        await self.server.stop()
        if self.client is not None:
            self.client.close()
        if self.rproc is not None:
            self.rproc.stop()


async def one_round(
    store: str, conns: int, seconds: float, warmup: float, workdir: Path
) -> list[dict[str, Any]]:
    """Log off and log on side by side: both servers up and loaded at once, one window."""
    subjects = [Subject(store, log_on, conns, workdir) for log_on in (False, True)]
    try:
        for s in subjects:
            await s.server.start()
            await runlib.warm_up(s.server, conns)
        for s in subjects:
            s.procs = await runlib.start_loads(
                LOAD_PROCS, s.server.port, "flood", conns, workdir, model=runlib.FAST,
                concurrency=32,
            )  # fmt: skip
        ready = await asyncio.gather(*(runlib.all_ready(s.procs, 120) for s in subjects))
        for s in subjects:
            for p in s.procs:
                p.send("GO")
        await asyncio.sleep(warmup)
        m1 = await asyncio.gather(*(runlib.mark(s.procs, s.server) for s in subjects))
        r1 = [redis_counts(s.client) for s in subjects]
        await asyncio.sleep(seconds)
        m2 = await asyncio.gather(*(runlib.mark(s.procs, s.server) for s in subjects))
        r2 = [redis_counts(s.client) for s in subjects]
        results = await asyncio.gather(*(runlib.finish(s.procs, 60) for s in subjects))
        out = []
        for i, s in enumerate(subjects):
            dt = m2[i]["t"] - m1[i]["t"]
            frames = m2[i]["frames"] - m1[i]["frames"]
            words = m2[i]["words"] - m1[i]["words"]
            cpu = m2[i]["server_cpu"] - m1[i]["server_cpu"]
            reads = r2[i]["reads"] - r1[i]["reads"] - 1  # minus our own INFO
            commands = r2[i]["commands"] - r1[i]["commands"] - 1
            out.append({
                "store": store,
                "log": s.log_on,
                "rt_per_delta": reads / frames if frames else float("nan"),
                "cmds_per_delta": commands / frames if frames else 0.0,
                "connected": ready[i]["connected"],
                "frames_per_s": frames / dt,
                "words_per_s": words / dt,
                "streams_per_s": (m2[i]["streams"] - m1[i]["streams"]) / dt,
                "server_cores": cpu / dt,
                "cpu_us_per_word": cpu / words * 1e6 if words else float("nan"),
                "errors": {**ready[i]["errors"], **runlib.merge_errors(results[i])},
            })  # fmt: skip
        return out
    finally:
        for s in subjects:
            await s.stop()


async def main(args: argparse.Namespace) -> int:
    loadlib.raise_nofile()
    started = time.monotonic()
    stores = [name.strip() for name in args.stores.split(",") if name.strip()]
    rounds: dict[tuple[str, bool], list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="gateway-bench-resume-") as tmp:
        try:
            for _ in range(args.rounds):
                for store in stores:
                    pair = await one_round(store, args.conns, args.seconds, args.warmup, Path(tmp))
                    for r in pair:
                        rounds.setdefault((store, r["log"]), []).append(r)
                        rt = f"  {r['rt_per_delta']:.3f} redis rt/delta" if store == "redis" else ""
                        print(
                            f"[{time.monotonic() - started:5.0f}s] {store:6} log "
                            f"{'on ' if r['log'] else 'off'} {r['frames_per_s']:8.0f} frames/s "
                            f"{r['words_per_s']:9.0f} words/s {r['streams_per_s']:6.0f} streams/s"
                            f"  server {r['server_cores']:.2f} cores "
                            f"{r['cpu_us_per_word']:.1f} us/word{rt}  errors {r['errors']}",
                            flush=True,
                        )
        finally:
            runlib._kill_all()
    for store in stores:
        print(report(store, rounds[(store, False)], rounds[(store, True)], args.conns))
    print(f"\ntotal {time.monotonic() - started:.0f}s")
    return 0


def report(store: str, offs: list[dict[str, Any]], ons: list[dict[str, Any]], conns: int) -> str:
    def med(rows: list[dict[str, Any]], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    n = len(offs)
    lines = [
        "",
        f"| {store} store, {conns} connections, offline-fast "
        "| log off | log on | on/off | target |",
        "|---|---|---|---|---|",
    ]
    for key, label in (
        ("frames_per_s", "frames/s"),
        ("words_per_s", "words/s"),
        ("streams_per_s", "answers/s"),
    ):
        off, on = med(offs, key), med(ons, key)
        # Per round (the two ran side by side), then the median.
        ratio = statistics.median(
            b[key] / a[key] if a[key] else 0.0 for a, b in zip(offs, ons, strict=True)
        )
        target = f">= {TARGET}" if key == "frames_per_s" else ""
        verdict = ("PASS" if ratio >= TARGET else "FAIL") if target else ""
        lines.append(f"| {label} (median of {n}) | {off:.0f} | {on:.0f} | {ratio:.2f} {verdict} "
                     f"| {target} |")  # fmt: skip
    # CPU per word is the figure a loaded machine skews least (frames/s depends on the cores
    # the server got); as a throughput ratio it is off/on.
    off, on = med(offs, "cpu_us_per_word"), med(ons, "cpu_us_per_word")
    ratio = statistics.median(
        a["cpu_us_per_word"] / b["cpu_us_per_word"] for a, b in zip(offs, ons, strict=True)
    )
    lines.append(f"| server CPU us/word (median) | {off:.1f} | {on:.1f} | {ratio:.2f} (off/on) | |")
    if store == "redis":
        off, on = med(offs, "rt_per_delta"), med(ons, "rt_per_delta")
        verdict = "PASS" if on <= RT_TARGET else "FAIL"
        lines.append(f"| Redis round trips per delta (median) | {off:.3f} | {on:.3f} | {verdict} "
                     f"| <= {RT_TARGET} |")  # fmt: skip
        off, on = med(offs, "cmds_per_delta"), med(ons, "cmds_per_delta")
        lines.append(f"| Redis commands per delta (median) | {off:.3f} | {on:.3f} | | |")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rounds", type=int, default=3, help="side-by-side on/off rounds (median reported)"
    )
    parser.add_argument("--conns", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=8.0, help="measured window per round")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--stores", default="memory,redis", help="memory, redis or both")
    parser.add_argument(
        "--on-config",
        default="",
        help='extra [streams] lines for the log-on server ("a = 1; b = 2")',
    )
    parser.add_argument("--profile-gateway", metavar="DIR", help="as in bench/run.py")
    return parser.parse_args()


if __name__ == "__main__":
    args = parse_args()
    if args.profile_gateway:
        runlib.Server.profile_dir = Path(args.profile_gateway).resolve()
        runlib.Server.profile_dir.mkdir(parents=True, exist_ok=True)
    EXTRA_ON = args.on_config.replace(";", "\n") + "\n" if args.on_config else ""
    sys.exit(asyncio.run(main(args)))
