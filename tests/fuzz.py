"""Hypothesis strategies and settings shared by the fuzz tests (tests/test_fuzz_*.py).

``GATEWAY_FUZZ_EXAMPLES`` sets how many examples each fuzz test runs
(default 150, a few seconds in CI); tests/README.md describes the longer run.
"""

from __future__ import annotations

import json
import os
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

__all__ = [
    "FUZZ",
    "batches",
    "frames",
    "ids",
    "json_values",
    "nested_frame",
    "requests",
    "valid_ids",
]

FUZZ = settings(
    max_examples=int(os.environ.get("GATEWAY_FUZZ_EXAMPLES", "150")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
"""Bounded in examples, not time: no deadline (the machine is shared and noisy)."""

BIG = 2**80

integers = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.integers(min_value=-BIG, max_value=BIG),
    st.sampled_from([2**63, 2**64, -(2**63) - 1, 10**19, -(10**19), 10**30, 0]),
)
floats = st.floats(allow_nan=False, allow_infinity=False)
texts = st.one_of(
    st.text(max_size=20),
    st.sampled_from(['"', "\\", '\\"', '12345678901234567890123"', "\u202e", "🚀", "\x00"]),
    st.from_regex(r'[\\"0-9eE.+-]{0,30}', fullmatch=True),
)
scalars = st.one_of(st.none(), st.booleans(), integers, floats, texts)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(texts, children, max_size=5),
    ),
    max_leaves=20,
)
valid_ids = st.one_of(st.none(), integers, floats, texts)
"""Ids JSON-RPC allows: null, numbers (any size), strings."""
ids = st.one_of(valid_ids, st.booleans(), st.lists(scalars, max_size=2), st.just({}))

METHODS = ["echo", "subtract", "sum", "greet", "words", "broken", "secret", "rpc.cancel"]
methods = st.one_of(st.sampled_from(METHODS), texts)
params = st.one_of(
    st.lists(json_values, max_size=4),
    st.dictionaries(st.sampled_from(["value", "minuend", "subtrahend", "name", "id"]), json_values),
    st.dictionaries(texts, json_values, max_size=3),
    scalars,
)


@st.composite
def requests(draw: st.DrawFn) -> Any:
    """A JSON-RPC request or notification, mostly well formed, sometimes not."""
    message: dict[str, Any] = {}
    if draw(st.integers(0, 9)):
        message["jsonrpc"] = "2.0"
    elif draw(st.booleans()):
        message["jsonrpc"] = draw(scalars)
    if draw(st.integers(0, 9)):
        message["method"] = draw(methods)
    elif draw(st.booleans()):
        message["method"] = draw(scalars)
    if draw(st.booleans()):
        message["params"] = draw(params)
    if draw(st.integers(0, 3)):
        message["id"] = draw(ids if draw(st.integers(0, 4)) == 0 else valid_ids)
    if not draw(st.integers(0, 15)):
        message[draw(texts)] = draw(scalars)
    return message


batches = st.lists(st.one_of(requests(), scalars), max_size=8)


def nested_frame(id_: Any, depth: int) -> str:
    """A request ``depth`` levels deep (its params nest ``depth - 1`` arrays)."""
    inner = depth - 1
    return (
        f'{{"jsonrpc":"2.0","method":"echo","id":{json.dumps(id_)},"params":'
        + "[" * inner
        + "]" * inner
        + "}"
    )


frames = st.one_of(
    requests().map(json.dumps),
    requests().map(json.dumps),
    batches.map(json.dumps),
    json_values.map(json.dumps),
    st.text(max_size=40),
    st.builds(nested_frame, valid_ids, st.integers(1020, 1030)),
    st.sampled_from(["", "[]", "[[]]", "{", '{"jsonrpc":"2.0"', "null", "1e999", "[" * 2000]),
)
"""Text frames as a client could send them."""
