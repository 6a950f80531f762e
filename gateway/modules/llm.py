"""The LLM module base: per-user sessions and model preference (the origin's LLMPotoModule).

Sessions are per user id, not per connection: two sockets of one user share
the model choice. None of these helpers is exposed; subclasses expose
methods that use them. The user always comes from :func:`current_user`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from gateway.context import current_user
from gateway.errors import StoreUnavailable
from gateway.modules.base import Module
from gateway.providers.router import ModelRouter
from gateway.sessions.store import SessionData, SessionStore

__all__ = ["LLMModule"]

log = logging.getLogger(__name__)


class LLMModule(Module):
    def __init__(self, *, router: ModelRouter, store: SessionStore, default_model: str) -> None:
        self.router = router
        self.store = store
        self.default_model = default_model

    async def get_user_session(self) -> SessionData:
        """The current user's session, created on first access; refreshes ``last_activity``."""
        return await self.store.touch(current_user().id, self.default_model, time.time())

    async def update_user_model(self, model_name: str) -> SessionData:
        return await self.store.set_model(current_user().id, model_name, time.time())

    async def get_user_model(self) -> str:
        """The user's model; one no longer configured falls back to the default."""
        session = await self.get_user_session()
        if self.router.get(session.current_model) is None:
            log.info("model %r is gone; using %r", session.current_model, self.default_model)
            session = await self.update_user_model(self.default_model)
        return session.current_model

    async def cleanup_old_sessions(self, max_age_hours: float = 24) -> int:
        removed = await self.store.cleanup(time.time() - max_age_hours * 3600)
        if removed:
            log.info("removed %d idle sessions", removed)
        return removed

    async def run_cleanup(self, *, interval: float, max_age_hours: float) -> None:
        """Call :meth:`cleanup_old_sessions` every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.cleanup_old_sessions(max_age_hours)
            except StoreUnavailable:
                pass  # Logged by the Redis link; the next round catches up.
            except Exception:
                log.exception("session cleanup failed")

    async def session_stats(self, *, detail: bool) -> dict[str, Any]:
        """Aggregates for everyone, the caller's own session, per-user rows if ``detail``."""
        now = time.time()
        own = await self.get_user_session()
        stats = await self.store.stats(now)
        out: dict[str, Any] = {
            "totalSessions": stats.total,
            "activeSessions": stats.active_last_hour,
            "models": stats.models,
            "evictedSessions": stats.evicted,
            "you": own.public(),
        }
        if detail:
            out["users"] = [s.public() for s in await self.store.sessions(limit=1000)]
        return out
