"""Per-user session stores: one protocol, memory and Redis side by side."""

from gateway.sessions.memory import MemorySessionStore
from gateway.sessions.redis import RedisSessionStore
from gateway.sessions.store import SessionData, SessionStore, StoreStats

__all__ = ["MemorySessionStore", "RedisSessionStore", "SessionData", "SessionStore", "StoreStats"]
