"""JSON-RPC 2.0 over real sockets: every example of the specification, ids, params, concurrency.

The specification's examples (https://www.jsonrpc.org/specification, section 7)
call ``subtract``, ``sum``, ``update``, ``notify_hello``, ``notify_sum`` and
``get_data``; a gateway has none of them, so the tests register them (the
registry is looked up per call, so adding methods to a running gateway works).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from gateway.server.app import Gateway
from tests.support import RawClient, assert_positions, gateway_server, raw_client

TIMEOUT = 10.0
BIG = 123456789012345678901234567890

updates: list[Any] = []


async def subtract(minuend: int, subtrahend: int) -> int:
    return minuend - subtrahend


async def sum_(*numbers: int) -> int:
    return sum(numbers)


async def update(*values: Any) -> None:
    updates.append(values)


async def notify_hello(*values: Any) -> None:
    return None


async def get_data() -> list:
    return ["hello", 5]


async def broken(value: str) -> str:
    return value + 1  # type: ignore[operator]  # a bug: TypeError inside the method


SPEC_METHODS: dict[str, Callable[..., Any]] = {
    "subtract": subtract,
    "sum": sum_,
    "update": update,
    "notify_hello": notify_hello,
    "notify_sum": sum_,
    "get_data": get_data,
    "test.broken": broken,
}


@pytest.fixture
async def gw() -> AsyncIterator[Gateway]:
    async with gateway_server() as gw:
        for name, fn in SPEC_METHODS.items():
            gw.registry.add(name, fn)
        yield gw


@pytest.fixture
async def client(gw: Gateway) -> AsyncIterator[RawClient]:
    async with raw_client(gw) as client:
        yield client


async def exchange(client: RawClient, text: str) -> Any:
    """Send one frame exactly as written and return the next frame."""
    await client.send(text)
    return await client.recv()


async def assert_silent(client: RawClient, wait: float = 0.3) -> None:
    """No frame arrives within ``wait`` seconds."""
    with pytest.raises(TimeoutError):
        frame = await client.recv(timeout=wait)
        pytest.fail(f"unexpected frame {frame!r}")


async def frames_until_response(client: RawClient, id_: Any) -> list[dict[str, Any]]:
    """Every frame up to and including the response for ``id_``."""
    frames = []
    while True:
        frame = await client.recv()
        frames.append(frame)
        if "method" not in frame and frame.get("id") == id_:
            return frames


# Section 7: the specification's examples


@pytest.mark.parametrize(
    ("text", "result", "id_"),
    [
        ('{"jsonrpc": "2.0", "method": "subtract", "params": [42, 23], "id": 1}', 19, 1),
        ('{"jsonrpc": "2.0", "method": "subtract", "params": [23, 42], "id": 2}', -19, 2),
    ],
)
async def test_spec_rpc_call_with_positional_parameters(
    client: RawClient, text: str, result: int, id_: int
) -> None:
    """--> subtract [42, 23] <-- 19 (and the reverse)."""
    assert await exchange(client, text) == {"jsonrpc": "2.0", "result": result, "id": id_}


@pytest.mark.parametrize(
    ("text", "result", "id_"),
    [
        (
            '{"jsonrpc": "2.0", "method": "subtract", '
            '"params": {"subtrahend": 23, "minuend": 42}, "id": 3}',
            19,
            3,
        ),
        (
            '{"jsonrpc": "2.0", "method": "subtract", '
            '"params": {"minuend": 42, "subtrahend": 23}, "id": 4}',
            19,
            4,
        ),
    ],
)
async def test_spec_rpc_call_with_named_parameters(
    client: RawClient, text: str, result: int, id_: int
) -> None:
    """--> subtract {subtrahend, minuend} in any order <-- 19."""
    assert await exchange(client, text) == {"jsonrpc": "2.0", "result": result, "id": id_}


async def test_gateway_method_takes_positional_or_named_params(client: RawClient) -> None:
    """chat.setModel ["offline-fast"] and {"modelName": "offline-fast"} both work."""
    assert (await client.call("chat.setModel", ["offline-fast"]))["result"] is True
    assert (await client.call("chat.setModel", {"modelName": "offline"}))["result"] is True
    assert (await client.call("chat.getCurrentModel"))["result"]["name"] == "offline"


async def test_spec_notifications_get_no_response(client: RawClient) -> None:
    """--> update [1,2,3,4,5]; --> foobar: nothing comes back, and update did run."""
    updates.clear()
    await client.send('{"jsonrpc": "2.0", "method": "update", "params": [1,2,3,4,5]}')
    await client.send('{"jsonrpc": "2.0", "method": "foobar"}')
    await assert_silent(client)
    assert updates == [(1, 2, 3, 4, 5)]


async def test_spec_rpc_call_of_non_existent_method(client: RawClient) -> None:
    """--> foobar id "1" <-- -32601 with id "1"."""
    response = await exchange(client, '{"jsonrpc": "2.0", "method": "foobar", "id": "1"}')
    assert response["error"]["code"] == -32601
    assert response["error"]["message"]
    assert response["id"] == "1"
    assert set(response) == {"jsonrpc", "error", "id"}


async def test_spec_rpc_call_with_invalid_json(client: RawClient) -> None:
    """--> broken JSON <-- -32700 with id null."""
    text = '{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]'
    response = await exchange(client, text)
    assert response["error"]["code"] == -32700
    assert response["id"] is None


async def test_spec_rpc_call_with_invalid_request_object(client: RawClient) -> None:
    """--> method 1, params "bar" <-- -32600 with id null."""
    response = await exchange(client, '{"jsonrpc": "2.0", "method": 1, "params": "bar"}')
    assert response["error"]["code"] == -32600
    assert response["id"] is None


async def test_spec_rpc_call_batch_with_invalid_json(client: RawClient) -> None:
    """--> a batch cut off mid-way <-- one -32700 object (not an array)."""
    text = (
        '[{"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},'
        '{"jsonrpc": "2.0", "method"]'
    )
    response = await exchange(client, text)
    assert isinstance(response, dict)
    assert response["error"]["code"] == -32700
    assert response["id"] is None


async def test_spec_rpc_call_with_an_empty_array(client: RawClient) -> None:
    """--> [] <-- one -32600 object with id null."""
    response = await exchange(client, "[]")
    assert isinstance(response, dict)
    assert response["error"]["code"] == -32600
    assert response["id"] is None


@pytest.mark.parametrize("text", ["[1]", "[1,2,3]"])
async def test_spec_rpc_call_with_an_invalid_batch(client: RawClient, text: str) -> None:
    """--> [1] or [1,2,3] <-- an array with one -32600 (id null) per item."""
    responses = await exchange(client, text)
    assert isinstance(responses, list)
    assert len(responses) == len(json.loads(text))
    for response in responses:
        assert response["jsonrpc"] == "2.0"
        assert response["error"]["code"] == -32600
        assert response["id"] is None


async def test_spec_rpc_call_batch(client: RawClient) -> None:
    """--> the mixed batch <-- results and errors for the requests, none for notifications."""
    text = """[
        {"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},
        {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]},
        {"jsonrpc": "2.0", "method": "subtract", "params": [42,23], "id": "2"},
        {"foo": "boo"},
        {"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"},
        {"jsonrpc": "2.0", "method": "get_data", "id": "9"}
    ]"""
    responses = await exchange(client, text)
    assert isinstance(responses, list)
    assert len(responses) == 5
    by_id = {r["id"]: r for r in responses}
    assert by_id["1"] == {"jsonrpc": "2.0", "result": 7, "id": "1"}
    assert by_id["2"] == {"jsonrpc": "2.0", "result": 19, "id": "2"}
    assert by_id[None]["error"]["code"] == -32600
    assert by_id["5"]["error"]["code"] == -32601
    assert by_id["9"] == {"jsonrpc": "2.0", "result": ["hello", 5], "id": "9"}
    await assert_silent(client, 0.1)


async def test_spec_rpc_call_batch_all_notifications(client: RawClient) -> None:
    """--> a batch of notifications <-- nothing at all."""
    await client.send(
        '[{"jsonrpc": "2.0", "method": "notify_sum", "params": [1,2,4]},'
        '{"jsonrpc": "2.0", "method": "notify_hello", "params": [7]}]'
    )
    await assert_silent(client)
    assert (await client.call("get_data"))["result"] == ["hello", 5]


# Ids


@pytest.mark.parametrize(
    "id_",
    [
        "héllo wörld",
        "🚀✨👩‍👩‍👧",
        "مرحبا بالعالم",
        "שלום\u200f",
        "\u202egnp.exe",
        "",
        0,
        -1,
        -(2**63),
        2**64 - 1,
        BIG,
        -BIG,
        2.5,
        None,
    ],
)
async def test_ids_are_echoed_exactly(client: RawClient, id_: Any) -> None:
    """Unicode, huge and negative integers, fractions and null come back unchanged."""
    await client.send({"jsonrpc": "2.0", "method": "chat.getCurrentModel", "id": id_})
    async with asyncio.timeout(TIMEOUT):
        raw = str(await client.ws.recv())
    response = json.loads(raw)
    assert "result" in response
    assert response["id"] == id_
    assert type(response["id"]) is type(id_)
    if isinstance(id_, int):
        assert f'"id":{id_}' in raw.replace(" ", "")


async def test_stream_deltas_carry_a_big_integer_id_exactly(client: RawClient) -> None:
    """A stream's deltas and final response carry an id beyond 64 bits unchanged."""
    await client.call("chat.setModel", ["offline-fast"])
    text, deltas, final = await client.stream("chat.postChat", ["hi"], id=BIG)
    assert text
    assert all(d["id"] == BIG for d in deltas)
    assert_positions(deltas)
    assert final["id"] == BIG
    assert final["result"]["finishReason"] == "stop"


