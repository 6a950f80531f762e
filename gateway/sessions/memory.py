"""The in-memory session store: a dict in least-recently-active order."""

from __future__ import annotations

from collections import Counter, OrderedDict

from gateway.sessions.store import SessionData, StoreStats

__all__ = ["MemorySessionStore"]


class MemorySessionStore:
    """Holds at most ``max_sessions``; creating one more evicts the least recently active."""

    def __init__(self, *, max_sessions: int = 100_000) -> None:
        if max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")
        self._max = max_sessions
        self._sessions: OrderedDict[str, SessionData] = OrderedDict()
        self._evicted = 0

    async def touch(self, user_id: str, default_model: str, now: float) -> SessionData:
        session = self._sessions.get(user_id)
        if session is None:
            if len(self._sessions) >= self._max:
                self._sessions.popitem(last=False)
                self._evicted += 1
            session = SessionData(user_id, default_model, created_at=now, last_activity=now)
            self._sessions[user_id] = session
        else:
            session.last_activity = now
            self._sessions.move_to_end(user_id)
        return session

    async def set_model(self, user_id: str, model: str, now: float) -> SessionData:
        session = await self.touch(user_id, model, now)
        session.current_model = model
        return session

    async def add_usage(
        self, user_id: str, prompt_tokens: int, completion_tokens: int, cost: float, now: float
    ) -> None:
        session = self._sessions.get(user_id)
        if session is None:
            return
        session.prompt_tokens += prompt_tokens
        session.completion_tokens += completion_tokens
        session.requests += 1
        session.cost += cost

    async def cleanup(self, older_than: float) -> int:
        removed = 0
        # Oldest first: stop at the first session that is still fresh.
        while self._sessions:
            user_id, session = next(iter(self._sessions.items()))
            if session.last_activity >= older_than:
                break
            del self._sessions[user_id]
            removed += 1
        return removed

    async def stats(self, now: float) -> StoreStats:
        hour_ago = now - 3600
        active = sum(1 for s in reversed(self._sessions.values()) if s.last_activity >= hour_ago)
        models = Counter(s.current_model for s in self._sessions.values())
        return StoreStats(
            total=len(self._sessions),
            active_last_hour=active,
            models=dict(models),
            evicted=self._evicted,
        )

    async def sessions(self, limit: int) -> list[SessionData]:
        out: list[SessionData] = []
        for session in reversed(self._sessions.values()):
            if len(out) >= limit:
                break
            out.append(session)
        return out
