"""The StreamLog contract, run against every implementation: memory, and Redis read by another
instance than the one writing (as another process would)."""

from __future__ import annotations

import asyncio
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import StreamGap, StreamNotFound
from gateway.sessions.redislink import RedisLink
from gateway.streams.memory import MemoryStreamLog
from gateway.streams.protocol import (
    LIST_LIMIT,
    Piece,
    StreamEnd,
    StreamInfo,
    StreamLog,
    new_stream_id,
)
from gateway.streams.redis import OUTAGE_WAIT, RedisStreamLog
from tests.redis_support import TEST_REDIS_TIMEOUT, RedisServer, redis_server, redis_url

TIMEOUT = 5.0

MakeLog = Callable[..., StreamLog]
__all__ = ["redis_server", "redis_url"]  # fixtures


class Split:
    """Two Redis stream logs as two processes: one writes, the other reads (what another
    process sees, through Redis only: the writer's own copy is never read)."""

    def __init__(self, writer: RedisStreamLog, reader: RedisStreamLog) -> None:
        self.writer, self.reader = writer, reader
        self.create, self.append, self.finish = writer.create, writer.append, writer.finish
        self.info, self.read, self.list = reader.info, reader.read, reader.list

    async def aclose(self) -> None:
        await self.writer.aclose()
        await self.reader.aclose()


@pytest.fixture(params=["memory", "redis"])
async def make_log(request: pytest.FixtureRequest) -> AsyncIterator[MakeLog]:
    """A factory of empty logs with the given limits, for each implementation."""
    made: list[Any] = []

    def memory(**limits: Any) -> StreamLog:
        return MemoryStreamLog(**limits)

    links = []
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        # Connected as the gateway connects them at start (scripts loaded, the mux open).
        links = [RedisLink(url, timeout=TEST_REDIS_TIMEOUT) for _ in "ab"]
        for link in links:
            await link.connect()

    def redis(**limits: Any) -> StreamLog:
        limits.pop("max_streams", None)
        limits.pop("max_total_chars", None)
        split = Split(*(RedisStreamLog(link, **limits) for link in links))
        made.append(split)
        return split  # type: ignore[return-value]

    factory = {"memory": memory, "redis": redis}[request.param]
    yield factory
    for log in made:
        await log.aclose()
    for link in links:
        await link.aclose()


async def new_stream(log: StreamLog, user: str = "alice") -> str:
    stream_id = new_stream_id()
    await log.create(StreamInfo(stream_id, user, "chat.postChat", time.time()))
    return stream_id


async def read_all(log: StreamLog, stream_id: str, after: int) -> list[Piece | StreamEnd]:
    async with asyncio.timeout(TIMEOUT):
        return [item async for item in log.read(stream_id, after)]


async def take(reader: AsyncIterator[Piece | StreamEnd], n: int) -> list[Piece | StreamEnd]:
    async with asyncio.timeout(TIMEOUT):
        return [await anext(reader) for _ in range(n)]


