"""protocol.md is the contract: every wire constant in the code is documented there."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.errors import ErrorCode
from gateway.server.closecodes import CloseCode

PROTOCOL = (Path(__file__).resolve().parents[1] / "protocol.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("code", list(ErrorCode), ids=lambda c: c.name)
def test_every_error_code_has_a_table_row_and_an_example_frame(code: ErrorCode) -> None:
    """Each ErrorCode is in the errors table and in at least one example error frame."""
    assert re.search(rf"^\| {int(code)} \| {code.name} \|", PROTOCOL, re.M), code
    assert f'"error":{{"code":{int(code)},' in PROTOCOL, code


@pytest.mark.parametrize("code", list(CloseCode), ids=lambda c: c.name)
def test_every_close_code_has_a_table_row(code: CloseCode) -> None:
    """Each CloseCode is in the close-code table with its name."""
    assert re.search(rf"^\| {int(code)} \| {code.name} \|", PROTOCOL, re.M), code


def test_private_close_codes_follow_the_reconnect_split() -> None:
    """4000-4499 may reconnect, 4500-4999 may not, as protocol.md says."""
    for code in CloseCode:
        if code >= 4000:
            assert code.may_reconnect == (code < 4500)