# Params


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("chat.setModel", {"modelName": "offline-fast", "bogus": 1}),
        ("chat.setModel", {"model": "offline-fast"}),
        ("chat.setModel", ["offline-fast", "extra"]),
        ("chat.setModel", []),
        ("chat.getCurrentModel", {"verbose": True}),
        ("subtract", {"minuend": 1, "subtrahend": 2, "x": 3}),
    ],
)
async def test_params_that_do_not_fit_the_signature_are_invalid_params(
    client: RawClient, method: str, params: Any
) -> None:
    """Unknown named params, missing or surplus positional ones: -32602."""
    response = await client.call(method, params)
    assert response["error"]["code"] == -32602


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("chat.setModel", [5]),
        ("chat.setModel", {"modelName": None}),
        ("chat.postChat", {"message": ["hi"]}),
        ("chat.chatWithHistory", ["hi", "not a list"]),
        ("chat.postChatWithParams", ["hi", [1]]),
        ("subtract", [1.5, 2]),
        ("subtract", [True, 2]),
        ("sum", [1, "2"]),
    ],
)
async def test_params_of_the_wrong_type_are_invalid_params(
    client: RawClient, method: str, params: Any
) -> None:
    """A value of the wrong JSON type for its annotation: -32602."""
    response = await client.call(method, params)
    assert response["error"]["code"] == -32602


