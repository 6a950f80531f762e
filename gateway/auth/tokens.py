"""Tokens -> users: static API keys and signed expiring tokens (HS256 JWT).

Static keys are looked up by their SHA-256 digest, so the lookup time says
nothing about how much of a guessed key was right. Logins from the wire go
through :meth:`Authenticator.login`, which applies the failed-login limits of
:mod:`gateway.auth.throttle`.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import jwt

from gateway.auth.throttle import LoginThrottle
from gateway.config import AuthConfig
from gateway.context import User
from gateway.errors import TokenExpired, Unauthenticated

__all__ = ["Authenticator", "Identity", "mint_token", "parse_ttl"]

_ALGORITHM = "HS256"
MAX_TOKEN_CHARS = 4096


@dataclass(frozen=True, slots=True)
class Identity:
    user: User
    expires_at: float | None
    """Unix seconds; None for static keys, which do not expire."""


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class _SignedTokenExpired(TokenExpired):
    """Expired, but correctly signed: ``signed_user`` is who the secret vouches for."""

    def __init__(self, message: str, signed_user: str | None) -> None:
        super().__init__(message)
        self.signed_user = signed_user


class _SignedTokenRefused(Unauthenticated):
    """Refused although correctly signed (wrong issuer, claims missing or malformed)."""

    def __init__(self, message: str, signed_user: str | None) -> None:
        super().__init__(message)
        self.signed_user = signed_user


class Authenticator:
    def __init__(self, config: AuthConfig, *, throttle: LoginThrottle | None = None) -> None:
        self._keys = {_digest(token): user for token, user in config.api_keys.items()}
        self._admins = config.admins
        self._secret = config.jwt_secret
        self._issuer = config.jwt_issuer
        self._throttle = throttle

    def login(self, token: object, source: str | None) -> Identity:
        """:meth:`authenticate` for a login from the wire, under the failed-login limits.

        Raises ``LoginThrottled`` (-32004 ``failedLogins``) when ``source`` (the
        client's address) has failed too often, or when this failure is one too
        many for the user a correctly signed token names.
        """
        if self._throttle is None:
            return self.authenticate(token)
        self._throttle.check(source)
        try:
            return self.authenticate(token)
        except (Unauthenticated, TokenExpired) as exc:
            signed_user = getattr(exc, "signed_user", None)
            self._throttle.failed(source, signed_user)
            raise

    def authenticate(self, token: object) -> Identity:
        """The identity behind ``token``; raises Unauthenticated or TokenExpired."""
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS:
            raise Unauthenticated("A token is required")
        user_id = self._keys.get(_digest(token))
        if user_id is not None:
            roles = frozenset({"admin"}) if user_id in self._admins else frozenset()
            return Identity(User(id=user_id, name=user_id, roles=roles), None)
        if self._secret and token.count(".") == 2:
            return self._decode_jwt(token)
        raise Unauthenticated("Invalid token")

    def _decode_jwt(self, token: str) -> Identity:
        assert self._secret is not None
        try:
            # The signature alone first: only a correctly signed token names a user.
            unchecked = jwt.decode(
                token,
                self._secret,
                algorithms=[_ALGORITHM],
                options={
                    "verify_exp": False,
                    "verify_iss": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.PyJWTError:
            raise Unauthenticated("Invalid token") from None
        signed = unchecked.get("sub") if isinstance(unchecked, dict) else None
        signed_user = signed if isinstance(signed, str) and signed else None
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[_ALGORITHM],
                issuer=self._issuer,
                options={"require": ["sub", "exp", "iss"]},
            )
        except jwt.ExpiredSignatureError:
            raise _SignedTokenExpired(
                "Token expired; get a new one and log in again", signed_user
            ) from None
        except jwt.PyJWTError:
            raise _SignedTokenRefused("Invalid token", signed_user) from None
        sub = claims["sub"]
        roles = claims.get("roles", [])
        if not isinstance(sub, str) or not sub or not isinstance(roles, list):
            raise _SignedTokenRefused("Invalid token", signed_user)
        user = User(
            id=sub,
            name=str(claims.get("name") or sub),
            roles=frozenset(str(r) for r in roles) | ({"admin"} if sub in self._admins else set()),
        )
        return Identity(user, float(claims["exp"]))


def mint_token(
    secret: str,
    user_id: str,
    *,
    ttl: float = 3600,
    roles: tuple[str, ...] = (),
    name: str | None = None,
    issuer: str = "gateway",
    now: float | None = None,
) -> str:
    """A signed token for ``user_id`` valid for ``ttl`` seconds."""
    issued = time.time() if now is None else now
    claims: dict[str, object] = {
        "sub": user_id,
        "iss": issuer,
        "iat": int(issued),
        "exp": int(issued + ttl),
        "roles": list(roles),
    }
    if name:
        claims["name"] = name
    return jwt.encode(claims, secret, algorithm=_ALGORITHM)


def parse_ttl(text: str) -> float:
    """'90s', '15m', '1h', '7d' or plain seconds -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = text.strip().lower()
    try:
        if text and text[-1] in units:
            value = float(text[:-1]) * units[text[-1]]
        else:
            value = float(text)
    except ValueError:
        raise ValueError(f"invalid duration {text!r}; use e.g. 90s, 15m, 1h, 7d") from None
    if value <= 0:
        raise ValueError("duration must be positive")
    return value
