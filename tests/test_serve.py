"""`gateway serve` as a person runs it: the embedded default, its token, and a clean stop."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _start(env: dict[str, str]) -> tuple[subprocess.Popen[str], list[str]]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--port", str(port)],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    # With keys configured the last line is "listening"; without, the token comes after it.
    last = "listening" if env.get("GATEWAY_API_KEYS") else "Token:"
    lines: list[str] = []
    assert proc.stdout is not None
    async with asyncio.timeout(20):
        while not lines or last not in lines[-1]:
            line = await asyncio.to_thread(proc.stdout.readline)
            if not line:
                raise AssertionError("".join(lines))
            lines.append(line)
    return proc, lines


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    for name in ("GATEWAY_API_KEYS", "GATEWAY_JWT_SECRET", "GATEWAY_ADMINS", "GATEWAY_PORT"):
        monkeypatch.delenv(name, raising=False)
    return {"GATEWAY_DATA_DIR": str(tmp_path / "data")}


async def test_the_embedded_default_mints_a_token_that_works(clean_env: dict[str, str]) -> None:
    """With no keys configured, serve prints a UI URL and a token; the token logs in."""
    proc, lines = await _start(clean_env)
    try:
        output = "".join(lines)
        url = re.search(r"(ws://127\.0\.0\.1:\d+/ws)", output)
        token = re.search(r"#token=(\S+)", output)
        assert url and token
        async with asyncio.timeout(10):
            async with connect(url.group(1)) as ws:
                # no credentials: refused
                await ws.send('{"jsonrpc":"2.0","id":1,"method":"chat.listModels"}')
                assert json.loads(await ws.recv())["error"]["code"] == -32001
                login = {
                    "jsonrpc": "2.0",
                    "id": 2,
                    "method": "auth.login",
                    "params": {"token": token.group(1)},
                }
                await ws.send(json.dumps(login))
                assert json.loads(await ws.recv())["result"]["user"]["id"] == "local"
                await ws.send('{"jsonrpc":"2.0","id":3,"method":"chat.listModels"}')
                names = [m["name"] for m in json.loads(await ws.recv())["result"]]
        assert names == ["offline", "offline-fast"]
    finally:
        proc.kill()
        proc.wait()


async def test_sigterm_drains_closes_with_1012_and_exits_zero(clean_env: dict[str, str]) -> None:
    """SIGTERM lets the running answer finish, then closes its socket with 1012 and exits 0."""
    proc, lines = await _start({**clean_env, "GATEWAY_API_KEYS": "alice:tok-a"})
    try:
        url = re.search(r"(ws://127\.0\.0\.1:\d+/ws)", "".join(lines))
        assert url
        async with asyncio.timeout(15):
            ws = await connect(url.group(1), additional_headers={"Authorization": "Bearer tok-a"})
            await ws.send('{"jsonrpc":"2.0","id":1,"method":"chat.postChat","params":["hi"]}')
            await ws.recv()
            proc.send_signal(signal.SIGTERM)
            frames = []
            with pytest.raises(ConnectionClosed) as info:
                while True:
                    frames.append(json.loads(await ws.recv()))
            assert frames[-1]["result"]["finishReason"] == "stop"
            assert info.value.rcvd is not None and info.value.rcvd.code == 1012
            assert await asyncio.to_thread(proc.wait) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
