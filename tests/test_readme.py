"""The README's examples work as printed."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

from tests.support import gateway_server

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def _python_block(heading: str) -> str:
    section = README.split(heading, 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, heading
    return match.group(1)


async def _run(code: str, gw_url: str) -> str:
    """Run a README example against the gateway at ``gw_url``; its standard output."""
    code = code.replace("ws://127.0.0.1:8765/ws", gw_url)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(30):
        out, _ = await proc.communicate()
    assert proc.returncode == 0
    return out.decode()


async def test_the_ten_line_bot_streams_an_answer() -> None:
    """The plain-websockets bot of the README prints a streamed answer and its usage."""
    code = _python_block("## A bot in ten lines")
    assert len(code.strip().splitlines()) <= 12
    async with gateway_server(api_keys={"key-1": "alice"}, default_model="offline-fast") as gw:
        text = await _run(code, gw.ws_url)
    assert 'You said: "Hello!"' in text
    assert "totalTokens" in text


async def test_the_python_client_example_streams_an_answer() -> None:
    """The README's gateway.client example prints a streamed answer and its usage."""
    code = _python_block("## Python client")
    assert len(code.strip().splitlines()) <= 14
    async with gateway_server(api_keys={"key-1": "alice"}) as gw:
        text = await _run(code, gw.ws_url)
    assert 'You said: "Hello!"' in text
    assert "totalTokens" in text
