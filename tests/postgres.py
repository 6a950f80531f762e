"""A private PostgreSQL for the tests: ``initdb`` into a temp dir, ``postgres`` on a free port
with its unix socket in that dir (never the shared server on 5432)."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["PostgresServer", "find_bin", "postgres_server"]


def find_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.port = port
        self.socket_dir = root / "sock"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@/{database}?host={self.socket_dir}&port={self.port}"


def _as_postgres(cmd: list[str]) -> list[str]:
    # initdb refuses to run as root: run the server as Debian's postgres user then.
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


@contextlib.contextmanager
def postgres_server(keep: Path | None = None) -> Iterator[PostgresServer]:
    """A private server; ``keep``: its data directory, made on first use and kept after
    (the benchmark reuses a seeded database), else a temp dir removed at the end."""
    initdb, postgres = find_bin("initdb"), find_bin("postgres")
    if initdb is None or postgres is None:
        raise RuntimeError(
            "PostgreSQL binaries not found under /usr/lib/postgresql (scripts/setup)"
        )
    root = Path(tempfile.mkdtemp(prefix="gateway-pg-"))
    data, sock = keep or root / "data", root / "sock"
    sock.mkdir()
    fresh = not (data / "PG_VERSION").exists()
    if keep is not None and fresh:
        keep.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        for path in (root, sock, *([keep] if keep is not None and fresh else [])):
            os.chown(path, pw.pw_uid, pw.pw_gid)
    server = PostgresServer(root, _free_port())
    proc: subprocess.Popen[bytes] | None = None
    try:
        if fresh:
            subprocess.run(
                _as_postgres(
                    [
                        initdb,
                        "-D",
                        str(data),
                        "-U",
                        "postgres",
                        "-A",
                        "trust",
                        "-E",
                        "UTF8",
                        "--no-sync",
                    ]
                ),
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        proc = subprocess.Popen(
            _as_postgres(
                [
                    postgres,
                    "-D",
                    str(data),
                    "-p",
                    str(server.port),
                    "-k",
                    str(sock),
                    "-c",
                    "listen_addresses=",
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "max_connections=300",
                ]
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while not (sock / f".s.PGSQL.{server.port}").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the test PostgreSQL did not start")
            time.sleep(0.05)
        time.sleep(0.2)
        yield server
    finally:
        pid_file = data / "postmaster.pid"
        if pid_file.exists():
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGINT)  # fast shutdown
        if proc is not None:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(root, ignore_errors=True)