async def test_type_error_inside_a_method_is_internal_error_with_no_detail(
    client: RawClient,
) -> None:
    """A TypeError raised inside the method (not by binding) is a bare -32603 Internal error."""
    response = await client.call("test.broken", ["x"])
    assert response["error"] == {"code": -32603, "message": "Internal error"}
    assert "str" not in json.dumps(response)
    assert (await client.call("get_data"))["result"] == ["hello", 5]


# Discovery


async def test_rpc_discover_describes_every_method(gw: Gateway) -> None:
    """rpc.discover (callable before login) lists the methods with params and streaming marks."""
    async with raw_client(gw, token=None) as anonymous:
        doc = (await anonymous.call("rpc.discover"))["result"]
    assert doc["openrpc"].startswith("1.")
    assert doc["info"]["title"] == "gateway"
    assert doc["info"]["version"]
    methods = {m["name"]: m for m in doc["methods"]}
    for name in (
        "auth.login",
        "auth.refresh",
        "auth.whoami",
        "chat.postChat",
        "chat.setModel",
        "chat.listModels",
        "rpc.discover",
    ):
        assert name in methods
    assert not any(name.split(".")[-1].startswith("_") for name in methods)
    set_model = methods["chat.setModel"]
    assert set_model["params"] == [
        {"name": "modelName", "required": True, "schema": {"type": "string"}}
    ]
    assert set_model["summary"]
    assert set_model.get("x-streaming") is None
    assert methods["chat.postChat"]["x-streaming"] is True
    history = {p["name"]: p for p in methods["chat.chatNonStreaming"]["params"]}
    assert history["history"]["required"] is False
    assert history["message"]["required"] is True


