"""A private ``redis-server`` for tests: a free port, a temporary directory, no persistence.

Never the shared Redis on 6379. :class:`RedisServer` can be stopped and
started again on the same port (fault tests); the ``redis_server`` fixture in
this module (import it into a test module) starts one per test module.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

__all__ = [
    "STORES",
    "TEST_REDIS_TIMEOUT",
    "GatewayProcess",
    "RedisServer",
    "free_port",
    "gateway_processes",
    "redis",
    "redis_available",
    "redis_server",
    "redis_url",
    "running_redis",
    "store_kind",
    "store_url",
]

SHARED_PORT = 6379
TEST_REDIS_TIMEOUT = 5.0
"""``redis_timeout`` for tests that are not about faults: the machine is shared and slow at
times, and a 1 s stall must not look like an outage (fault tests set their own)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_available() -> bool:
    return shutil.which("redis-server") is not None


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory
        self.port = port or free_port()
        assert self.port != SHARED_PORT
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        # fmt: off
        command = [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.directory), "--save", "", "--appendonly", "no",
            "--daemonize", "no", "--logfile", str(self.directory / "redis.log"),
        ]
        # fmt: on
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.log_tail()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock,
            ):
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.02)
        raise RuntimeError(f"redis-server did not start: {self.log_tail()}")

    def stop(self) -> None:
        """Stop the server (its data goes with it: nothing is saved)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def flush(self) -> None:
        """Empty every database (between tests sharing one server)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(b"FLUSHALL\r\n")
            assert sock.recv(16).startswith(b"+OK")

    def log_tail(self) -> str:
        path = self.directory / "redis.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""


@contextlib.contextmanager
def running_redis() -> Iterator[RedisServer]:
    """A started :class:`RedisServer` in a temporary directory, stopped and removed after."""
    with tempfile.TemporaryDirectory(prefix="gateway-redis-") as directory:
        server = RedisServer(Path(directory))
        server.start()
        try:
            yield server
        finally:
            server.stop()


# Fixtures (import them into a test module to use them)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server for the module, emptied before each test that uses ``redis_url``."""
    with running_redis() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The URL of a private, empty Redis."""
    if redis_server.proc is None:
        redis_server.start()
    redis_server.flush()
    return redis_server.url


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server this test may stop, freeze and start again."""
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        if server.proc is not None:
            os.kill(server.proc.pid, signal.SIGCONT)
        server.stop()


STORES = ["memory", "redis"]


@pytest.fixture(params=STORES)
def store_kind(request: pytest.FixtureRequest) -> str:
    """Each store-parametrised test runs once per store."""
    return str(request.param)


@pytest.fixture
def store_url(store_kind: str, request: pytest.FixtureRequest) -> str | None:
    """None for the memory store; a private, empty Redis's URL for the Redis store."""
    if store_kind == "memory":
        return None
    return str(request.getfixturevalue("redis_url"))


# Real gateway processes


REPO = Path(__file__).resolve().parents[1]
TEST_KEYS = (
    "alice:tok-alice,bob:tok-bob,carol:tok-carol,dave:tok-dave,erin:tok-erin,frank:tok-frank"
)


class GatewayProcess:
    """``python -m gateway serve`` (optionally ``--workers N``) as a real process.

    Output (stdout and stderr) goes to ``log``; :meth:`wait_for` reads it.
    """

    def __init__(
        self, directory: Path, *, config: str = "", workers: int = 1, env: dict[str, str]
    ) -> None:
        self.port = free_port()
        self.workers = workers
        self.log = directory / f"gateway-{self.port}.log"
        config_path = directory / f"gateway-{self.port}.toml"
        config_path.write_text(config, encoding="utf-8")
        command = [sys.executable, "-m", "gateway", "serve", "--port", str(self.port)]
        command += ["--config", str(config_path), "--workers", str(workers)]
        full_env = {
            **os.environ,
            "GATEWAY_API_KEYS": TEST_KEYS,
            "GATEWAY_ADMINS": "alice",
            "GATEWAY_LOG_LEVEL": "INFO",
            **env,
        }
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                command, cwd=REPO, env=full_env, stdout=out, stderr=subprocess.STDOUT
            )

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    async def wait_for(self, pattern: str, *, count: int = 1, timeout: float = 30.0) -> list[str]:
        """Wait until ``pattern`` (a regex) matched ``count`` times in the output; the matches."""
        async with asyncio.timeout(timeout):
            while True:
                found = re.findall(pattern, self.text())
                if len(found) >= count:
                    return found
                if self.proc.poll() is not None:
                    raise AssertionError(f"gateway exited {self.proc.returncode}:\n{self.text()}")
                await asyncio.sleep(0.05)

    async def ready(self) -> None:
        await self.wait_for(r"Gateway listening", count=self.workers)

    def ready_sync(self, timeout: float = 30.0) -> None:
        """:meth:`ready` for synchronous (module-scoped) fixtures."""
        deadline = time.monotonic() + timeout
        while self.text().count("Gateway listening") < self.workers:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"gateway not ready ({self.proc.returncode}):\n{self.text()}")
            time.sleep(0.05)

    def worker_pids(self) -> dict[str, int]:
        """Worker name (w1, w2, ...) -> pid of its latest start, from the supervisor's log."""
        return {
            w: int(p) for w, p in re.findall(r"worker (w\d+) started \(pid (\d+)\)", self.text())
        }

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)


@contextlib.asynccontextmanager
async def gateway_processes(
    directory: Path, count: int, *, config: str = "", workers: int = 1, env: dict[str, str]
) -> AsyncIterator[list[GatewayProcess]]:
    """``count`` started gateway processes (each maybe with ``workers``), stopped after."""
    procs = [
        GatewayProcess(directory, config=config, workers=workers, env=env) for _ in range(count)
    ]
    try:
        for proc in procs:
            await proc.ready()
        yield procs
    finally:
        for proc in procs:
            await asyncio.to_thread(proc.stop)
