"""``auth.*``: logging in on the socket (browsers), refreshing, asking who you are."""

from __future__ import annotations

from typing import Any

from gateway.auth.throttle import LoginThrottled
from gateway.auth.tokens import Authenticator, Identity
from gateway.errors import LimitExceeded, TokenExpired, Unauthenticated
from gateway.modules.base import Module, exposed
from gateway.server import telemetry
from gateway.server.closecodes import CloseCode
from gateway.server.connection import Connection, current_connection

__all__ = ["AuthModule"]


def _describe(identity: Identity) -> dict[str, Any]:
    return {"user": identity.user.public(), "expiresAt": identity.expires_at}


class AuthModule(Module):
    namespace = "auth"

    def __init__(self, authenticator: Authenticator) -> None:
        self._authenticator = authenticator

    def _check(self, conn: Connection, token: str) -> Identity:
        try:
            return self._authenticator.login(token, conn.remote_host)
        except LoginThrottled as exc:
            telemetry.auth_failed("login", exc)
            conn.close_soon(CloseCode.LOGIN_THROTTLED, "too many failed logins")
            raise
        except TokenExpired as exc:
            telemetry.auth_failed("login", exc)
            conn.close_soon(CloseCode.TOKEN_EXPIRED, "token expired")
            raise
        except Unauthenticated as exc:
            telemetry.auth_failed("login", exc)
            conn.close_soon(CloseCode.INVALID_TOKEN, "invalid token")
            raise

    @exposed("login", public=True)
    async def login(self, token: str) -> dict:
        """Authenticate this connection with a token (for clients that cannot set headers)."""
        conn = current_connection()
        if conn.identity is not None:
            return await self.refresh(token)
        identity = self._check(conn, token)
        try:
            await conn.login(identity)
        except LimitExceeded:
            conn.close_soon(CloseCode.CONNECTION_LIMIT, "too many connections for this user")
            raise
        telemetry.logged_in(identity.user.id)
        return _describe(identity)

    @exposed("refresh")
    async def refresh(self, token: str) -> dict:
        """Swap this connection's credentials for a new token of the same user."""
        conn = current_connection()
        identity = self._check(conn, token)
        await conn.login(identity)
        return _describe(identity)

    @exposed("whoami")
    async def whoami(self) -> dict:
        """The user on this connection and when its token expires."""
        identity = current_connection().identity
        assert identity is not None
        return _describe(identity)
