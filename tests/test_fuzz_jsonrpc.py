"""Fuzzing the sans-I/O JSON-RPC layer: any frames into an RpcSession, only JSON-RPC out.

Hypothesis generates frames (requests, notifications, batches, garbage,
deep nesting, ids of every kind and size) and session limits. Whatever
arrives, the session must not raise, must leave no task behind, and every
frame it sends must be a JSON-RPC 2.0 response (or array of them) or a
``stream.delta`` notification, with an error code from :class:`ErrorCode`,
echoing an id the client sent (exactly, type included) or null.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import sys
from collections.abc import AsyncIterator
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import ErrorCode, Unauthenticated
from gateway.jsonrpc import Final, MethodSpec, Outbound, Registry, RpcSession, SessionLimits
from gateway.jsonrpc.codec import MAX_DEPTH
from tests.fuzz import FUZZ, frames

DOCUMENTED = {int(code) for code in ErrorCode}
TIMEOUT = 30.0
"""Generous: a real hang fails, a loaded machine (2 cores, several suites) does not."""


async def echo(value: Any = None) -> Any:
    return value


async def subtract(minuend: int, subtrahend: int) -> int:
    return minuend - subtrahend


async def total(*numbers: int) -> int:
    return sum(numbers)


async def greet(name: str, greeting: str | None = None) -> str:
    return f"{greeting or 'hello'}, {name}"


async def broken() -> None:
    raise TypeError("a bug")


async def secret() -> str:
    return "never before login"


async def words(*parts: str) -> AsyncIterator[str | Final]:
    for part in parts:
        yield part
        await asyncio.sleep(0)
    yield Final({"finishReason": "stop", "count": len(parts)})


def _registry() -> Registry:
    registry = Registry()
    for name, fn in [
        ("echo", echo),
        ("subtract", subtract),
        ("sum", total),
        ("greet", greet),
        ("broken", broken),
        ("words", words),
    ]:
        registry.add(name, fn, public=True)
    registry.add("secret", secret)
    return registry


REGISTRY = _registry()


def _authorize(spec: MethodSpec) -> contextvars.Context:
    if not spec.public:
        raise Unauthenticated("Log in first")
    return contextvars.copy_context()


limits = st.builds(
    SessionLimits,
    max_inflight=st.integers(1, 8),
    max_batch=st.integers(1, 10),
    rate=st.sampled_from([1.0, 50.0, 1e6]),
    burst=st.integers(1, 50),
    flood_limit=st.integers(1, 30),
    garbage_limit=st.integers(1, 10),
)


def _loads(text: str | bytes) -> Any:
    """The stdlib's parse (big integers exact), deep enough for 1024 levels; None if invalid."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 5000))
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None
    finally:
        sys.setrecursionlimit(limit)


def _depth(value: Any) -> int:
    """Levels of arrays and objects, the way the nesting limit counts them."""
    depth, level = 0, [value]
    while level:
        depth += 1
        level = [
            child
            for item in level
            if isinstance(item, list | dict)
            for child in (item.values() if isinstance(item, dict) else item)
        ]
        level = [item for item in level if isinstance(item, list | dict)]
    return depth if isinstance(value, list | dict) else 0


def _key(value: Any) -> tuple[str, str]:
    return type(value).__name__, json.dumps(value)


def _sent_ids(text: str) -> set[tuple[str, str]]:
    """The ids of every request in a frame (exactly as JSON has them)."""
    message = _loads(text)
    items = message if isinstance(message, list) else [message]
    return {_key(item["id"]) for item in items if isinstance(item, dict) and "id" in item}


def _check_response(response: Any, sent: set[tuple[str, str]]) -> None:
    assert isinstance(response, dict), response
    assert response.get("jsonrpc") == "2.0", response
    assert "id" in response, response
    assert response["id"] is None or _key(response["id"]) in sent, response
    if "error" in response:
        assert set(response) == {"jsonrpc", "id", "error"}, response
        error = response["error"]
        assert isinstance(error, dict) and isinstance(error.get("message"), str), response
        assert error.get("code") in DOCUMENTED, response
        assert set(error) <= {"code", "message", "data"}, response
    else:
        assert set(response) == {"jsonrpc", "id", "result"}, response


