"""The per-connection, per-request user context (Python's AsyncLocalStorage).

The server sets the user for every request it runs; module code calls
:func:`current_user` and never takes the user as a parameter.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from gateway.errors import Unauthenticated

__all__ = ["CallInfo", "User", "call_var", "connection_id_var", "current_user", "user_var"]


@dataclass(frozen=True, slots=True)
class User:
    """An authenticated identity."""

    id: str
    name: str = ""
    roles: frozenset[str] = field(default_factory=frozenset)

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles

    def public(self) -> dict[str, object]:
        """The user as shown to that same user."""
        return {"id": self.id, "name": self.name or self.id, "roles": sorted(self.roles)}


user_var: ContextVar[User | None] = ContextVar("gateway_user", default=None)
"""The user of the request being served; ``None`` outside an authenticated request."""


def current_user() -> User:
    """The user of the current request; raises :class:`Unauthenticated` if there is none."""
    user = user_var.get()
    if user is None:
        raise Unauthenticated("No authenticated user in this context")
    return user


class CallInfo(NamedTuple):
    """The JSON-RPC call being served (for log lines)."""

    id: Any
    """The request id; None for a notification."""
    method: str
    streaming: bool


call_var: ContextVar[CallInfo | None] = ContextVar("gateway_call", default=None)
"""Set by the JSON-RPC session in the context each call runs in."""

connection_id_var: ContextVar[str | None] = ContextVar("gateway_connection_id", default=None)
"""Set by the server in each connection's handler task (calls copy it)."""
