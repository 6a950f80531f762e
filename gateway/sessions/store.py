"""The per-user session table behind a small interface, so stores can be swapped.

Stores are keyed by user id and never read the request context: the LLM
module resolves the user and passes the id in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["SessionData", "SessionStore", "StoreStats"]


@dataclass(slots=True)
class SessionData:
    """One user's session (the origin's ``UserSessionData``, plus usage totals)."""

    user_id: str
    current_model: str
    created_at: float
    last_activity: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0
    cost: float = 0.0

    def public(self) -> dict[str, Any]:
        return {
            "userId": self.user_id,
            "currentModel": self.current_model,
            "createdAt": self.created_at,
            "lastActivity": self.last_activity,
            "usage": {
                "requests": self.requests,
                "promptTokens": self.prompt_tokens,
                "completionTokens": self.completion_tokens,
                "totalTokens": self.prompt_tokens + self.completion_tokens,
                "cost": round(self.cost, 6),
            },
        }


@dataclass(frozen=True, slots=True)
class StoreStats:
    total: int
    active_last_hour: int
    models: dict[str, int] = field(default_factory=dict)
    evicted: int = 0


class SessionStore(Protocol):
    """Where sessions live. Every method is keyed by user id; times are Unix seconds."""

    async def touch(self, user_id: str, default_model: str, now: float) -> SessionData:
        """Get the session, creating it on first access, and refresh ``last_activity``."""
        ...

    async def set_model(self, user_id: str, model: str, now: float) -> SessionData: ...

    async def add_usage(
        self, user_id: str, prompt_tokens: int, completion_tokens: int, cost: float, now: float
    ) -> None: ...

    async def cleanup(self, older_than: float) -> int:
        """Drop sessions idle since before ``older_than``; returns how many went."""
        ...

    async def stats(self, now: float) -> StoreStats: ...

    async def sessions(self, limit: int) -> list[SessionData]:
        """The most recently active sessions, newest first."""
        ...
