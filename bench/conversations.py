"""Conversations at scale: 10,000 conversations for one user, 1,000,000 messages in total.

    .venv/bin/python bench/conversations.py                 # SQLite and PostgreSQL
    .venv/bin/python bench/conversations.py --quick         # 100,000 messages, fewer samples
    .venv/bin/python bench/conversations.py --only sqlite
    .venv/bin/python bench/conversations.py --reuse /tmp/convbench   # seed once, reuse

``--reuse DIR`` keeps the seeded SQLite file and PostgreSQL data directory in DIR, so a
later run skips the bulk insert (the conversations a run adds are deleted at its end).

Setup bulk-inserts straight into the database (sqlite3 executemany / asyncpg COPY,
after the gateway's migrations made the schema), then a real gateway serves it on
127.0.0.1 and a websocket client measures, each against a baseline in the same run:

- list a page (``conversation.list``, 50 items) and open a 200-message conversation
  (``conversation.get``): p50/p99, against a call that touches no database
  (``chat.getCurrentModel``). Target: p99 < 20 ms.
- CPU time of the whole process (client and gateway) per call, from the same calls.
- time to first token of ``conversation.send`` (history from the stored branch)
  against ``chat.chatWithHistory`` with the same history sent by the client, on
  ``offline-fast``, alternating. Target: < 2 ms added at p50.

PostgreSQL is a private server started for the run (``initdb`` in a temp dir).
Nothing is asserted; the figures are printed with PASS/FAIL.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402

from gateway.config import (  # noqa: E402
    AuthConfig,
    Config,
    ConversationsConfig,
    LimitsConfig,
    ServerConfig,
)
from gateway.conversations import StoreLimits, make_store  # noqa: E402
from gateway.server.app import Gateway  # noqa: E402
from tests.postgres import postgres_server  # noqa: E402

USER = "bench"
TOKEN = "tok-bench"
CONVERSATIONS = 10_000
BIG = 200
"""Messages in the conversation that is opened."""
TEXT = (
    "A message of about the length people write in a chat, with a few words more "
    "so that the rows are not trivially small for the database to return. "
)


def _rows(total_messages: int) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Conversation and message rows: one conversation of BIG messages, the rest spread."""
    now = time.time() - 86400
    per = max(2, (total_messages - BIG) // (CONVERSATIONS - 1))
    convs, msgs = [], []
    for i in range(CONVERSATIONS):
        cid = f"c{i:031d}"
        count = BIG if i == 0 else per
        parent = None
        for j in range(count):
            mid = f"m{i:015d}{j:016d}"
            role = "user" if j % 2 == 0 else "assistant"
            msgs.append(
                (mid, cid, parent, j, role, TEXT, "done", None, None, now + i, now + i, None, None)
            )
            parent = mid
        # The big one is the most recent, so it is on the first page too.
        updated = now + (CONVERSATIONS if i == 0 else i)
        convs.append(
            (cid, USER, f"Conversation {i}", False, "offline-fast", None, "{}", False, False,
             now, updated, count, parent)
        )  # fmt: skip
    return convs, msgs


CONV_COLS = (
    "id, user_id, title, title_auto, model, system_prompt, params, pinned, archived,"
    " created_at, updated_at, message_count, active_leaf_id"
)
MSG_COLS = (
    "id, conversation_id, parent_id, seq, role, content, status, model, stream_id,"
    " created_at, updated_at, usage, finish_reason"
)


async def _fill_sqlite(path: Path, convs: list, msgs: list) -> None:
    def fill() -> None:
        db = sqlite3.connect(path)
        db.executemany(
            f"INSERT INTO conversations ({CONV_COLS}) VALUES ({','.join('?' * 13)})", convs
        )
        db.executemany(f"INSERT INTO messages ({MSG_COLS}) VALUES ({','.join('?' * 13)})", msgs)
        db.commit()
        db.execute("ANALYZE")
        db.close()

    await asyncio.to_thread(fill)


async def _fill_postgres(url: str, convs: list, msgs: list) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.copy_records_to_table(
            "conversations", records=convs, columns=[c.strip() for c in CONV_COLS.split(",")]
        )
        await conn.copy_records_to_table(
            "messages", records=msgs, columns=[c.strip() for c in MSG_COLS.split(",")]
        )
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


class Client:
    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.next = 0

    async def call(self, method: str, params: Any = None) -> Any:
        self.next += 1
        await self.ws.send(
            json.dumps(
                {"jsonrpc": "2.0", "id": self.next, "method": method, "params": params or {}}
            )
        )
        while True:
            frame = json.loads(await self.ws.recv())
            if frame.get("id") == self.next:
                if "error" in frame:
                    raise RuntimeError(frame["error"])
                return frame["result"]

    async def ttft(self, method: str, params: Any) -> tuple[float, dict]:
        """Seconds to the first delta, and the final result."""
        self.next += 1
        rid = self.next
        start = time.perf_counter()
        await self.ws.send(
            json.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
        )
        first = None
        while True:
            frame = json.loads(await self.ws.recv())
            if frame.get("method") == "stream.delta" and first is None:
                first = time.perf_counter() - start
            elif frame.get("id") == rid:
                assert first is not None and "result" in frame, frame
                return first, frame["result"]


async def _timed(n: int, fn: Any, cpu: dict[str, float], name: str) -> list[float]:
    """Wall seconds of ``n`` calls; their CPU seconds per call (all threads) into ``cpu``."""
    out = []
    used = time.process_time()
    for _ in range(n):
        start = time.perf_counter()
        await fn()
        out.append(time.perf_counter() - start)
    cpu[name] = (time.process_time() - used) / n
    return out


def _sqlite_counts(path: Path, query: str) -> tuple[int, int] | None:
    if not path.exists():
        return None
    db = sqlite3.connect(path)
    try:
        return db.execute(query).fetchone()
    finally:
        db.close()


async def _seeded(url: str | None, path: Path, total: int) -> bool:
    """True when the database already holds this benchmark's data (``--reuse``)."""
    query = "SELECT (SELECT count(*) FROM conversations), (SELECT count(*) FROM messages)"
    try:
        if url:
            conn = await asyncpg.connect(url)
            try:
                row = tuple(await conn.fetchrow(query))
            finally:
                await conn.close()
        else:
            row = await asyncio.to_thread(_sqlite_counts, path, query)
    except (sqlite3.Error, asyncpg.PostgresError):
        return False
    per = max(2, (total - BIG) // (CONVERSATIONS - 1))
    return row == (CONVERSATIONS, BIG + per * (CONVERSATIONS - 1))


async def bench_one(kind: str, url: str | None, data_dir: Path, total: int, samples: int) -> dict:
    store = make_store(url, sqlite_path=data_dir / "gateway.db", limits=StoreLimits())
    await store.start()
    await store.close()
    t0 = time.perf_counter()
    reused = await _seeded(url, data_dir / "gateway.db", total)
    if not reused:
        convs, msgs = _rows(total)
        if url:
            await _fill_postgres(url, convs, msgs)
        else:
            await _fill_sqlite(data_dir / "gateway.db", convs, msgs)
        del convs, msgs
    setup = time.perf_counter() - t0
    config = Config(
        server=ServerConfig(host="127.0.0.1", port=0),
        auth=AuthConfig(api_keys={TOKEN: USER}),
        # The client calls back to back: the per-connection rate limit is not under test.
        limits=LimitsConfig(requests_per_second=1e6, request_burst=1_000_000),
        conversations=ConversationsConfig(url=url, max_conversations_per_user=CONVERSATIONS + 1000),
        data_dir=str(data_dir),
        default_model="offline-fast",
    )
    cpu: dict[str, float] = {}
    out: dict[str, Any] = {
        "kind": kind,
        "messages": total,
        "setupSeconds": setup,
        "reused": reused,
        "loadBefore": os.getloadavg()[0],
        "cpu": cpu,
    }
    async with Gateway(config) as gw:
        async with connect(
            gw.ws_url, additional_headers={"Authorization": f"Bearer {TOKEN}"}
        ) as ws:
            c = Client(ws)
            big = "c" + "0" * 31
            for _ in range(20):  # warm the pool, caches and plans
                await c.call("conversation.list", {"limit": 50})
                await c.call("conversation.get", {"conversationId": big})
                await c.call("chat.getCurrentModel")
            base = await _timed(samples, lambda: c.call("chat.getCurrentModel"), cpu, "base")
            page = await _timed(
                samples, lambda: c.call("conversation.list", {"limit": 50}), cpu, "list"
            )
            got = await c.call("conversation.get", {"conversationId": big})
            assert len(got["messages"]) == BIG
            opened = await _timed(
                samples, lambda: c.call("conversation.get", {"conversationId": big}), cpu, "get"
            )
            second = await c.call("conversation.list", {"limit": 50})
            assert len(second["items"]) == 50 and second["nextCursor"]

            sends, direct = [], []
            history: list[dict[str, str]] = []
            created: list[str] = []
            cpu_direct = cpu_send = 0.0
            for i in range(samples):
                if i % 25 == 0:
                    created.append((await c.call("conversation.create"))["id"])
                    history = []
                question = f"question number {i}"
                used = time.process_time()
                t_direct, _ = await c.ttft(
                    "chat.chatWithHistory", {"message": question, "history": history}
                )
                mid = time.process_time()
                t_send, _ = await c.ttft(
                    "conversation.send", {"conversationId": created[-1], "message": question}
                )
                cpu_send += time.process_time() - mid
                cpu_direct += mid - used
                direct.append(t_direct)
                sends.append(t_send)
                # Keep the client's history equal to the stored branch.
                got = await c.call("conversation.get", {"conversationId": created[-1]})
                history = [{"role": m["role"], "content": m["content"]} for m in got["messages"]]
            cpu.update(direct=cpu_direct / samples, send=cpu_send / samples)
            # A reused database stays as it was seeded.
            for cid in created:
                await c.call("conversation.delete", {"conversationId": cid})
    ms = 1000.0
    out["loadAfter"] = os.getloadavg()[0]
    out.update(
        baseP50=_pct(base, 50) * ms,
        baseP99=_pct(base, 99) * ms,
        listP50=_pct(page, 50) * ms,
        listP99=_pct(page, 99) * ms,
        getP50=_pct(opened, 50) * ms,
        getP99=_pct(opened, 99) * ms,
        directTtftP50=statistics.median(direct) * ms,
        sendTtftP50=statistics.median(sends) * ms,
        directTtftP99=_pct(direct, 99) * ms,
        sendTtftP99=_pct(sends, 99) * ms,
    )
    return out


def _verdict(good: bool) -> str:
    return "PASS" if good else "FAIL"


def report(r: dict) -> None:
    added = r["sendTtftP50"] - r["directTtftP50"]
    cpu = {k: v * 1000 for k, v in r["cpu"].items()}
    setup = "reused the seeded database" if r["reused"] else "bulk insert"
    print(
        f"\n== {r['kind']}: {CONVERSATIONS:,} conversations, {r['messages']:,} messages "
        f"({setup} {r['setupSeconds']:.1f} s; load average {r['loadBefore']:.1f} before, "
        f"{r['loadAfter']:.1f} after)"
    )
    print(
        f"  baseline chat.getCurrentModel  p50 {r['baseP50']:.2f} ms  p99 {r['baseP99']:.2f} ms"
        f"  cpu {cpu['base']:.2f} ms/call"
    )
    for name, key in (("conversation.list (50)", "list"), ("conversation.get (200 msgs)", "get")):
        p50, p99 = r[f"{key}P50"], r[f"{key}P99"]
        print(
            f"  {name:<30} p50 {p50:.2f} ms  p99 {p99:.2f} ms  cpu {cpu[key]:.2f} ms/call  "
            f"({p99 / r['baseP99']:.1f}x baseline p99)  {_verdict(p99 < 20)} p99 < 20 ms"
        )
    ratio = r["sendTtftP50"] / r["directTtftP50"]
    print(
        f"  TTFT p50 chatWithHistory {r['directTtftP50']:.2f} ms, conversation.send "
        f"{r['sendTtftP50']:.2f} ms: +{added:.2f} ms ({ratio:.2f}x)  {_verdict(added < 2)} < 2 ms"
    )
    print(
        f"  TTFT p99 chatWithHistory {r['directTtftP99']:.2f} ms, "
        f"conversation.send {r['sendTtftP99']:.2f} ms"
    )
    print(
        f"  cpu per whole call: chatWithHistory {cpu['direct']:.2f} ms, conversation.send "
        f"{cpu['send']:.2f} ms ({cpu['send'] / cpu['direct']:.2f}x)"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="100,000 messages, 100 samples")
    parser.add_argument("--only", choices=("sqlite", "postgres"))
    parser.add_argument("--samples", type=int, default=None)
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument(
        "--reuse", metavar="DIR", help="keep the seeded databases in DIR and reuse them"
    )
    args = parser.parse_args()
    total = 100_000 if args.quick else 1_000_000
    samples = args.samples or (100 if args.quick else 400)
    results = []
    with contextlib.ExitStack() as stack:
        root = (
            Path(args.reuse)
            if args.reuse
            else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gateway-bench-")))
        )
        if args.only in (None, "sqlite"):
            results.append(await bench_one("sqlite", None, root / "sqlite", total, samples))
            report(results[-1])
        if args.only in (None, "postgres"):
            pg = stack.enter_context(postgres_server(root / "pgdata" if args.reuse else None))
            conn = await asyncpg.connect(pg.url())
            try:
                if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = 'bench'"):
                    await conn.execute('CREATE DATABASE "bench"')
            finally:
                await conn.close()
            results.append(
                await bench_one("postgres", pg.url("bench"), root / "pg", total, samples)
            )
            report(results[-1])
    if args.json:
        await asyncio.to_thread(Path(args.json).write_text, json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
