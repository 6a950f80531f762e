"""Resumable streams: streamed frames/s with the stream log on vs off, in one run.

    .venv/bin/python bench/resume.py              # 3 rounds of on/off, about 2 minutes
    .venv/bin/python bench/resume.py --rounds 1   # a smoke run

The same workload as bench/run.py test (a): ``--conns`` connections (one user
each) call ``chat.postChat`` on ``offline-fast`` back to back, from 2 load
processes (bench/load.py). The gateway runs as ``gateway serve`` with
bench/gateway.toml (stream log on, the default) and with the same file plus
``[streams] enabled = false`` (no log, no resume: the old path). Servers
alternate off, on, off, on, ...; the median round of each is reported, and
the ratio on/off, and the server's CPU time per word (off/on: the
throughput ratio a machine with spare cores would see; frames/s on a shared
machine mostly measures the cores the server got). Target: >= 0.85.
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
import run as runlib  # noqa: E402

TARGET = 0.85
EXTRA_ON = ""
"""Extra ``[streams]`` settings for the log-on server (``--on-config``)."""


async def one_round(
    log_on: bool, conns: int, seconds: float, warmup: float, workdir: Path
) -> dict[str, Any]:
    server = runlib.Server("gateway", conns + 1, workdir)
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
        ready, m1, m2, results = await runlib.measure_window(procs, server, warmup, seconds)
        dt = m2["t"] - m1["t"]
        frames = m2["frames"] - m1["frames"]
        words = m2["words"] - m1["words"]
        cpu = m2["server_cpu"] - m1["server_cpu"]
        return {
            "log": log_on,
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


async def main(args: argparse.Namespace) -> int:
    loadlib.raise_nofile()
    started = time.monotonic()
    rounds: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
    with tempfile.TemporaryDirectory(prefix="gateway-bench-resume-") as tmp:
        try:
            for _ in range(args.rounds):
                for log_on in (False, True):
                    r = await one_round(log_on, args.conns, args.seconds, args.warmup, Path(tmp))
                    rounds[log_on].append(r)
                    print(
                        f"[{time.monotonic() - started:5.0f}s] log {'on ' if log_on else 'off'} "
                        f"{r['frames_per_s']:8.0f} frames/s {r['words_per_s']:9.0f} words/s "
                        f"{r['streams_per_s']:6.0f} streams/s  server {r['server_cores']:.2f} "
                        f"cores  {r['cpu_us_per_word']:.1f} us/word  errors {r['errors']}",
                        flush=True,
                    )
        finally:
            runlib._kill_all()
    print()
    print(f"| {args.conns} connections, offline-fast | log off | log on | on/off | target |")
    print("|---|---|---|---|---|")
    for key, label in (
        ("frames_per_s", "frames/s"),
        ("words_per_s", "words/s"),
        ("streams_per_s", "answers/s"),
    ):
        off = statistics.median(r[key] for r in rounds[False])
        on = statistics.median(r[key] for r in rounds[True])
        ratio = on / off if off else float("nan")
        target = f">= {TARGET}" if key == "frames_per_s" else ""
        verdict = ("PASS" if ratio >= TARGET else "FAIL") if target else ""
        print(f"| {label} (median of {args.rounds}) | {off:.0f} | {on:.0f} | {ratio:.2f} "
              f"{verdict} | {target} |")  # fmt: skip
    # CPU per word is the figure a loaded machine skews least (frames/s depends on the cores
    # the server got); as a throughput ratio it is off/on.
    off = statistics.median(r["cpu_us_per_word"] for r in rounds[False])
    on = statistics.median(r["cpu_us_per_word"] for r in rounds[True])
    print(f"| server CPU us/word (median) | {off:.1f} | {on:.1f} | {off / on:.2f} (off/on) | |")
    print(f"\ntotal {time.monotonic() - started:.0f}s")
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="on/off pairs (median reported)")
    parser.add_argument("--conns", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=8.0, help="measured window per server")
    parser.add_argument("--warmup", type=float, default=2.0)
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
