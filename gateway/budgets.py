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

Two ledgers side by side: :class:`BudgetLedger` counts in this process's
memory (per user at most 60 one-second buckets and a day counter; users idle
for a minute whose day has ended are dropped by a sweep at most once a
minute); :class:`RedisBudgetLedger` keeps the same buckets in one hash per
user (``<p>{u:<id>}:b``: fields ``s<second>`` and ``d<day>``, updated by one
Lua script, expiring after the day), so every process sharing the Redis
refuses at the same total.
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
from gateway.sessions.redislink import RedisLink

__all__ = ["BudgetLedger", "BudgetRules", "RedisBudgetLedger"]

MINUTE = 60
DAY = 86_400


@dataclass(slots=True)
class _Account:
    buckets: deque[list[int]] = field(default_factory=deque)
    """[second, tokens] pairs of the last minute, oldest first."""
    last_minute: int = 0
    day: int = 0
    today: int = 0

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

    def refuse(self, rule: BudgetRule, now: float) -> None:
        """Raise :class:`BudgetExceeded` if this account has spent ``rule``'s budget.

        ``data.retryAfter`` is when the user may go again: the later refill when
        both budgets are spent.
        """
        refusals = []
        if rule.tokens_per_day is not None and self.today >= rule.tokens_per_day:
            wait = (self.day + 1) * DAY - now
            refusals.append((wait, "tokensPerDay", rule.tokens_per_day, self.today))
        if rule.tokens_per_minute is not None and self.last_minute >= rule.tokens_per_minute:
            wait = self.minute_wait(rule.tokens_per_minute, now)
            refusals.append((wait, "tokensPerMinute", rule.tokens_per_minute, self.last_minute))
        if refusals:
            wait, limit, allowed, used = max(refusals)
            seconds = max(1, math.ceil(wait))
            per = "minute" if limit == "tokensPerMinute" else "day"
            raise BudgetExceeded(
                f"Token budget spent: {used} of {allowed} tokens per {per}; retry in {seconds} s",
                data={"retryAfter": seconds, "limit": limit, "allowed": allowed, "used": used},
            )

    def usage(self, rule: BudgetRule | None) -> dict[str, Any]:
        limits = None
        if rule is not None:
            limits = {
                "tokensPerMinute": rule.tokens_per_minute,
                "tokensPerDay": rule.tokens_per_day,
            }
        return {"tokensLastMinute": self.last_minute, "tokensToday": self.today, "limits": limits}


class BudgetRules:
    """Which rule applies to a user: one naming the user, else a role, else everyone."""

    def __init__(self, rules: Sequence[BudgetRule]) -> None:
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

    def rule_for(self, user: User) -> BudgetRule | None:
        """The most specific rule matching ``user`` (user > role > everyone)."""
        rule = self._by_user.get(user.id)
        if rule is not None and (rule.role is None or rule.role in user.roles):
            return rule
        for rule in self._by_role:
            if rule.role in user.roles:
                return rule
        return self._everyone


class BudgetLedger(BudgetRules):
    """Counts tokens per user in this process and refuses users over their rule's budget."""

    def __init__(
        self, rules: Sequence[BudgetRule], *, clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__(rules)
        self._clock = clock
        self._accounts: dict[str, _Account] = {}
        self._swept = clock()

    async def check(self, user: User) -> None:
        """Raise :class:`BudgetExceeded` if ``user`` has spent a budget."""
        account = self._accounts.get(user.id)
        if account is None:
            return
        rule = self.rule_for(user)
        if rule is None:
            return
        now = self._clock()
        account.roll(now)
        account.refuse(rule, now)

    async def record(self, user: User, tokens: int) -> None:
        """Count ``tokens`` used by ``user`` now."""
        now = self._clock()
        self._sweep(now)
        account = self._accounts.get(user.id)
        if account is None:
            account = self._accounts[user.id] = _Account(day=int(now // DAY))
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

    async def usage(self, user: User) -> dict[str, Any]:
        """Tokens the user spent in the last minute and today, with the limits that apply."""
        account = self._accounts.get(user.id)
        if account is None:
            account = _Account(day=int(self._clock() // DAY))
        else:
            account.roll(self._clock())
        return account.usage(self.rule_for(user))

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


# KEYS[1] budget hash; ARGV now, tokens. Adds tokens to this second and today,
# drops buckets older than a minute and counts of earlier days.
_RECORD = """
local k, now, tokens = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2])
local second = math.floor(now)
local day = math.floor(now / 86400)
redis.call('HINCRBY', k, 's' .. second, tokens)
redis.call('HINCRBY', k, 'd' .. day, tokens)
for _, name in ipairs(redis.call('HKEYS', k)) do
  local kind, n = string.sub(name, 1, 1), tonumber(string.sub(name, 2))
  if (kind == 's' and n <= second - 60) or (kind == 'd' and n ~= day) then
    redis.call('HDEL', k, name)
  end
end
redis.call('EXPIRE', k, math.ceil((day + 1) * 86400 - now) + 120)
return 1
"""

# KEYS[1] budget hash; ARGV now. Returns {today, second1, tokens1, second2, tokens2, ...}.
_READ = """
local now = tonumber(ARGV[1])
local second = math.floor(now)
local day = math.floor(now / 86400)
local flat = redis.call('HGETALL', KEYS[1])
local out = {0}
for i = 1, #flat, 2 do
  local kind, n = string.sub(flat[i], 1, 1), tonumber(string.sub(flat[i], 2))
  if kind == 'd' and n == day then out[1] = tonumber(flat[i + 1]) end
  if kind == 's' and n > second - 60 then
    table.insert(out, n)
    table.insert(out, tonumber(flat[i + 1]))
  end
end
return out
"""


class RedisBudgetLedger(BudgetRules):
    """The same budgets counted in Redis: every process refuses at the same total."""

    def __init__(
        self,
        link: RedisLink,
        rules: Sequence[BudgetRule],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(rules)
        self._link = link
        self._clock = clock
        self._record = link.script(_RECORD)
        self._read = link.script(_READ)

    async def _account(self, user: User, now: float) -> _Account:
        flat = await self._read([self._link.user_key(user.id, "b")], [repr(now)])
        account = _Account(day=int(now // DAY), today=int(flat[0]))
        pairs = sorted(zip(flat[1::2], flat[2::2], strict=True))
        account.buckets.extend([int(s), int(t)] for s, t in pairs)
        account.last_minute = sum(int(t) for _, t in pairs)
        return account

    async def check(self, user: User) -> None:
        rule = self.rule_for(user)
        if rule is None:
            return
        now = self._clock()
        (await self._account(user, now)).refuse(rule, now)

    async def record(self, user: User, tokens: int) -> None:
        if tokens > 0:
            await self._record([self._link.user_key(user.id, "b")], [repr(self._clock()), tokens])

    async def usage(self, user: User) -> dict[str, Any]:
        return (await self._account(user, self._clock())).usage(self.rule_for(user))
