"""Failed-login limits: per source address, and per user for correctly signed tokens.

Two sliding windows of ``window`` seconds:

- **per source address**: after ``per_address`` failed logins from one
  address, every login from it (even with a valid token, which is not
  checked) is refused until the oldest failure leaves the window. This is
  what stops guessing. Only failures from that address count, so nobody can
  lock out a user who logs in from elsewhere.
- **per user**: after ``per_user`` failures of *correctly signed* tokens of
  one user (expired, or otherwise refused after the signature held), further
  such failures for that user answer the limit instead. A forged token names
  a user the signature does not vouch for, so it never counts against that
  user, and a valid token of the user is always accepted: the per-user limit
  cannot lock anyone out, it only bounds what replaying a leaked old token
  from many addresses costs.

Memory is bounded: at most ``max_keys`` addresses and users are tracked (the
least recently failing are forgotten first), each with at most its limit of
timestamps.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from gateway.errors import LimitExceeded

__all__ = ["FailureWindow", "LoginThrottle", "LoginThrottled"]


class LoginThrottled(LimitExceeded):
    """Too many failed logins; ``data`` has ``limit: "failedLogins"`` and ``retryAfter``."""

    def __init__(self, retry_after: float, scope: str) -> None:
        self.retry_after = max(1, math.ceil(retry_after))
        super().__init__(
            f"Too many failed logins {scope}; retry in {self.retry_after} s",
            {"limit": "failedLogins", "retryAfter": self.retry_after},
        )


class FailureWindow:
    """Failures per key within the last ``window`` seconds, for at most ``max_keys`` keys."""

    def __init__(
        self,
        *,
        limit: int,
        window: float,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limit = limit
        self._window = window
        self._max_keys = max_keys
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, key: str) -> float:
        """0 while ``key`` is under its limit, else the seconds until it is again."""
        stamps = self._failures.get(key)
        if stamps is None or len(stamps) < self._limit:
            return 0.0
        wait = stamps[0] + self._window - self._clock()
        if wait <= 0:
            del self._failures[key]
            return 0.0
        return wait

    def record(self, key: str) -> None:
        stamps = self._failures.get(key)
        if stamps is None:
            stamps = self._failures[key] = deque(maxlen=max(1, self._limit))
        else:
            self._failures.move_to_end(key)
        stamps.append(self._clock())
        while len(self._failures) > self._max_keys:
            self._failures.popitem(last=False)


class LoginThrottle:
    """The two windows of the module docstring; a limit of 0 turns that window off."""

    def __init__(self, *, per_address: int, per_user: int, window: float) -> None:
        self._addresses = FailureWindow(limit=per_address, window=window) if per_address else None
        self._users = FailureWindow(limit=per_user, window=window) if per_user else None

    def check(self, address: str | None) -> None:
        """Raise :class:`LoginThrottled` if ``address`` may not try to log in now."""
        if self._addresses is not None and address is not None:
            wait = self._addresses.retry_after(address)
            if wait:
                raise LoginThrottled(wait, "from your address")

    def failed(self, address: str | None, signed_user: str | None) -> None:
        """Count a failed login; raise :class:`LoginThrottled` if ``signed_user`` is over."""
        if self._addresses is not None and address is not None:
            self._addresses.record(address)
        if self._users is not None and signed_user is not None:
            wait = self._users.retry_after(signed_user)
            self._users.record(signed_user)
            if wait:
                raise LoginThrottled(wait, "for this user")
