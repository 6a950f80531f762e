"""The JSON-RPC core without sockets: RpcSession, Outbound and Registry fed text directly."""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.errors import Unauthenticated
from gateway.jsonrpc import Final, MethodSpec, Outbound, Registry, RpcSession, SessionLimits
from gateway.jsonrpc.outbound import FRAME_OVERHEAD, DeltaStream

TIMEOUT = 5.0
DEFAULT_LIMITS = SessionLimits()


# Methods served by the session under test


async def subtract(minuend: int, subtrahend: int) -> int:
    return minuend - subtrahend


async def total(*numbers: int) -> int:
    return sum(numbers)


async def echo(value: Any = None) -> Any:
    return value


async def greet(name: str, greeting: str | None = None) -> str:
    return f"{greeting or 'hello'}, {name}"


async def broken() -> None:
    raise TypeError("secret detail: db password is hunter2")


async def hang() -> None:
    await asyncio.Event().wait()


async def words(*parts: str) -> AsyncIterator[str | Final]:
    for part in parts:
        yield part
    yield Final({"finishReason": "stop", "count": len(parts)})


class Script:
    """A streaming method whose pieces the test hands over one at a time."""

    def __init__(self) -> None:
        self.pieces: asyncio.Queue[str | None] = asyncio.Queue()
        self.produced = 0
        self.closed = False

    async def run(self) -> AsyncIterator[str | Final]:
        try:
            while (piece := await self.pieces.get()) is not None:
                self.produced += 1
                yield piece
        finally:
            self.closed = True


class Reporter:
    """A stream that reports its own cancellation in its final result."""

    def __init__(self) -> None:
        self.started = asyncio.Event()

    async def run(self) -> AsyncIterator[str | Final]:
        yield "partial"
        self.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            yield Final({"finishReason": "cancelled", "kept": "partial"})


def allow_all(spec: MethodSpec) -> contextvars.Context:
    return contextvars.copy_context()


def logged_in_only(spec: MethodSpec) -> contextvars.Context:
    if not spec.public:
        raise Unauthenticated("Log in first")
    return contextvars.copy_context()


def make_session(
    *extra: tuple[str, Any],
    limits: SessionLimits = DEFAULT_LIMITS,
    authorize: Any = allow_all,
    max_bytes: int = 1024 * 1024,
    abuse: list[str] | None = None,
) -> RpcSession:
    registry = Registry()
    for name, fn in (
        ("subtract", subtract),
        ("sum", total),
        ("echo", echo),
        ("greet", greet),
        ("broken", broken),
        ("hang", hang),
        ("words", words),
        *extra,
    ):
        registry.add(name, fn)
    registry.add("ping", echo, public=True)
    return RpcSession(
        registry,
        Outbound(max_bytes=max_bytes),
        authorize=authorize,
        limits=limits,
        on_abuse=None if abuse is None else abuse.append,
    )


async def feed(session: RpcSession, message: Any) -> None:
    text = message if isinstance(message, str) else json.dumps(message)
    async with asyncio.timeout(TIMEOUT):
        await session.handle_text(text)


async def next_frame(session: RpcSession) -> Any:
    async with asyncio.timeout(TIMEOUT):
        return json.loads(await session.outbound.get())


async def no_frame(session: RpcSession, wait: float = 0.1) -> None:
    """Nothing is (or becomes) queued within ``wait`` seconds."""
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(wait):
            frame = await session.outbound.get()
            pytest.fail(f"unexpected frame {frame!r}")


async def call(session: RpcSession, method: str, params: Any = None, id: Any = 1) -> Any:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": id}
    if params is not None:
        message["params"] = params
    await feed(session, message)
    return await next_frame(session)


async def until(predicate: Any) -> None:
    """Let other tasks run until ``predicate()`` holds."""
    async with asyncio.timeout(TIMEOUT):
        while not predicate():
            await asyncio.sleep(0)


# Binding


@pytest.mark.parametrize(
    ("params", "result"),
    [
        ([42, 23], 19),
        ([23, 42], -19),
        ({"subtrahend": 23, "minuend": 42}, 19),
        ({"minuend": 23, "subtrahend": 42}, -19),
    ],
)
async def test_params_bind_by_position_or_by_name(params: Any, result: int) -> None:
    """Positional and named params bind to the same signature."""
    session = make_session()
    assert await call(session, "subtract", params) == {"jsonrpc": "2.0", "result": result, "id": 1}