# Concurrency and cancellation


async def test_a_stream_does_not_block_another_call_on_the_same_socket(
    client: RawClient,
) -> None:
    """setModel answers while a paced stream on the same socket is still running."""
    await client.send(
        {"jsonrpc": "2.0", "method": "chat.postChat", "params": ["tell me"], "id": "s"}
    )
    first = await client.recv()
    assert first["method"] == "stream.delta"
    await client.send(
        {"jsonrpc": "2.0", "method": "chat.setModel", "params": ["offline-fast"], "id": "m"}
    )
    frames = await frames_until_response(client, "m")
    assert frames[-1]["result"] is True
    assert not any(f.get("id") == "s" for f in frames)
    rest = await frames_until_response(client, "s")
    assert any(f.get("method") == "stream.delta" for f in rest)
    assert rest[-1]["result"]["finishReason"] == "stop"
    assert rest[-1]["result"]["model"] == "offline"


async def test_rpc_cancel_ends_a_stream_with_finish_reason_cancelled(client: RawClient) -> None:
    """rpc.cancel on a running stream: the response says "cancelled", text so far is kept."""
    await client.send({"jsonrpc": "2.0", "method": "chat.postChat", "params": ["hi"], "id": 7})
    first = await client.recv()
    stream_id = first["params"]["streamId"]
    assert first["params"] == {
        "id": 7,
        "streamId": stream_id,
        "seq": 0,
        "text": first["params"]["text"],
    }
    await client.send({"jsonrpc": "2.0", "method": "rpc.cancel", "params": {"id": 7}})
    frames = await frames_until_response(client, 7)
    result = frames[-1]["result"]
    assert result["finishReason"] == "cancelled"
    assert result["usage"]["completionTokens"] >= 1
    assert_positions([first["params"]] + [f["params"] for f in frames[:-1]])
    assert result["streamId"] == stream_id


async def test_rpc_cancel_finds_a_stream_by_a_big_integer_id(client: RawClient) -> None:
    """rpc.cancel naming an id beyond 64 bits cancels exactly that stream."""
    await client.send({"jsonrpc": "2.0", "method": "chat.postChat", "params": ["hi"], "id": BIG})
    await client.recv()
    await client.send({"jsonrpc": "2.0", "method": "rpc.cancel", "params": {"id": BIG}})
    frames = await frames_until_response(client, BIG)
    assert frames[-1]["result"]["finishReason"] == "cancelled"


async def test_rpc_cancel_of_a_non_streaming_call_is_error_cancelled(client: RawClient) -> None:
    """Cancelling chat.chatNonStreaming (paced model) answers -32005 for it."""
    await client.send(
        {"jsonrpc": "2.0", "method": "chat.chatNonStreaming", "params": ["hi"], "id": "n"}
    )
    await asyncio.sleep(0.1)
    cancel = await client.call("rpc.cancel", {"id": "n"}, id="c")
    assert cancel["result"] == {"cancelled": True}
    response = await client.recv()
    assert response["id"] == "n"
    assert response["error"]["code"] == -32005


async def test_rpc_cancel_of_an_unknown_id_changes_nothing(client: RawClient) -> None:
    """Cancelling an id not in flight: {"cancelled": false}, or silence as a notification."""
    assert (await client.call("rpc.cancel", {"id": "nope"}))["result"] == {"cancelled": False}
    await client.send({"jsonrpc": "2.0", "method": "rpc.cancel", "params": {"id": "nope"}})
    await assert_silent(client, 0.1)
