"""Resumable streams: streamed frames/s with the stream log on vs off, in one run.

    .venv/bin/python bench/resume.py              # memory and Redis, 3 rounds each, ~5 minutes
    .venv/bin/python bench/resume.py --rounds 1   # a smoke run
    .venv/bin/python bench/resume.py --stores redis

The same workload as bench/run.py test (a): ``--conns`` connections (one user
each) call ``chat.postChat`` on ``offline-fast`` back to back, from 2 load
processes (bench/load.py). The gateway runs as ``gateway serve`` with
bench/gateway.toml (stream log on, the default) and with the same file plus
``[streams] enabled = false`` (no log, no resume: the old path). Servers
alternate off, on, off, on, ...; the median round of each is reported, and
the ratio on/off, and the server's CPU time per word (off/on: the
throughput ratio a machine with spare cores would see; frames/s on a shared
machine mostly measures the cores the server got). Target: >= 0.85.

``--stores memory,redis`` (the default) runs both: ``memory`` is the embedded
default (the log in the process); ``redis`` gives the gateway a private
redis-server (a free port, started here, a fresh one per server) through
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
EXTRA_ON = ""
"""Extra ``[streams]`` settings for the log-on server (``--on-config``)."""


def redis_counts(client: redis.Redis | None) -> dict[str, int]:
    """The redis-server's read events and commands so far (0 without Redis)."""
    if client is None:
        return {"reads": 0, "commands": 0}
    stats = client.info("stats")
    return {"reads": stats["total_reads_processed"], "commands": stats["total_commands_processed"]}


async def one_round(
    store: str, log_on: bool, conns: int, seconds: float, warmup: float, workdir: Path
) -> dict[str, Any]:
    server = runlib.Server("gateway", conns + 1, workdir)
    rproc = scale.RedisProc(workdir) if store == "redis" else None
    client = redis.Redis(port=rproc.port) if rproc is not None else None
    if rproc is not None:
        server.env["GATEWAY_REDIS_URL"] = rproc.url
    if log_on and EXTRA_ON:
        config = workdir / "gateway-log.toml"
        config.write_text((HERE / "gateway.toml").read_text() + "\n[streams]\n" + EXTRA_ON)
        server.config = config
    if not log_on:
        config = workdir / "gateway-nolog.toml"
        base = (HERE / "gateway.toml").read_text()
        config.write_text(base + "\n[streams]\nenabled = false\n")
        server.config = config
    procs: list[runlib.LoadProc] = []
    try:
        await server.start()
        await runlib.warm_up(server, conns)
        procs = await runlib.start_loads(
            2, server.port, "flood", conns, workdir, model=runlib.FAST, concurrency=32
        )
        ready = await runlib.all_ready(procs, 120)
        for p in procs:
            p.send("GO")
        await asyncio.sleep(warmup)
        m1 = await runlib.mark(procs, server)
        r1 = redis_counts(client)
        await asyncio.sleep(seconds)
        m2 = await runlib.mark(procs, server)
        r2 = redis_counts(client)
        results = await runlib.finish(procs, 60)
        dt = m2["t"] - m1["t"]
        frames = m2["frames"] - m1["frames"]
        words = m2["words"] - m1["words"]
        cpu = m2["server_cpu"] - m1["server_cpu"]
        return {
            "store": store,
            "log": log_on,
            "rt_per_delta": (r2["reads"] - r1["reads"] - 1) / frames if frames else float("nan"),
            "cmds_per_delta": (r2["commands"] - r1["commands"] - 1) / frames if frames else 0.0,
            "connected": ready["connected"],
            "frames_per_s": frames / dt,
            "words_per_s": words / dt,
            "streams_per_s": (m2["streams"] - m1["streams"]) / dt,
            "server_cores": cpu / dt,
            "cpu_us_per_word": cpu / words * 1e6 if words else float("nan"),
            "errors": {**ready["errors"], **runlib.merge_errors(results)},
        }
    finally:
        for p in procs:
            await p.stop()
        await server.stop()
        if client is not None:
            client.close()
        if rproc is not None:
            rproc.stop()


async def main(args: argparse.Namespace) -> int:
    loadlib.raise_nofile()
    started = time.monotonic()
    stores = [name.strip() for name in args.stores.split(",") if name.strip()]
    rounds: dict[tuple[str, bool], list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="gateway-bench-resume-") as tmp:
        try:
            for _ in range(args.rounds):
                for store in stores:
                    for log_on in (False, True):
                        r = await one_round(
                            store, log_on, args.conns, args.seconds, args.warmup, Path(tmp)
                        )
                        rounds.setdefault((store, log_on), []).append(r)
                        rt = f"  {r['rt_per_delta']:.3f} redis rt/delta" if store == "redis" else ""
                        print(
                            f"[{time.monotonic() - started:5.0f}s] {store:6} log "
                            f"{'on ' if log_on else 'off'} {r['frames_per_s']:8.0f} frames/s "
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
        ratio = on / off if off else float("nan")
        target = f">= {TARGET}" if key == "frames_per_s" else ""
        verdict = ("PASS" if ratio >= TARGET else "FAIL") if target else ""
        lines.append(f"| {label} (median of {n}) | {off:.0f} | {on:.0f} | {ratio:.2f} {verdict} "
                     f"| {target} |")  # fmt: skip
    # CPU per word is the figure a loaded machine skews least (frames/s depends on the cores
    # the server got); as a throughput ratio it is off/on.
    off, on = med(offs, "cpu_us_per_word"), med(ons, "cpu_us_per_word")
    lines.append(
        f"| server CPU us/word (median) | {off:.1f} | {on:.1f} | {off / on:.2f} (off/on) | |"
    )
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
    parser.add_argument("--rounds", type=int, default=3, help="on/off pairs (median reported)")
    parser.add_argument("--conns", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=8.0, help="measured window per server")
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