async def test_absent_params_use_defaults() -> None:
    """A call without params binds the defaults."""
    session = make_session()
    assert (await call(session, "echo"))["result"] is None
    assert (await call(session, "greet", {"name": "ada"}))["result"] == "hello, ada"


async def test_annotated_var_positional_checks_each_item() -> None:
    """``*numbers: int`` accepts any count of integers and refuses a non-integer among them."""
    session = make_session()
    assert (await call(session, "sum", [1, 2, 4]))["result"] == 7
    assert (await call(session, "sum", []))["result"] == 0
    assert (await call(session, "sum", [1, "2"]))["error"]["code"] == -32602


@pytest.mark.parametrize(
    "params",
    [
        [42],
        [1, 2, 3],
        {"minuend": 1},
        {"minuend": 1, "subtrahend": 2, "extra": 3},
        ["42", 23],
        {"minuend": 1.5, "subtrahend": 2},
        {"minuend": True, "subtrahend": 2},
        {"minuend": None, "subtrahend": 2},
    ],
)
async def test_params_that_do_not_fit_are_invalid_params(params: Any) -> None:
    """Missing, extra, unknown or wrongly typed params are -32602, and the method never runs."""
    session = make_session()
    response = await call(session, "subtract", params)
    assert response["error"]["code"] == -32602
    assert response["id"] == 1


async def test_optional_annotation_accepts_null() -> None:
    """``X | None`` accepts null and X, refuses anything else."""
    session = make_session()
    assert (await call(session, "greet", ["ada", None]))["result"] == "hello, ada"
    assert (await call(session, "greet", ["ada", "hi"]))["result"] == "hi, ada"
    assert (await call(session, "greet", ["ada", 3]))["error"]["code"] == -32602


