"""Fixtures shared by several test modules: one private PostgreSQL per test session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conversation_support import BACKENDS, Backend, fresh_database
from tests.postgres import PostgresServer, postgres_server


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """A PostgreSQL the tests start themselves (a temp dir, a free port)."""
    with postgres_server() as server:
        yield server


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """Each conversation test runs on SQLite (a data dir) and on PostgreSQL (a new database)."""
    if request.param == "sqlite":
        return Backend("sqlite", data_dir=str(tmp_path / "data"))
    pg: PostgresServer = request.getfixturevalue("pg_server")
    return Backend("postgres", url=await fresh_database(pg))