def _check_frame(raw: bytes, sent: set[tuple[str, str]]) -> None:
    frame = _loads(raw)
    assert frame is not None, raw[:200]
    if isinstance(frame, list):
        assert frame, "an empty batch response"
        for response in frame:
            _check_response(response, sent)
    elif isinstance(frame, dict) and "method" in frame:
        assert frame["method"] == "stream.delta" and "id" not in frame, frame
        params = frame["params"]
        assert _key(params["id"]) in sent and params["id"] is not None, frame
        assert isinstance(params["seq"], int) and params["seq"] >= 0, frame
        assert isinstance(params["text"], str), frame
    else:
        _check_response(frame, sent)


def _run(texts: list[str], session_limits: SessionLimits) -> list[bytes]:
    """Feed ``texts`` to a new session and return every frame it sent."""
    # "method broken failed" with its traceback, hundreds of times, is expected here.
    session_log = logging.getLogger("gateway.jsonrpc.session")
    level = session_log.level
    session_log.setLevel(logging.CRITICAL)
    try:
        return asyncio.run(_session_run(texts, session_limits))
    finally:
        session_log.setLevel(level)


async def _session_run(texts: list[str], session_limits: SessionLimits) -> list[bytes]:
    loop = asyncio.get_running_loop()
    loop_errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: loop_errors.append(context))
    abuse: list[str] = []
    outbound = Outbound(max_bytes=1024 * 1024)
    session = RpcSession(
        REGISTRY, outbound, authorize=_authorize, limits=session_limits, on_abuse=abuse.append
    )
    sent_frames: list[bytes] = []

    async def drain() -> None:
        while True:
            sent_frames.append(await outbound.get())

    reader = loop.create_task(drain())
    async with asyncio.timeout(TIMEOUT):
        for text in texts:
            await session.handle_text(text)
        while session.inflight:
            await asyncio.sleep(0)
        for _ in range(3):
            await asyncio.sleep(0)
        await session.close()
    reader.cancel()
    await asyncio.gather(reader, return_exceptions=True)
    assert session.inflight == 0
    assert set(abuse) <= {"flood", "garbage"}
    assert not loop_errors, loop_errors
    return sent_frames


@FUZZ
@given(texts=st.lists(frames, min_size=1, max_size=12), session_limits=limits)
def test_any_frames_get_only_documented_json_rpc_answers(
    texts: list[str], session_limits: SessionLimits
) -> None:
    """Whatever frames arrive, the session raises nothing, leaves no task, and answers only
    JSON-RPC 2.0 with documented codes and ids the client sent."""
    sent: set[tuple[str, str]] = set()
    for text in texts:
        sent |= _sent_ids(text)
    for raw in _run(texts, session_limits):
        _check_frame(raw, sent)


@FUZZ
@given(texts=st.lists(frames, min_size=1, max_size=12))
def test_every_request_with_a_valid_id_is_answered_once(texts: list[str]) -> None:
    """Under generous limits, each single request frame with a usable id gets exactly one
    response with that id, however malformed the rest of it is."""
    generous = SessionLimits(max_inflight=100, rate=1e9, burst=10**9, garbage_limit=10**6)
    expected: dict[tuple[str, str], int] = {}
    for text in texts:
        message = _loads(text)
        if isinstance(message, dict) and "id" in message and _depth(message) <= MAX_DEPTH:
            id_ = message["id"]
            if id_ is not None and not isinstance(id_, bool | list | dict):
                expected[_key(id_)] = expected.get(_key(id_), 0) + 1
    answered: dict[tuple[str, str], int] = {}
    for raw in _run(texts, generous):
        frame = _loads(raw)
        if isinstance(frame, dict) and "id" in frame and frame["id"] is not None:
            answered[_key(frame["id"])] = answered.get(_key(frame["id"]), 0) + 1
    for key, count in expected.items():
        assert answered.get(key, 0) == count, (key, texts)
