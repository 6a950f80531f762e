"""Per-user token budgets: tokens per minute (sliding window) and per day (UTC calendar day).

The chat module calls :meth:`BudgetLedger.check` before starting a stream
and :meth:`BudgetLedger.record` with the tokens it used once it ends. The
check only asks whether the user is already at a limit (the size of the next
answer is unknown), so concurrent streams may overshoot by what they use;
``limits.streams_per_user`` bounds that.

Which rule applies: a rule naming the user, else the first rule naming one of
the user's roles, else the first rule naming neither; no rule, no limit. A
rule naming both a user and a role applies to that user only while they hold
the role.

Memory: per user at most 60 one-second buckets and a day counter; users idle
for a minute whose day has ended are dropped by a sweep at most once a minute.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.config import BudgetRule
from gateway.context import User
from gateway.errors import BudgetExceeded

__all__ = ["BudgetLedger"]

MINUTE = 60
DAY = 86_400


@dataclass(slots=True)
class _Account:
    buckets: deque[list[int]] = field(default_factory=deque)
    """[second, tokens] pairs of the last minute, oldest first."""
    last_minute: int = 0
    day: int = 0
    today: int = 0
    rule: BudgetRule | None = None

    def roll(self, now: float) -> None:
        """Forget buckets older than a minute and counts of an earlier day."""
        horizon = int(now) - MINUTE
        while self.buckets and self.buckets[0][0] <= horizon:
            self.last_minute -= self.buckets.popleft()[1]
        day = int(now // DAY)
        if day != self.day:
            self.day, self.today = day, 0

    def minute_wait(self, limit: int, now: float) -> float:
        """Seconds until the last minute's total drops below ``limit``."""
        remaining = self.last_minute
        for second, tokens in self.buckets:
            remaining -= tokens
            if remaining < limit:
                return second + MINUTE - now
        return MINUTE


class BudgetLedger:
    """Counts tokens per user and refuses users over their rule's budget."""

    def __init__(
        self, rules: Sequence[BudgetRule], *, clock: Callable[[], float] = time.time
    ) -> None:
        self._by_user: dict[str, BudgetRule] = {}
        self._by_role: list[BudgetRule] = []
        self._everyone: BudgetRule | None = None
        for rule in rules:
            if rule.user is not None:
                self._by_user.setdefault(rule.user, rule)
            elif rule.role is not None:
                self._by_role.append(rule)
            elif self._everyone is None:
                self._everyone = rule
        self._clock = clock
        self._accounts: dict[str, _Account] = {}
        self._swept = clock()

    def rule_for(self, user: User) -> BudgetRule | None:
        """The most specific rule matching ``user`` (user > role > everyone)."""
        rule = self._by_user.get(user.id)
        if rule is not None and (rule.role is None or rule.role in user.roles):
            return rule
        for rule in self._by_role:
            if rule.role in user.roles:
                return rule
        return self._everyone

    def check(self, user: User) -> None:
        """Raise :class:`BudgetExceeded` if ``user`` has spent a budget.

        ``data.retryAfter`` is when the user may go again: the later refill when
        both budgets are spent.
        """
        now = self._clock()
        rule = self.rule_for(user)
        account = self._accounts.get(user.id)
        if account is not None:
            account.rule = rule
        if rule is None or account is None:
            return
        account.roll(now)
        refusals = []
        if rule.tokens_per_day is not None and account.today >= rule.tokens_per_day:
            wait = (account.day + 1) * DAY - now
            refusals.append((wait, "tokensPerDay", rule.tokens_per_day, account.today))
        if rule.tokens_per_minute is not None and account.last_minute >= rule.tokens_per_minute:
            wait = account.minute_wait(rule.tokens_per_minute, now)
            refusals.append((wait, "tokensPerMinute", rule.tokens_per_minute, account.last_minute))
        if refusals:
            wait, limit, allowed, used = max(refusals)
            seconds = max(1, math.ceil(wait))
            per = "minute" if limit == "tokensPerMinute" else "day"
            raise BudgetExceeded(
                f"Token budget spent: {used} of {allowed} tokens per {per}; retry in {seconds} s",
                data={"retryAfter": seconds, "limit": limit, "allowed": allowed, "used": used},
            )

    def record(self, user: User, tokens: int) -> None:
        """Count ``tokens`` used by ``user`` now."""
        now = self._clock()
        self._sweep(now)
        account = self._accounts.get(user.id)
        if account is None:
            account = self._accounts[user.id] = _Account(day=int(now // DAY))
        account.rule = self.rule_for(user)
        account.roll(now)
        if tokens <= 0:
            return
        second = int(now)
        if account.buckets and account.buckets[-1][0] == second:
            account.buckets[-1][1] += tokens
        else:
            account.buckets.append([second, tokens])
        account.last_minute += tokens
        account.today += tokens

    def usage(self, user_id: str) -> dict[str, Any]:
        """Tokens the user spent in the last minute and today, with the limits last applied."""
        account = self._accounts.get(user_id)
        if account is None:
            return {"tokensLastMinute": 0, "tokensToday": 0, "limits": None}
        account.roll(self._clock())
        rule = account.rule
        limits = None
        if rule is not None:
            limits = {
                "tokensPerMinute": rule.tokens_per_minute,
                "tokensPerDay": rule.tokens_per_day,
            }
        return {
            "tokensLastMinute": account.last_minute,
            "tokensToday": account.today,
            "limits": limits,
        }

    def __len__(self) -> int:
        """Users currently tracked."""
        return len(self._accounts)

    def _sweep(self, now: float) -> None:
        if now - self._swept < MINUTE:
            return
        self._swept = now
        for user_id, account in list(self._accounts.items()):
            account.roll(now)  # A new day zeroes ``today``.
            if not account.buckets and account.today == 0:
                del self._accounts[user_id]
