"""A real ``gateway serve`` subprocess for the metrics and log tests, and a /metrics reader.

Each process starts with its metrics at zero, so counts after known traffic
are exact; several processes may share one ``PROMETHEUS_MULTIPROC_DIR``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from gateway.providers.base import ModelConfig

__all__ = [
    "GatewayProcess",
    "Metrics",
    "gateway_process",
    "http_get",
    "models_toml",
    "scrape",
]

TIMEOUT = 20.0
_LISTENING = re.compile(r"Gateway listening on (ws://[\d.]+:(\d+)/ws)")


@dataclass
class GatewayProcess:
    proc: asyncio.subprocess.Process
    ws_url: str
    port: int
    stderr_path: Path
    stdout: list[str]

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_lines(self) -> list[str]:
        return self.stderr_path.read_text(encoding="utf-8").splitlines()

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signal the process and wait for it to exit; returns its exit code."""
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        async with asyncio.timeout(TIMEOUT):
            rest = await self.proc.stdout.read() if self.proc.stdout else b""
            self.stdout.extend(rest.decode().splitlines())
            return await self.proc.wait()


def models_toml(models: Sequence[ModelConfig], default_model: str) -> str:
    """``[[models]]`` tables for ``models`` (only the fields the tests set)."""
    out = [f"default_model = {default_model!r}".replace("'", '"')]
    for m in models:
        out.append("[[models]]")
        for key in ("name", "provider", "model", "base_url", "api_key_env", "description"):
            value = getattr(m, key)
            if value is not None:
                out.append(f'{key} = "{value}"')
        fallbacks = ", ".join(f'"{f}"' for f in m.fallbacks)
        out.append(f"fallbacks = [{fallbacks}]")
        out.append(f"tokens_per_second = {m.tokens_per_second}")
        out.append(f"max_output_tokens = {m.max_output_tokens}")
    return "\n".join(out) + "\n"


@contextlib.asynccontextmanager
async def gateway_process(
    workdir: Path,
    *,
    config: str = "",
    env: Mapping[str, str] | None = None,
    args: Sequence[str] = (),
    name: str = "gw",
) -> AsyncIterator[GatewayProcess]:
    """``gateway serve --port 0`` with ``config`` (TOML text) and ``env``; stopped on exit."""
    config_path = workdir / f"{name}.toml"
    config_path.write_text(config, encoding="utf-8")
    stderr_path = workdir / f"{name}.stderr"
    base = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "PROMETHEUS_"))}
    with stderr_path.open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "serve", "--host", "127.0.0.1", "--port", "0",
            "--config", str(config_path), *args,
            env={**base, **(env or {})},
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
        )  # fmt: skip
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(TIMEOUT):
            while True:
                line = (await proc.stdout.readline()).decode()
                if not line:
                    raise RuntimeError(f"gateway exited: {stderr_path.read_text()[-2000:]}")
                lines.append(line.rstrip("\n"))
                found = _LISTENING.search(line)
                if found:
                    break
        gp = GatewayProcess(proc, found.group(1), int(found.group(2)), stderr_path, lines)
        yield gp
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(TIMEOUT):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def http_get(url: str) -> tuple[int, bytes]:
    """A plain HTTP/1.1 GET: (status, body)."""
    match = re.match(r"http://([^:/]+):(\d+)(/.*)", url)
    assert match, url
    host, port, path = match.group(1), int(match.group(2)), match.group(3)
    async with asyncio.timeout(TIMEOUT):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        raw = await reader.read()
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


class Metrics:
    """One scrape: ``m["gateway_calls_total", {"method": "x", "outcome": "ok"}]`` -> value."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: list[tuple[str, dict[str, str], float]] = [
            (s.name, dict(s.labels), s.value)
            for family in text_string_to_metric_families(text)
            for s in family.samples
        ]

    def __getitem__(self, key: str | tuple[str, Mapping[str, str]]) -> float:
        """The sum of the samples named so whose labels include the given ones (0 if none)."""
        name, labels = (key, {}) if isinstance(key, str) else key
        return sum(
            v
            for n, ls, v in self.samples
            if n == name and all(ls.get(k) == val for k, val in labels.items())
        )

    def labels(self, name: str) -> list[dict[str, str]]:
        return [ls for n, ls, _ in self.samples if n == name]

    def get(self, name: str, **labels: Any) -> float:
        return self[name, {k: str(v) for k, v in labels.items()}]


async def scrape(url: str) -> Metrics:
    status, body = await http_get(url)
    assert status == 200, body
    return Metrics(body.decode())
