"""``gateway serve --workers N``: one parent process keeping N gateway workers on one port.

Each worker is ``gateway serve`` in its own process, listening on the same
port with ``SO_REUSEPORT`` (the kernel spreads new connections over them, as
python-websockets' deployment guide recommends) and sharing state through
Redis. The parent:

- gives worker ``k`` the node id ``<hostname>-w<k>`` (``GATEWAY_NODE_ID``; it
  names the worker in its log lines and in ``X-Gateway-Node``);
- restarts a worker that exits, after 0.5 s, doubling to at most 10 s while it
  keeps dying (back to 0.5 s once it ran 30 s), and logs each exit; a worker
  that exits with status 2 (bad config, Redis unreachable at start) stops them
  all: restarting cannot help;
- forwards SIGTERM/SIGINT to every worker (each drains, see
  :meth:`gateway.server.app.Gateway.drain`; on Linux a worker also gets
  SIGTERM if the parent dies without stopping it) and exits 0 once all exited 0; a
  second signal is forwarded too (workers then exit at once); workers still
  alive ``drain_timeout + shutdown_grace + 5`` s after the first are killed.

Metrics hook (for Prometheus multiprocess mode): the parent creates one
temporary directory per run and passes it to every worker as
``PROMETHEUS_MULTIPROC_DIR`` (an existing value is kept), removes it at exit,
and calls every function in :data:`WORKER_EXIT_HOOKS` with the pid of each
worker that exited (where ``prometheus_client.multiprocess.mark_process_dead``
belongs).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, Sequence

__all__ = ["WORKER_EXIT_HOOKS", "Supervisor", "reserve_port"]

log = logging.getLogger(__name__)

WORKER_EXIT_HOOKS: list[Callable[[int], None]] = []
"""Called with the pid of every worker that exited (dead or stopped)."""

BACKOFF_FIRST = 0.5
BACKOFF_MAX = 10.0
STABLE_AFTER = 30.0
"""A worker that ran this long before dying is restarted after ``BACKOFF_FIRST`` again."""
STARTUP_FAILURE = 2
"""The exit status of ``gateway serve`` when it cannot start (config, Redis)."""


def reserve_port(host: str) -> socket.socket:
    """A bound, not listening, SO_REUSEPORT socket on a free port: holds it for the workers."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, 0))
    return sock


def _describe(status: int) -> str:
    if status < 0:
        try:
            return f"signal {signal.Signals(-status).name}"
        except ValueError:
            return f"signal {-status}"
    return f"status {status}"


class Supervisor:
    """Runs ``workers`` copies of ``command`` (a ``gateway serve`` command line)."""

    def __init__(
        self,
        command: Sequence[str],
        workers: int,
        *,
        env: dict[str, str] | None = None,
        stop_timeout: float = 33.0,
    ) -> None:
        self.command = list(command)
        self.workers = workers
        self.env = dict(os.environ if env is None else env)
        self.stop_timeout = stop_timeout
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self._stopping = asyncio.Event()
        self._signals = 0
        self._status = 0
        self._metrics_dir: str | None = None

    def _worker_env(self, k: int) -> dict[str, str]:
        return {
            **self.env,
            "GATEWAY_NODE_ID": f"{socket.gethostname()}-w{k}",
            "GATEWAY_REUSE_PORT": "1",
            "PROMETHEUS_MULTIPROC_DIR": self.env.get("PROMETHEUS_MULTIPROC_DIR")
            or str(self._metrics_dir),
        }

    async def run(self) -> int:
        """Start the workers and keep them until a signal; the exit status for the parent."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        self._metrics_dir = tempfile.mkdtemp(prefix="gateway-metrics-")
        try:
            keepers = [loop.create_task(self._keep(k)) for k in range(1, self.workers + 1)]
            killer = loop.create_task(self._kill_after_timeout())
            await asyncio.gather(*keepers)
            killer.cancel()
        finally:
            shutil.rmtree(self._metrics_dir, ignore_errors=True)
        log.info("all workers stopped")
        return self._status

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop restarting and pass ``sig`` to every worker."""
        self._stopping.set()
        for proc in self.procs.values():
            if proc.returncode is None:
                proc.send_signal(sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info("%s: stopping %d workers (they drain)", sig.name, len(self.procs))
        else:
            log.warning("%s again: workers exit at once", sig.name)
        self.stop(sig)

    async def _kill_after_timeout(self) -> None:
        await self._stopping.wait()
        await asyncio.sleep(self.stop_timeout)
        for k, proc in self.procs.items():
            if proc.returncode is None:
                log.error("worker w%d (pid %d) still running: killing it", k, proc.pid)
                proc.kill()

    async def _keep(self, k: int) -> None:
        loop = asyncio.get_running_loop()
        backoff = BACKOFF_FIRST
        while not self._stopping.is_set():
            proc = await asyncio.create_subprocess_exec(
                *self.command,
                env=self._worker_env(k),
                stdin=asyncio.subprocess.DEVNULL,
                preexec_fn=_term_with_parent,
            )
            self.procs[k] = proc
            log.info("worker w%d started (pid %d)", k, proc.pid)
            started = loop.time()
            status = await proc.wait()
            for hook in WORKER_EXIT_HOOKS:
                try:
                    hook(proc.pid)
                except Exception:
                    log.exception("worker exit hook failed")
            if self._stopping.is_set():
                log.info("worker w%d (pid %d) exited with %s", k, proc.pid, _describe(status))
                if status != 0:
                    self._status = 1
                return
            if status == STARTUP_FAILURE:
                log.error("worker w%d could not start (status 2): stopping all workers", k)
                self._status = STARTUP_FAILURE
                self.stop()
                return
            if loop.time() - started >= STABLE_AFTER:
                backoff = BACKOFF_FIRST
            log.warning(
                "worker w%d (pid %d) exited with %s; restarting in %.1f s",
                k,
                proc.pid,
                _describe(status),
                backoff,
            )
            try:
                async with asyncio.timeout(backoff):
                    await self._stopping.wait()
            except TimeoutError:
                pass
            backoff = min(backoff * 2, BACKOFF_MAX)


def _term_with_parent() -> None:
    """In a worker (Linux): SIGTERM it, so it drains, if the parent dies without stopping it."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def worker_command(argv: Sequence[str]) -> list[str]:
    """The command line of one worker: this interpreter running ``gateway serve argv``."""
    return [sys.executable, "-m", "gateway", "serve", *argv]
