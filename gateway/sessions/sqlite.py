"""Sessions in the embedded SQLite database, so a restart keeps every user's model choice.

Reads come from a cache in front of the table (the process owns the file);
a model change or usage is written at once, while ``last_activity`` alone is
written at most once a minute per user, so a chat call costs no extra write.
Operations run through the conversation store's runner (its writer thread).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from gateway.conversations.runner import DbRunner
from gateway.conversations.schema import sessions
from gateway.sessions.store import SessionData, StoreStats

__all__ = ["SqliteSessionStore"]

ACTIVITY_WRITE_INTERVAL = 60.0


def _session(m: Any) -> SessionData:
    return SessionData(
        user_id=m["user_id"],
        current_model=m["current_model"],
        created_at=m["created_at"],
        last_activity=m["last_activity"],
        prompt_tokens=m["prompt_tokens"],
        completion_tokens=m["completion_tokens"],
        requests=m["requests"],
        cost=m["cost"],
    )


class SqliteSessionStore:
    """A SessionStore on the conversations database (table ``sessions``, migration 2)."""

    def __init__(self, runner: DbRunner, *, max_cached: int = 100_000) -> None:
        self._runner = runner
        self._cache: dict[str, SessionData] = {}
        self._written_activity: dict[str, float] = {}
        self._max_cached = max_cached

    async def _load(self, user_id: str) -> SessionData | None:
        session = self._cache.get(user_id)
        if session is not None:
            return session

        def op(conn: Connection) -> SessionData | None:
            row = conn.execute(sa.select(sessions).where(sessions.c.user_id == user_id)).first()
            return _session(row._mapping) if row is not None else None

        session = await self._runner.run(op, write=False)
        if session is not None:
            self._remember(session)
        return session

    def _remember(self, session: SessionData) -> None:
        if session.user_id not in self._cache and len(self._cache) >= self._max_cached:
            oldest = next(iter(self._cache))
            del self._cache[oldest]
            self._written_activity.pop(oldest, None)
        self._cache[session.user_id] = session
        self._written_activity.setdefault(session.user_id, session.last_activity)

    async def _save(self, session: SessionData) -> None:
        values = {
            "current_model": session.current_model,
            "created_at": session.created_at,
            "last_activity": session.last_activity,
            "prompt_tokens": session.prompt_tokens,
            "completion_tokens": session.completion_tokens,
            "requests": session.requests,
            "cost": session.cost,
        }

        def op(conn: Connection) -> None:
            result = conn.execute(
                sessions.update().where(sessions.c.user_id == session.user_id).values(**values)
            )
            if result.rowcount == 0:
                conn.execute(sessions.insert().values(user_id=session.user_id, **values))

        await self._runner.run(op, write=True)
        self._written_activity[session.user_id] = session.last_activity

    async def touch(self, user_id: str, default_model: str, now: float) -> SessionData:
        session = await self._load(user_id)
        if session is None:
            session = SessionData(user_id, default_model, created_at=now, last_activity=now)
            self._remember(session)
            await self._save(session)
            return session
        session.last_activity = now
        if now - self._written_activity.get(user_id, 0.0) >= ACTIVITY_WRITE_INTERVAL:
            await self._save(session)
        return session

    async def set_model(self, user_id: str, model: str, now: float) -> SessionData:
        session = await self.touch(user_id, model, now)
        session.current_model = model
        await self._save(session)
        return session

    async def add_usage(
        self, user_id: str, prompt_tokens: int, completion_tokens: int, cost: float, now: float
    ) -> None:
        session = await self._load(user_id)
        if session is None:
            return
        session.prompt_tokens += prompt_tokens
        session.completion_tokens += completion_tokens
        session.requests += 1
        session.cost += cost
        await self._save(session)

    async def cleanup(self, older_than: float) -> int:
        stmt = sessions.delete().where(sessions.c.last_activity < older_than)
        removed = await self._runner.run(
            lambda conn: int(conn.execute(stmt).rowcount or 0), write=True
        )
        for user_id in [u for u, s in self._cache.items() if s.last_activity < older_than]:
            del self._cache[user_id]
            self._written_activity.pop(user_id, None)
        return removed

    async def stats(self, now: float) -> StoreStats:
        hour_ago = now - 3600
        stmt = sa.select(sessions.c.user_id, sessions.c.current_model, sessions.c.last_activity)
        rows = await self._runner.run(lambda conn: conn.execute(stmt).all(), write=False)
        live = {r.user_id: (r.current_model, r.last_activity) for r in rows}
        for s in self._cache.values():
            live[s.user_id] = (s.current_model, s.last_activity)
        return StoreStats(
            total=len(live),
            active_last_hour=sum(1 for _, seen in live.values() if seen >= hour_ago),
            models=dict(Counter(model for model, _ in live.values())),
        )

    async def sessions(self, limit: int) -> list[SessionData]:
        stmt = sa.select(sessions).order_by(sessions.c.last_activity.desc()).limit(limit)
        rows = await self._runner.run(lambda conn: conn.execute(stmt).all(), write=False)
        out = [self._cache.get(r.user_id) or _session(r._mapping) for r in rows]
        out.sort(key=lambda s: s.last_activity, reverse=True)
        return out
