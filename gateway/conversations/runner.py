"""How the store's SQL reaches the database without blocking the event loop.

The store writes each operation as one synchronous function of a SQLAlchemy
:class:`~sqlalchemy.engine.Connection` (several statements, one transaction)
and hands it to a runner:

- SQLite (:class:`ThreadRunner`): the whole function runs on a worker thread
  with the stdlib driver: one thread hop per operation, however many
  statements it has (aiosqlite would hop for every statement and fetch).
  Writes go to a single writer thread, which is also SQLite's one-writer rule.
- PostgreSQL (:class:`AsyncRunner`): the function runs through SQLAlchemy's
  async engine over asyncpg (``run_sync``), whose I/O is on the loop itself.
  The hot paths (:mod:`gateway.conversations.hot`) take the asyncpg connection
  under a pooled one instead (:meth:`AsyncRunner.driver`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol, TypeVar

import asyncpg
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["AsyncRunner", "DbRunner", "ThreadRunner"]

T = TypeVar("T")

_BROKEN = (OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.InternalClientError)


class DbRunner(Protocol):
    """Runs one synchronous database operation in a transaction, off the loop."""

    dialect: str
    embedded: bool
    """True when this process owns the database (SQLite)."""

    async def run(self, fn: Callable[[Connection], T], *, write: bool, single: bool = False) -> T:
        """``single``: ``fn`` is one statement, atomic by itself (no BEGIN/COMMIT needed)."""
        ...

    async def close(self) -> None: ...


class ThreadRunner:
    """A sync engine driven from worker threads: one writer, a few readers."""

    def __init__(self, engine: Engine, *, readers: int) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self.embedded = True
        self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="db-write")
        self._readers = (
            concurrent.futures.ThreadPoolExecutor(readers, thread_name_prefix="db-read")
            if readers
            else self._writer
        )

    def _write(self, fn: Callable[[Connection], T]) -> T:
        with self.engine.begin() as conn:
            return fn(conn)

    def _read(self, fn: Callable[[Connection], T]) -> T:
        with self.engine.connect() as conn:
            return fn(conn)

    async def run(self, fn: Callable[[Connection], T], *, write: bool, single: bool = False) -> T:
        loop = asyncio.get_running_loop()
        if write:
            return await loop.run_in_executor(self._writer, self._write, fn)
        return await loop.run_in_executor(self._readers, self._read, fn)

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        # Let queued writes finish (they were promised), then release the file.
        await loop.run_in_executor(None, self._shutdown)

    def _shutdown(self) -> None:
        self._writer.shutdown(wait=True)
        if self._readers is not self._writer:
            self._readers.shutdown(wait=True)
        self.engine.dispose()


class AsyncRunner:
    """An async engine (asyncpg); each operation is one transaction via ``run_sync``."""

    def __init__(self, engine: AsyncEngine, *, autocommit: AsyncEngine | None = None) -> None:
        self.engine = engine
        self.autocommit = autocommit
        self.dialect = engine.dialect.name
        self.embedded = False

    async def run(self, fn: Callable[[Connection], T], *, write: bool, single: bool = False) -> T:
        if write and not single:
            async with self.engine.begin() as conn:
                return await conn.run_sync(fn)
        # Reads and one-statement writes skip BEGIN and COMMIT/ROLLBACK (two round trips):
        # a statement is atomic alone, and under READ COMMITTED each statement has its own
        # snapshot inside a transaction too, so nothing is lost.
        if self.autocommit is not None:
            async with self.autocommit.connect() as conn:
                return await conn.run_sync(fn)
        async with self.engine.connect() as conn:
            auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
            return await auto.run_sync(fn)

    @contextlib.asynccontextmanager
    async def driver(self) -> AsyncIterator[Any]:
        """The asyncpg connection of a pooled autocommit connection (each statement is its
        own transaction; the pool's codecs apply). A connection that broke (the server
        went away) is discarded, so the next checkout opens a fresh one; a cancel is
        asyncpg's to clean up (it cancels the query on the server)."""
        async with (self.autocommit or self.engine).connect() as conn:
            raw = await conn.get_raw_connection()
            driver: Any = raw.driver_connection
            try:
                yield driver
            except Exception as exc:
                # A server error on a statement (a constraint, a bad value) leaves the
                # connection fine; these, or a closed connection, do not.
                if isinstance(exc, _BROKEN) or driver.is_closed():
                    await conn.invalidate()
                raise

    async def close(self) -> None:
        await self.engine.dispose()
        if self.autocommit is not None:
            await self.autocommit.dispose()
