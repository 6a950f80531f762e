"""Fixtures for the browser tests: a real gateway subprocess and headless Debian Chromium.

The gateway runs as ``python -m gateway serve --port P`` with static API keys for a
handful of users (one per test, so a model switch in one test never leaks into
another). The browser is driven with Playwright's sync API; the module-scoped
fixtures keep its event loop away from the asyncio tests elsewhere in the suite.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[2]
USERS = (
    "alice",
    "bob",
    "carol",
    "dave",
    "erin",
    "frank",
    "gina",
    "henry",
    "ivan",
    "judy",
    "kim",
    "lena",
    "mike",
    "nora",
    "omar",
    "pia",
    "quinn",
    *(f"user{i:02d}" for i in range(40)),
)
API_KEYS = ",".join(f"{u}:tok-{u}" for u in USERS)
START_TIMEOUT = 30.0
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class GatewayProcess:
    """``python -m gateway serve`` on a fixed port; can be stopped and started again."""

    def __init__(
        self,
        port: int,
        log_dir: Path,
        *,
        args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = port
        self.log_dir = log_dir
        self.args = args
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None
        self.starts = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        # GATEWAY_TEST_SERVER_CMD lets a developer point these tests at another build.
        override = os.environ.get("GATEWAY_TEST_SERVER_CMD")
        base = shlex.split(override) if override else [sys.executable, "-m", "gateway", "serve"]
        return [*base, "--port", str(self.port), *self.args]

    def start(self) -> None:
        assert self.proc is None, "already running"
        self.starts += 1
        self.log_path = self.log_dir / f"gateway-{self.port}-{self.starts}.log"
        env = dict(os.environ)
        # Conversations and sessions live in the test's own data directory (kept across a
        # restart of the same GatewayProcess), never in the checkout's ./.gateway.
        env.update(
            GATEWAY_API_KEYS=API_KEYS,
            GATEWAY_DATA_DIR=str(self.log_dir / "data"),
            PYTHONUNBUFFERED="1",
        )
        env.update(self.env)
        env.pop("GATEWAY_CONFIG", None)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.command(),
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        needle = f"Gateway listening on ws://127.0.0.1:{self.port}/ws"
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if needle in self.log():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        out = self.log()
        self.stop()
        raise RuntimeError(f"gateway did not start on port {self.port}:\n{out[-4000:]}")

    def log(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture(scope="module")
def chromium_path() -> Path:
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is not installed (apt-get install chromium)")
    return CHROMIUM


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, chromium_path: Path
) -> Iterator[GatewayProcess]:
    server = GatewayProcess(free_port(), tmp_path_factory.mktemp("gateway-logs"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture()
def own_gateway(tmp_path: Path, chromium_path: Path) -> Iterator[GatewayProcess]:
    """A gateway of the test's own, free to be restarted."""
    server = GatewayProcess(free_port(), tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser(chromium_path: Path) -> Iterator[Any]:
    from playwright.sync_api import expect, sync_playwright

    # The machine is shared and often loaded: give assertions the same 15 s as actions.
    expect.set_options(timeout=15_000)

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(chromium_path), args=LAUNCH_ARGS)
        try:
            yield b
        finally:
            b.close()


class WsLog:
    """JSON frames the page sent and received over its WebSockets."""

    def __init__(self) -> None:
        self.sent: list[Any] = []
        self.received: list[Any] = []
        self.closed = 0

    def attach(self, ws: Any) -> None:
        ws.on("framesent", lambda payload: self.sent.append(_json(payload)))
        ws.on("framereceived", lambda payload: self.received.append(_json(payload)))
        ws.on("close", lambda _ws: self._on_close())

    def _on_close(self) -> None:
        self.closed += 1

    def calls(self, method: str) -> list[dict[str, Any]]:
        return [f for f in self.sent if isinstance(f, dict) and f.get("method") == method]


def _json(payload: Any) -> Any:
    if isinstance(payload, bytes):
        return None
    try:
        return json.loads(payload)
    except ValueError:
        return None


@pytest.fixture()
def context_factory(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    contexts: list[Any] = []

    def make(**kwargs: Any) -> Any:
        kwargs.setdefault("viewport", {"width": 1100, "height": 800})
        ctx = browser.new_context(**kwargs)
        ctx.set_default_timeout(15_000)
        ctx.set_default_navigation_timeout(15_000)
        contexts.append(ctx)
        return ctx

    yield make
    for ctx in contexts:
        ctx.close()


def instrument(pg: Any) -> Any:
    """Record the page's WebSocket frames (``pg.ws_log``) and uncaught errors."""
    pg.ws_log = WsLog()
    pg.on("websocket", pg.ws_log.attach)
    pg.page_errors = []
    pg.on("pageerror", lambda exc: pg.page_errors.append(str(exc)))
    return pg


@pytest.fixture()
def open_page(context_factory: Any) -> Iterator[Any]:
    """``open_page(**context_options)``: an instrumented page in a fresh browser context."""
    pages: list[Any] = []

    def make(**kwargs: Any) -> Any:
        pg = instrument(context_factory(**kwargs).new_page())
        pages.append(pg)
        return pg

    yield make
    errors = [e for pg in pages for e in pg.page_errors]
    assert not errors, f"uncaught errors in the page: {errors}"


@pytest.fixture()
def page(open_page: Any) -> Any:
    return open_page()
