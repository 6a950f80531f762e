"""Per-user session stores."""

from gateway.sessions.memory import MemorySessionStore
from gateway.sessions.store import SessionData, SessionStore, StoreStats

__all__ = ["MemorySessionStore", "SessionData", "SessionStore", "StoreStats"]
