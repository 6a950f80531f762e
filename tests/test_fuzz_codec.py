"""Fuzzing the codec: one parser, one nesting limit, exact ids, whatever the frame holds."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import ParseError
from gateway.jsonrpc.codec import MAX_DEPTH, decode, encode
from tests.fuzz import FUZZ, frames, json_values, nested_frame, requests, valid_ids


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and json.dumps(a) == json.dumps(b)


def _exact_expected(a: Any, b: Any) -> bool:
    """``a`` is ``b`` exactly where JSON-RPC needs it: ids that are valid (other ids are
    answered with id null, whatever they hold)."""
    if isinstance(b, list | dict | bool):
        return True
    return _same(a, b)


@FUZZ
@given(text=st.one_of(frames, st.text(max_size=60)))
def test_decode_returns_a_value_or_raises_parse_error(text: str) -> None:
    """Any text: a value, or ParseError (never another exception)."""
    try:
        decode(text)
    except ParseError:
        pass


@FUZZ
@given(id_=valid_ids, depth=st.integers(2, MAX_DEPTH + 8))
def test_the_nesting_limit_does_not_depend_on_the_id(id_: Any, depth: int) -> None:
    """A frame ``depth`` levels deep parses iff depth <= 1024, whatever its id; the id is exact."""
    text = nested_frame(id_, depth)
    if depth > MAX_DEPTH:
        with pytest.raises(ParseError):
            decode(text)
    else:
        assert _same(decode(text)["id"], id_)


@FUZZ
@given(message=requests(), batch=st.booleans(), others=st.lists(requests(), max_size=3))
def test_request_ids_and_cancel_targets_come_back_exactly(
    message: dict[str, Any], batch: bool, others: list[dict[str, Any]]
) -> None:
    """Every request id, and the id an rpc.cancel names, is decoded exactly (big integers
    included); everything else is what orjson reads."""
    frame: Any = [message, *others] if batch else message
    text = json.dumps(frame)
    decoded = decode(text)
    plain = orjson.loads(text)
    items = decoded if batch else [decoded]
    originals = frame if batch else [frame]
    assert len(items) == len(originals)
    for item, original, fast in zip(items, originals, plain if batch else [plain], strict=True):
        if "id" in original:
            assert _exact_expected(item["id"], original["id"])
        if original.get("method") == "rpc.cancel":
            params = original.get("params")
            if isinstance(params, dict) and "id" in params:
                assert _exact_expected(item["params"]["id"], params["id"])
            elif isinstance(params, list) and len(params) == 1:
                assert _exact_expected(item["params"][0], params[0])
        rest = {k: v for k, v in item.items() if k not in ("id", "params")}
        assert rest == {k: v for k, v in fast.items() if k not in ("id", "params")}


@FUZZ
@given(value=json_values)
def test_encode_round_trips_any_json_value(value: Any) -> None:
    """What encode writes, the stdlib reads back as the same value (big integers included)."""
    assert json.loads(encode(value)) == json.loads(json.dumps(value))


@pytest.mark.parametrize(
    "text",
    [
        '{"jsonrpc":"2.0","method":"m","id":12345678901234567890123,"params":["12345678901234567890123"]}',
        '{"jsonrpc":"2.0","method":"m","params":["\\\\",12345678901234567890123,"\\"1"],"id":-98765432109876543210}',
        '{"jsonrpc":"2.0","method":"m","id":1e30,"params":[1.5e-12345678901234567890]}',
        '{"jsonrpc":"2.0","method":"m","params":{"id":12345678901234567890123},"id":18446744073709551616}',
        '[{"jsonrpc":"2.0","method":"rpc.cancel","params":[123456789012345678901234567890]},'
        '{"jsonrpc":"2.0","method":"rpc.cancel","params":{"id":-123456789012345678901234567890}}]',
    ],
)
def test_exact_ids_whatever_strings_and_floats_surround_them(text: str) -> None:
    """Digits in strings, escaped quotes and backslashes, float exponents: ids stay exact."""
    assert _ids_exact(decode(text), json.loads(text))


def _ids_exact(decoded: Any, expected: Any) -> bool:
    items = decoded if isinstance(decoded, list) else [decoded]
    wanted = expected if isinstance(expected, list) else [expected]
    for item, want in zip(items, wanted, strict=True):
        if "id" in want and not _same(item["id"], want["id"]):
            return False
        if want.get("method") == "rpc.cancel" and not _same(item["params"], want["params"]):
            return False
    return True