def test_stream_ids_are_random_and_long() -> None:
    """128 random bits, URL-safe; a thousand are all different."""
    ids = {new_stream_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(i.startswith("st_") and len(i) == 25 for i in ids)


async def test_positions_count_from_zero_and_a_finished_log_replays_after_any_position(
    make_log: MakeLog,
) -> None:
    """append returns 0, 1, 2...; read after k gives k+1.. then the end, once each."""
    log = make_log()
    stream_id = await new_stream(log)
    assert [log.append(stream_id, t) for t in ("a", "b", "c")] == [0, 1, 2]
    await log.finish(stream_id, StreamEnd({"finishReason": "stop"}))
    assert await read_all(log, stream_id, -1) == [
        Piece(0, "a"),
        Piece(1, "b"),
        Piece(2, "c"),
        StreamEnd({"finishReason": "stop"}),
    ]
    assert await read_all(log, stream_id, 1) == [Piece(2, "c"), StreamEnd({"finishReason": "stop"})]
    assert await read_all(log, stream_id, 2) == [StreamEnd({"finishReason": "stop"})]


async def test_a_reader_gets_the_replay_then_the_live_pieces_then_the_end(
    make_log: MakeLog,
) -> None:
    """Pieces appended while a reader waits reach it once each, in order, kinds kept."""
    log = make_log()
    stream_id = await new_stream(log)
    log.append(stream_id, "a")
    reader = log.read(stream_id, -1)
    assert await take(reader, 1) == [Piece(0, "a")]
    waiting = asyncio.ensure_future(take(reader, 3))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    log.append(stream_id, "b")
    log.append(stream_id, "thinking", "reasoning")
    await log.finish(stream_id, StreamEnd(error={"code": -32013, "message": "down"}))
    async with asyncio.timeout(TIMEOUT):
        assert await waiting == [
            Piece(1, "b"),
            Piece(2, "thinking", "reasoning"),
            StreamEnd(error={"code": -32013, "message": "down"}),
        ]


async def test_any_text_comes_back_exactly_from_the_log_and_live(make_log: MakeLog) -> None:
    """Non-ASCII, emoji, quotes, backslashes, control characters, JSON-looking text and a
    user id that needs escaping: each piece read back byte for byte, logged and live."""
    texts = ["héllo ", "😀 ", '"quoted" ', "back\\slash ", "\u0000nul\x00 ", "\n\t", '{"a":[1]}']
    texts += ["中文 ", "x" * 5000, "1e+15", "null"]
    log = make_log()
    stream_id = await new_stream(log, user='ann"\\é')
    log.append(stream_id, texts[0])
    live = log.read(stream_id, -1)
    assert await take(live, 1) == [Piece(0, texts[0])]
    for i, text in enumerate(texts[1:]):
        log.append(stream_id, text, "reasoning" if i % 3 == 0 else "text")
    expected = [Piece(0, texts[0])]
    expected += [
        Piece(i + 1, t, "reasoning" if i % 3 == 0 else "text") for i, t in enumerate(texts[1:])
    ]
    assert await take(live, len(texts) - 1) == expected[1:]
    await log.finish(stream_id, StreamEnd({"finishReason": "stop"}))
    assert await read_all(log, stream_id, -1) == [*expected, StreamEnd({"finishReason": "stop"})]
    info = await log.info(stream_id)
    assert info is not None and info.user_id == 'ann"\\é' and info.pieces == len(texts)


async def test_a_cancelled_reader_does_not_disturb_the_others(make_log: MakeLog) -> None:
    """Two readers wait; one is cancelled; the other still gets the next piece."""
    log = make_log()
    stream_id = await new_stream(log)
    first, second = log.read(stream_id, -1), log.read(stream_id, -1)
    a = asyncio.ensure_future(take(first, 1))
    b = asyncio.ensure_future(take(second, 1))
    await asyncio.sleep(0.01)
    a.cancel()
    log.append(stream_id, "x")
    async with asyncio.timeout(TIMEOUT):
        assert await b == [Piece(0, "x")]
        # On Redis the cancel may land mid-command: it takes effect when that returns.
        await asyncio.wait([a])
    assert a.cancelled()


@pytest.mark.parametrize("step", [20, 3], ids=["one-write", "many-writes"])
async def test_trimmed_history_is_a_gap_never_a_silent_hole(make_log: MakeLog, step: int) -> None:
    """Past max_pieces the oldest are dropped; reading before them raises StreamGap, whether
    the pieces reach the log in one write or in many (each trimming what came before)."""
    log = make_log(max_pieces=8)
    stream_id = await new_stream(log)
    for start in range(0, 20, step):
        for i in range(start, min(start + step, 20)):
            log.append(stream_id, str(i))
        newest = min(start + step, 20) - 1
        assert (await take(log.read(stream_id, newest - 1), 1)) == [Piece(newest, str(newest))]
    await log.finish(stream_id, StreamEnd({"finishReason": "stop"}))
    with pytest.raises(StreamGap) as gap:
        await read_all(log, stream_id, -1)
    first = gap.value.data["firstSeq"] if gap.value.data else None
    assert isinstance(first, int) and 12 <= first < 20
    kept = await read_all(log, stream_id, first - 1)
    assert [p.pos for p in kept if isinstance(p, Piece)] == list(range(first, 20))


async def test_a_character_cap_trims_too(make_log: MakeLog) -> None:
    """max_chars bounds a log of few, large pieces the same way."""
    log = make_log(max_chars=1000)
    stream_id = await new_stream(log)
    for _ in range(10):
        log.append(stream_id, "x" * 300)
    with pytest.raises(StreamGap):
        await take(log.read(stream_id, -1), 1)
    assert (await take(log.read(stream_id, 8), 1)) == [Piece(9, "x" * 300)]


async def test_a_finished_log_expires_after_done_ttl(make_log: MakeLog) -> None:
    """After done_ttl, read, info and list know the stream no more."""
    log = make_log(done_ttl=0.05)
    stream_id = await new_stream(log)
    await log.finish(stream_id, StreamEnd({"finishReason": "stop"}))
    assert (await log.info(stream_id)) is not None
    await asyncio.sleep(0.1)
    assert await log.info(stream_id) is None
    assert await log.list("alice") == []
    with pytest.raises(StreamNotFound):
        await read_all(log, stream_id, -1)


async def test_redis_log_keys_expire_while_running_and_after_the_end(redis_url: str) -> None:
    """A stream's log and info keys carry ``running_ttl`` from its first pieces on (the
    heartbeat renews it) and ``done_ttl`` once it ended: nothing outlives a dead process."""
    link = RedisLink(redis_url, timeout=TEST_REDIS_TIMEOUT)
    await link.connect()
    log = RedisStreamLog(link, running_ttl=120.0, done_ttl=30.0)
    try:
        stream_id = await new_stream(log)
        keys = [link.key(f"st:{stream_id}", name) for name in ("log", "info")]
        for i in range(3):
            log.append(stream_id, f"w{i} ")
            await asyncio.sleep(0.02)  # spread over writes (FLUSH_EVERY is 20 ms)
        async with asyncio.timeout(TIMEOUT):
            while await link.client.hget(keys[1], "n") != b"3":
                await asyncio.sleep(0.01)
        for key in keys:
            assert 100_000 < await link.client.pttl(key) <= 120_000, key
        await log.finish(stream_id, StreamEnd({"finishReason": "stop"}))
        for key in keys:
            assert 0 < await link.client.pttl(key) <= 30_000, key
    finally:
        await log.aclose()
        await link.aclose()


async def test_list_gives_only_the_users_own_streams_newest_first(make_log: MakeLog) -> None:
    """list(user) holds that user's running and finished streams, with state and last seq."""
    log = make_log()
    older = await new_stream(log)
    await asyncio.sleep(0.01)
    newer = await new_stream(log)
    await new_stream(log, user="bob")
    log.append(older, "a")
    await log.finish(older, StreamEnd({"finishReason": "cancelled"}))
    rows = [row.public() for row in await log.list("alice")]
    assert [r["streamId"] for r in rows] == [newer, older]
    assert rows[0]["state"] == "running" and rows[0]["lastSeq"] == -1
    assert rows[1]["state"] == "done" and rows[1]["finishReason"] == "cancelled"
    assert rows[1]["lastSeq"] == 0


async def test_list_gives_at_most_the_newest_list_limit_streams(make_log: MakeLog) -> None:
    """A user with more streams than LIST_LIMIT gets the newest LIST_LIMIT, newest first."""
    log = make_log()
    made = []
    for _ in range(LIST_LIMIT + 2):
        made.append(await new_stream(log))
        await asyncio.sleep(0.002)  # creation times apart
    rows = await log.list("alice")
    assert [row.stream_id for row in rows] == made[::-1][:LIST_LIMIT]


async def test_an_unknown_stream_is_not_found(make_log: MakeLog) -> None:
    """read of an id never created raises StreamNotFound; info is None."""
    log = make_log()
    assert await log.info("st_nope") is None
    with pytest.raises(StreamNotFound):
        await read_all(log, "st_nope", -1)


async def test_memory_finished_logs_give_way_to_the_total_character_bound() -> None:
    """Over max_total_chars, the oldest finished logs go first; running ones stay."""
    log = MemoryStreamLog(max_total_chars=1000)
    old, running, new = [await new_stream(log) for _ in range(3)]
    for stream_id in (old, running, new):
        log.append(stream_id, "x" * 400)
    await log.finish(old, StreamEnd({"finishReason": "stop"}))
    await log.finish(new, StreamEnd({"finishReason": "stop"}))
    await new_stream(log)  # any call applies the bound
    assert await log.info(old) is None
    assert await log.info(running) is not None and await log.info(new) is not None


async def test_memory_finished_logs_are_kept_compact() -> None:
    """A finished answer of 58 pieces keeps its text joined (a few objects, not one per
    piece): under 2,500 bytes each, against some 4,600 with a string object per piece."""
    log = MemoryStreamLog()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        count = 500
        for k in range(count):
            stream_id = await new_stream(log, user=f"u{k % 50}")
            for i in range(58):
                log.append(stream_id, f"w{i} ")
            await log.finish(stream_id, StreamEnd({"finishReason": "stop", "usage": {"n": 58}}))
        retained = (tracemalloc.get_traced_memory()[0] - before) / count
    finally:
        tracemalloc.stop()
    assert retained < 2500, retained
    pieces = await read_all(log, stream_id, 9)
    assert pieces[:2] == [Piece(10, "w10 "), Piece(11, "w11 ")] and len(pieces) == 58 - 10 + 1


async def test_redis_writer_drops_its_own_copy_once_redis_has_the_end(redis_url: str) -> None:
    """Once a stream's end is in Redis the writer keeps no copy of its own; reading it on
    the writer's process then replays the whole stream from Redis."""
    link = RedisLink(redis_url, timeout=TEST_REDIS_TIMEOUT)
    await link.connect()
    log = RedisStreamLog(link)
    try:
        stream_id = await new_stream(log)
        for text in ("a", "b", "c"):
            log.append(stream_id, text)
        await log.finish(stream_id, StreamEnd({"finishReason": "stop"}))
        assert await log._local.info(stream_id) is None
        info = await log.info(stream_id)
        assert info is not None and info.state == "done" and info.pieces == 3
        assert await read_all(log, stream_id, 0) == [
            Piece(1, "b"),
            Piece(2, "c"),
            StreamEnd({"finishReason": "stop"}),
        ]
    finally:
        await log.aclose()
        await link.aclose()


async def test_redis_a_batch_written_again_gives_no_reader_a_piece_twice(redis_url: str) -> None:
    """A flush sent again after a lost reply (the same batch, or one that overlaps what
    Redis has) stores nothing twice: readers get every position once, in order."""
    links = [RedisLink(redis_url, timeout=TEST_REDIS_TIMEOUT) for _ in "ab"]
    for link in links:
        await link.connect()
    writer, reader = (RedisStreamLog(link) for link in links)

    async def written(stream_id: str, n: int) -> None:
        ours, info_key = writer._headers[stream_id], links[0].key(f"st:{stream_id}", "info")
        async with asyncio.timeout(TIMEOUT):
            while ours.written != n or await links[0].client.hget(info_key, "n") != b"%d" % n:
                await asyncio.sleep(0.01)

    try:
        stream_id = await new_stream(writer)
        for text in "abc":
            writer.append(stream_id, text)
        await written(stream_id, 3)
        # A reply lost to a fault: the writer does not know Redis has them.
        writer._headers[stream_id].written = 0
        await written(stream_id, 3)  # the same batch again
        writer._headers[stream_id].written = 1
        for text in "de":
            writer.append(stream_id, text)
        await written(stream_id, 5)  # b, c again with d, e
        entries = await links[0].client.xrange(links[0].key(f"st:{stream_id}", "log"))
        assert [entry_id for entry_id, _ in entries] == [b"1-0", b"4-0"]
        for after in (-1, 0, 2, 3):
            pieces = await take(reader.read(stream_id, after), 4 - after)
            assert pieces == [Piece(i, "abcde"[i]) for i in range(after + 1, 5)], after
        await writer.finish(stream_id, StreamEnd({"finishReason": "stop"}))
        assert (await read_all(reader, stream_id, 3))[-1] == StreamEnd({"finishReason": "stop"})
    finally:
        for log in (writer, reader):
            await log.aclose()
        for link in links:
            await link.aclose()


async def test_redis_pieces_appended_while_redis_is_away_follow_once_it_is_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Pieces appended, and the end written, while Redis is down wait in the writer and reach
    Redis, in order and with their kinds, once it is back (here empty: it keeps nothing on
    disk); the end comes after the last piece, while another stream of the same writer
    keeps appending."""
    server = RedisServer(tmp_path)
    server.start()
    links = [RedisLink(server.url, timeout=TEST_REDIS_TIMEOUT) for _ in "ab"]
    for link in links:
        await link.connect()
    writer, reader = (RedisStreamLog(link, lease_seconds=0.6) for link in links)

    async def keep_appending(busy_id: str) -> None:
        for i in range(100_000):
            writer.append(busy_id, f"{i} ")
            await asyncio.sleep(0.002)

    busy: asyncio.Task[None] | None = None
    try:
        stream_id = await new_stream(writer)
        busy = asyncio.create_task(keep_appending(await new_stream(writer)))
        writer.append(stream_id, "a")
        assert await take(reader.read(stream_id, -1), 1) == [Piece(0, "a")]
        server.stop()
        for text, kind in [("b", "text"), ("think", "reasoning"), ("c", "text")]:
            writer.append(stream_id, text, kind)
        await asyncio.sleep(0.3)  # a flush fails meanwhile
        writer.append(stream_id, "d")
        await writer.finish(stream_id, StreamEnd({"finishReason": "stop"}))
        assert "end not written to Redis yet" in caplog.text
        server.start()
        async with asyncio.timeout(OUTAGE_WAIT):
            got = [item async for item in reader.read(stream_id, 0)]
        assert got == [
            Piece(1, "b"),
            Piece(2, "think", "reasoning"),
            Piece(3, "c"),
            Piece(4, "d"),
            StreamEnd({"finishReason": "stop"}),
        ]
    finally:
        if busy is not None:
            busy.cancel()
        for log in (writer, reader):
            await log.aclose()
        for link in links:
            await link.aclose()
        server.stop()