async def test_type_error_inside_a_method_is_internal_error_without_detail(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A TypeError raised by the method is a bug: -32603, logged, nothing of it on the wire."""
    session = make_session()
    with caplog.at_level(logging.ERROR):
        response = await call(session, "broken")
    assert response["error"] == {"code": -32603, "message": "Internal error"}
    assert "hunter2" not in json.dumps(response)
    assert any("hunter2" in (r.exc_text or "") or r.exc_info for r in caplog.records)


# Requests that are not valid


@pytest.mark.parametrize(
    "text",
    [
        "{",
        "not json",
        '{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]',
        "[" * 100_000,
        "",
    ],
)
async def test_unparsable_frames_are_parse_errors_with_null_id(text: str) -> None:
    """Invalid (or too deeply nested) JSON is answered -32700 with id null."""
    session = make_session()
    await feed(session, text)
    response = await next_frame(session)
    assert response["error"]["code"] == -32700
    assert response["id"] is None


@pytest.mark.parametrize(
    ("message", "reply_id"),
    [
        ({"jsonrpc": "2.0", "method": 1, "params": "bar"}, None),
        ({"jsonrpc": "1.0", "method": "echo", "id": 3}, 3),
        ({"method": "echo", "id": 3}, 3),
        ({"jsonrpc": "2.0", "method": "echo", "params": "x", "id": 3}, 3),
        ({"jsonrpc": "2.0", "method": "echo", "id": [1]}, None),
        ({"jsonrpc": "2.0", "method": "echo", "id": True}, None),
        ({"jsonrpc": "2.0", "method": "echo", "id": 3, "extra": 1}, 3),
        (1, None),
        ("echo", None),
        (None, None),
    ],
)
async def test_invalid_request_objects_are_invalid_request(message: Any, reply_id: Any) -> None:
    """Objects that are not JSON-RPC 2.0 requests are -32600 (echoing the id if it is valid)."""
    session = make_session()
    await feed(session, json.dumps(message))
    response = await next_frame(session)
    assert response["error"]["code"] == -32600
    assert response["id"] == reply_id


async def test_unknown_method_is_method_not_found() -> None:
    """A method nobody registered is -32601 with the request's id."""
    session = make_session()
    response = await call(session, "foobar", id="1")
    assert response["error"]["code"] == -32601
    assert response["id"] == "1"


async def test_an_id_still_in_flight_cannot_be_reused() -> None:
    """A second request with the id of a running one is -32600; the first is unaffected."""
    session = make_session()
    await feed(session, {"jsonrpc": "2.0", "method": "hang", "id": 9})
    response = await call(session, "echo", [1], id=9)
    assert response["error"]["code"] == -32600
    assert session.cancel(9)
    assert (await next_frame(session))["error"]["code"] == -32005


# Ids


@pytest.mark.parametrize(
    "id_",
    [
        "héllo wörld",
        "🚀✨👩‍👩‍👧",
        "مرحبا بالعالم",
        "\u202eevil",
        "",
        0,
        -7,
        2**63 - 1,
        2**64 - 1,
        123456789012345678901234567890,
        -123456789012345678901234567890,
        1.5,
        None,
    ],
)
async def test_ids_are_echoed_exactly(id_: Any) -> None:
    """Whatever valid id arrives comes back unchanged, big integers included."""
    session = make_session()
    await feed(session, {"jsonrpc": "2.0", "method": "echo", "params": ["x"], "id": id_})
    raw = await asyncio.wait_for(session.outbound.get(), TIMEOUT)
    response = json.loads(raw)
    assert response["id"] == id_
    assert type(response["id"]) is type(id_)
    if isinstance(id_, int):
        assert str(id_).encode() in raw


# Notifications


async def test_notifications_are_never_answered() -> None:
    """No response for a notification, whether it succeeds, fails, or names no method."""
    session = make_session()
    for message in (
        {"jsonrpc": "2.0", "method": "echo", "params": [1]},
        {"jsonrpc": "2.0", "method": "foobar"},
        {"jsonrpc": "2.0", "method": "subtract", "params": ["a"]},
        {"jsonrpc": "2.0", "method": "broken"},
    ):
        await feed(session, message)
    await no_frame(session)
    assert session.inflight == 0


async def test_calls_before_login_are_unauthenticated_unless_public() -> None:
    """The authorize hook refuses non-public methods (-32001) and admits public ones."""
    session = make_session(authorize=logged_in_only)
    assert (await call(session, "echo", [1]))["error"]["code"] == -32001
    assert (await call(session, "ping", ["pong"]))["result"] == "pong"
    await feed(session, {"jsonrpc": "2.0", "method": "echo", "params": [1]})
    await no_frame(session)


# Batches


async def test_batch_answers_every_request_in_one_array() -> None:
    """A mixed batch: results, errors and no entry for notifications, in one frame."""
    session = make_session()
    await feed(
        session,
        [
            {"jsonrpc": "2.0", "method": "sum", "params": [1, 2, 4], "id": "1"},
            {"jsonrpc": "2.0", "method": "echo", "params": [7]},
            {"jsonrpc": "2.0", "method": "subtract", "params": [42, 23], "id": "2"},
            {"foo": "boo"},
            {"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"},
            {"jsonrpc": "2.0", "method": "echo", "params": [["hello", 5]], "id": "9"},
        ],
    )
    responses = await next_frame(session)
    assert isinstance(responses, list)
    by_id = {r["id"]: r for r in responses}
    assert len(responses) == 5
    assert by_id["1"]["result"] == 7
    assert by_id["2"]["result"] == 19
    assert by_id[None]["error"]["code"] == -32600
    assert by_id["5"]["error"]["code"] == -32601
    assert by_id["9"]["result"] == ["hello", 5]


async def test_batch_of_notifications_sends_nothing() -> None:
    """A batch holding only notifications gets no response at all."""
    session = make_session()
    await feed(
        session,
        [
            {"jsonrpc": "2.0", "method": "echo", "params": [1]},
            {"jsonrpc": "2.0", "method": "sum", "params": [1, 2]},
        ],
    )
    await no_frame(session)


@pytest.mark.parametrize(("batch", "count"), [([1], 1), ([1, 2, 3], 3)])
async def test_batch_of_non_objects_is_one_error_per_item(batch: list[int], count: int) -> None:
    """Each item that is not a request object gets its own -32600 in the array."""
    session = make_session()
    await feed(session, batch)
    responses = await next_frame(session)
    assert responses == [
        {"jsonrpc": "2.0", "error": responses[i]["error"], "id": None} for i in range(count)
    ]
    assert all(r["error"]["code"] == -32600 for r in responses)


async def test_empty_batch_is_a_single_invalid_request() -> None:
    """``[]`` is answered by one -32600 object, not an array."""
    session = make_session()
    await feed(session, [])
    response = await next_frame(session)
    assert isinstance(response, dict)
    assert response["error"]["code"] == -32600
    assert response["id"] is None


async def test_batch_over_max_batch_is_refused_whole() -> None:
    """More items than ``max_batch`` is one -32600 and none of them runs."""
    session = make_session(limits=SessionLimits(max_batch=3))
    await feed(session, [{"jsonrpc": "2.0", "method": "echo", "id": i} for i in range(4)])
    response = await next_frame(session)
    assert isinstance(response, dict)
    assert response["error"]["code"] == -32600
    await no_frame(session)


# Streams, cancellation


async def test_stream_sends_deltas_then_the_final_result() -> None:
    """A streaming method's pieces arrive as stream.delta notifications, then the response."""
    session = make_session()
    await feed(session, {"jsonrpc": "2.0", "method": "words", "params": ["a", "b"], "id": "s"})
    frames = [await next_frame(session) for _ in range(2)]
    texts = "".join(f["params"]["text"] for f in frames if f.get("method") == "stream.delta")
    final = frames[-1] if "result" in frames[-1] else await next_frame(session)
    assert texts == "ab"
    assert final == {"jsonrpc": "2.0", "result": {"finishReason": "stop", "count": 2}, "id": "s"}


async def test_cancel_ends_a_stream_with_finish_reason_cancelled() -> None:
    """rpc.cancel ends a stream at once with finishReason "cancelled" and closes the generator."""
    script = Script()
    session = make_session(("script", script.run))
    await feed(session, {"jsonrpc": "2.0", "method": "script", "id": 4})
    await script.pieces.put("Hel")
    delta = await next_frame(session)
    assert delta["params"] == {"id": 4, "seq": 0, "text": "Hel"}
    await feed(session, {"jsonrpc": "2.0", "method": "rpc.cancel", "params": {"id": 4}})
    assert await next_frame(session) == {
        "jsonrpc": "2.0",
        "result": {"finishReason": "cancelled"},
        "id": 4,
    }
    await until(lambda: session.inflight == 0)
    assert script.closed


async def test_cancelled_stream_may_report_its_own_final_result() -> None:
    """A generator that catches the cancel and yields a Final supplies the result."""
    reporter = Reporter()
    session = make_session(("report", reporter.run))
    await feed(session, {"jsonrpc": "2.0", "method": "report", "id": 5})
    await next_frame(session)
    await reporter.started.wait()
    await feed(session, {"jsonrpc": "2.0", "method": "rpc.cancel", "params": [5]})
    response = await next_frame(session)
    assert response["result"] == {"finishReason": "cancelled", "kept": "partial"}


async def test_cancel_of_a_non_streaming_call_is_error_cancelled() -> None:
    """Cancelling a plain call answers -32005 for it."""
    session = make_session()
    await feed(session, {"jsonrpc": "2.0", "method": "hang", "id": "h"})
    await until(lambda: session.inflight == 1)
    await feed(session, {"jsonrpc": "2.0", "method": "rpc.cancel", "params": {"id": "h"}})
    response = await next_frame(session)
    assert response["error"]["code"] == -32005
    assert response["id"] == "h"


async def test_cancel_as_a_request_says_whether_it_found_the_call() -> None:
    """rpc.cancel with an id answers {"cancelled": bool}; bad params are -32602."""
    session = make_session()
    await feed(session, {"jsonrpc": "2.0", "method": "hang", "id": 1})
    await until(lambda: session.inflight == 1)
    await feed(session, {"jsonrpc": "2.0", "method": "rpc.cancel", "params": {"id": 1}, "id": 2})
    frames = [await next_frame(session), await next_frame(session)]
    by_id = {f["id"]: f for f in frames}
    assert by_id[2]["result"] == {"cancelled": True}
    assert by_id[1]["error"]["code"] == -32005
    assert (await call(session, "rpc.cancel", {"id": 99}, id=3))["result"] == {"cancelled": False}
    assert (await call(session, "rpc.cancel", {"nope": 1}, id=4))["error"]["code"] == -32602


async def test_cancel_finds_a_call_by_a_big_integer_id() -> None:
    """An id beyond 64 bits is matched exactly by rpc.cancel (it is not rounded to a float)."""
    big = 123456789012345678901234567890
    session = make_session()
    await feed(session, {"jsonrpc": "2.0", "method": "hang", "id": big})
    await until(lambda: session.inflight == 1)
    await feed(session, {"jsonrpc": "2.0", "method": "rpc.cancel", "params": {"id": big}})
    response = await next_frame(session)
    assert response["error"]["code"] == -32005
    assert response["id"] == big


async def test_close_cancels_every_call_in_flight() -> None:
    """Closing the session cancels and awaits its calls: none outlives it."""
    script = Script()
    session = make_session(("script", script.run))
    await feed(session, {"jsonrpc": "2.0", "method": "hang", "id": 1})
    await feed(session, {"jsonrpc": "2.0", "method": "script", "id": 2})
    await script.pieces.put("running")
    await next_frame(session)
    async with asyncio.timeout(TIMEOUT):
        await session.close()
    assert session.inflight == 0
    assert script.closed


# Limits


async def test_calls_over_the_rate_are_refused_with_retry_after() -> None:
    """Beyond the burst, calls get -32004 requestsPerSecond with data.retryAfter."""
    abuse: list[str] = []
    session = make_session(limits=SessionLimits(rate=1, burst=2, flood_limit=3), abuse=abuse)
    responses = [await call(session, "echo", [i], id=i) for i in range(4)]
    assert [r.get("result") for r in responses[:2]] == [0, 1]
    for refused in responses[2:]:
        assert refused["error"]["code"] == -32004
        assert refused["error"]["data"]["limit"] == "requestsPerSecond"
        assert 0 < refused["error"]["data"]["retryAfter"] <= 1
    assert abuse == []
    await call(session, "echo", id=9)
    assert abuse == ["flood"]


async def test_garbage_in_a_row_is_reported_as_abuse() -> None:
    """``garbage_limit`` invalid frames in a row call on_abuse("garbage"); a valid call resets."""
    abuse: list[str] = []
    session = make_session(limits=SessionLimits(garbage_limit=3), abuse=abuse)
    for text in ("x", "[1]"):
        await feed(session, text)
        await next_frame(session)
    await call(session, "echo")
    for text in ("{", '{"jsonrpc": "2.0"}'):
        await feed(session, text)
        await next_frame(session)
    assert abuse == []
    await feed(session, "]")
    await next_frame(session)
    assert abuse == ["garbage"]


async def test_calls_beyond_max_inflight_are_refused() -> None:
    """A call over ``max_inflight`` gets -32004 inflightPerConnection."""
    session = make_session(limits=SessionLimits(max_inflight=2))
    for i in range(2):
        await feed(session, {"jsonrpc": "2.0", "method": "hang", "id": i})
    response = await call(session, "echo", id="over")
    assert response["error"]["code"] == -32004
    assert response["error"]["data"]["limit"] == "inflightPerConnection"
    await session.close()


async def test_a_full_batch_is_served_whatever_max_inflight_is() -> None:
    """A batch counts as one call in flight: all of its ``max_batch`` items are answered."""
    session = make_session(limits=SessionLimits(max_inflight=4, max_batch=50))
    await feed(
        session, [{"jsonrpc": "2.0", "method": "echo", "params": [i], "id": i} for i in range(50)]
    )
    responses = await next_frame(session)
    assert sorted(r["result"] for r in responses) == list(range(50))


async def test_a_batch_arriving_at_max_inflight_is_refused_whole() -> None:
    """With ``max_inflight`` calls running, a batch gets one -32004 inflightPerConnection."""
    session = make_session(limits=SessionLimits(max_inflight=2))
    for i in range(2):
        await feed(session, {"jsonrpc": "2.0", "method": "hang", "id": i})
    await feed(session, [{"jsonrpc": "2.0", "method": "echo", "id": "b"}])
    response = await next_frame(session)
    assert response["error"]["data"]["limit"] == "inflightPerConnection"
    assert response["id"] is None
    await session.close()


# Outbound: merging and memory bound


async def test_fast_reader_gets_one_frame_per_delta() -> None:
    """Deltas read as they come are one frame each, seq 0, 1, 2."""
    script = Script()
    session = make_session(("script", script.run))
    await feed(session, {"jsonrpc": "2.0", "method": "script", "id": 1})
    frames = []
    for piece in ("a", "b", "c"):
        await script.pieces.put(piece)
        frames.append(await next_frame(session))
    assert [f["params"] for f in frames] == [
        {"id": 1, "seq": 0, "text": "a"},
        {"id": 1, "seq": 1, "text": "b"},
        {"id": 1, "seq": 2, "text": "c"},
    ]
    assert session.outbound.merged == 0
    await script.pieces.put(None)
    assert (await next_frame(session))["result"] == {"finishReason": "stop"}


async def test_lagging_reader_gets_fewer_larger_frames_with_seq_of_the_last_piece() -> None:
    """Deltas queued while the reader lags merge into one frame whose seq is its last piece's."""
    script = Script()
    session = make_session(("script", script.run))
    await feed(session, {"jsonrpc": "2.0", "method": "script", "id": "m"})
    await script.pieces.put("He")
    first = await next_frame(session)
    for piece in ("ll", "o, ", "wor"):
        await script.pieces.put(piece)
    await until(lambda: script.produced == 4 and session.outbound.merged == 2)
    second = await next_frame(session)
    await script.pieces.put("ld")
    third = await next_frame(session)
    await script.pieces.put(None)
    final = await next_frame(session)
    assert [f["params"]["seq"] for f in (first, second, third)] == [0, 3, 4]
    assert [f["params"]["text"] for f in (first, second, third)] == ["He", "llo, wor", "ld"]
    assert final == {"jsonrpc": "2.0", "result": {"finishReason": "stop"}, "id": "m"}


async def test_deltas_of_two_streams_merge_separately() -> None:
    """Merging never mixes streams: each keeps its own text and its own positions."""
    outbound = Outbound()
    a, b = DeltaStream(b"1"), DeltaStream(b'"two"')
    for stream, text in ((a, "x"), (b, "p"), (a, "y"), (b, "q"), (a, "z")):
        await outbound.put_delta(stream, text)
    frames = [json.loads(await outbound.get()) for _ in range(2)]
    assert [f["params"] for f in frames] == [
        {"id": 1, "seq": 2, "text": "xyz"},
        {"id": "two", "seq": 1, "text": "pq"},
    ]
    await outbound.put_delta(a, "!")
    assert json.loads(await outbound.get())["params"] == {"id": 1, "seq": 3, "text": "!"}


async def test_a_merged_frame_carries_the_position_given_with_its_last_piece() -> None:
    """Pieces queued with explicit positions (a replayed log) merge; seq is the last one's."""
    outbound = Outbound()
    stream = DeltaStream(b"1", b',"streamId":"st_x"')
    for pos, text in ((7, "a"), (8, "b"), (9, "c")):
        await outbound.put_delta(stream, text, pos)
    assert json.loads(await outbound.get())["params"] == {
        "id": 1,
        "streamId": "st_x",
        "seq": 9,
        "text": "abc",
    }
    await outbound.put_delta(stream, "d", 10)
    assert json.loads(await outbound.get())["params"] == {"id": 1, "seq": 10, "text": "d"}


async def test_merged_frames_stay_under_max_merge_and_keep_merging_after_a_cut() -> None:
    """A frame stops growing at ``max_merge``; the next one keeps absorbing deltas."""
    outbound = Outbound(max_merge=200)
    stream = DeltaStream(b"1")
    a, b, c, d = ("a" * 60, "b" * 60, "c" * 60, "d" * 60)
    for text in (a, b, c):
        await outbound.put_delta(stream, text)
    first = json.loads(await outbound.get())["params"]
    await outbound.put_delta(stream, d)
    second = json.loads(await outbound.get())["params"]
    assert first == {"id": 1, "seq": 1, "text": a + b}
    assert second == {"id": 1, "seq": 3, "text": c + d}
    assert outbound.queued_bytes == 0


async def test_producers_wait_while_the_queue_is_full() -> None:
    """Over ``max_bytes`` queued, put waits until the reader drains; memory stays bounded."""
    outbound = Outbound(max_bytes=100)
    await asyncio.wait_for(outbound.put(b"x" * 150), TIMEOUT)
    blocked = asyncio.create_task(outbound.put(b"y" * 10))
    await asyncio.sleep(0.05)
    assert not blocked.done()
    # a queued frame also counts the buffer orjson gives every encoded frame
    assert outbound.queued_bytes == 150 + FRAME_OVERHEAD
    assert await asyncio.wait_for(outbound.get(), TIMEOUT) == b"x" * 150
    await asyncio.wait_for(blocked, TIMEOUT)
    assert await asyncio.wait_for(outbound.get(), TIMEOUT) == b"y" * 10


async def test_a_stream_into_a_full_queue_stops_producing() -> None:
    """A stream nobody reads is held back at the bound instead of buffering without limit."""
    piece = "z" * 100

    async def flood() -> AsyncIterator[str]:
        for _ in range(10_000):
            produced.append(1)
            yield piece

    produced: list[int] = []
    session = make_session(("flood", flood), max_bytes=1000)
    await feed(session, {"jsonrpc": "2.0", "method": "flood", "id": 1})
    await asyncio.sleep(0.05)
    assert len(produced) < 20
    assert session.outbound.queued_bytes <= 1000 + len(piece) + 64
    text = ""
    while True:
        frame = await next_frame(session)
        if "result" in frame:
            break
        text += frame["params"]["text"]
    assert text == piece * 10_000


async def test_close_wakes_waiting_producers_and_the_reader() -> None:
    """After close, a waiting producer and the reader get OutboundClosed instead of hanging."""
    from gateway.jsonrpc import OutboundClosed

    outbound = Outbound(max_bytes=10)
    await outbound.put(b"x" * 20)
    blocked = asyncio.create_task(outbound.put(b"y"))
    await asyncio.sleep(0)
    outbound.close()
    with pytest.raises(OutboundClosed):
        await asyncio.wait_for(blocked, TIMEOUT)
    with pytest.raises(OutboundClosed):
        await asyncio.wait_for(outbound.get(), TIMEOUT)


# Registry


async def _private() -> None:
    return None


def _sync() -> None:
    return None


@pytest.mark.parametrize(
    ("name", "fn", "error"),
    [
        ("_secret", _private, ValueError),
        ("chat._secret", _private, ValueError),
        ("chat.__init__", _private, ValueError),
        ("bad name", _private, ValueError),
        ("", _private, ValueError),
        ("echo", echo, ValueError),
        ("sync", _sync, TypeError),
        ("notcallable", 3, TypeError),
    ],
)
def test_bad_registrations_are_refused_at_registration(name: str, fn: Any, error: type) -> None:
    """Private names, dunders, duplicates and sync functions fail when registered."""
    registry = Registry()
    registry.add("echo", echo)
    with pytest.raises(error):
        registry.add(name, fn)


@pytest.mark.parametrize("method", ["hang", "script"])
async def test_cancel_arriving_before_the_call_starts_still_answers(method: str) -> None:
    """A call cancelled in the same batch it was sent in is answered, and its id freed."""
    script = Script()
    session = make_session(("script", script.run))
    await feed(
        session,
        [
            {"jsonrpc": "2.0", "method": method, "id": 1},
            {"jsonrpc": "2.0", "method": "rpc.cancel", "params": {"id": 1}, "id": 2},
        ],
    )
    by_id = {r["id"]: r for r in await next_frame(session)}
    assert by_id[2]["result"] == {"cancelled": True}
    if method == "hang":
        assert by_id[1]["error"]["code"] == -32005
    else:
        assert by_id[1]["result"] == {"finishReason": "cancelled"}
    assert (await call(session, "echo", ["again"], id=1))["result"] == "again"
