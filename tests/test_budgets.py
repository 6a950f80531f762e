"""The budget ledgers (memory and Redis, same tests): tokens per minute and per day."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import pytest

from gateway.budgets import DAY, BudgetLedger, RedisBudgetLedger
from gateway.config import BudgetRule
from gateway.context import User
from gateway.errors import BudgetExceeded
from gateway.sessions.redislink import RedisLink
from tests.redis_support import TEST_REDIS_TIMEOUT, redis_server, redis_url, store_kind, store_url

__all__ = ["redis_server", "redis_url", "store_kind", "store_url"]  # fixtures in use

Ledger = BudgetLedger | RedisBudgetLedger
MakeLedger = Callable[..., Awaitable[Ledger]]

ALICE = User("alice", roles=frozenset({"admin"}))
BOB = User("bob", roles=frozenset({"staff"}))
CAROL = User("carol")

NOON = 20_000 * DAY + DAY / 2
"""Midday UTC on some day: far from both midnights."""


class Clock:
    def __init__(self, now: float = NOON) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
async def make_ledger(store_url: str | None) -> AsyncIterator[MakeLedger]:
    """Builds a ledger of the parametrised kind (Redis: a private, empty server)."""
    links: list[RedisLink] = []

    async def make(rules: Sequence[BudgetRule], clock: Any) -> Ledger:
        if store_url is None:
            return BudgetLedger(rules, clock=clock)
        link = RedisLink(store_url, timeout=TEST_REDIS_TIMEOUT)
        ledger = RedisBudgetLedger(link, rules, clock=clock)
        await link.connect()
        links.append(link)
        return ledger

    yield make
    for link in links:
        await link.aclose()


async def refusal(ledger: Ledger, user: User) -> dict[str, object]:
    with pytest.raises(BudgetExceeded) as info:
        await ledger.check(user)
    assert info.value.data is not None
    return info.value.data


async def test_without_rules_nobody_is_limited(make_ledger: MakeLedger) -> None:
    """No rule means no limit, but usage is still counted."""
    ledger = await make_ledger([], Clock())
    await ledger.record(CAROL, 10**9)
    await ledger.check(CAROL)
    assert (await ledger.usage(CAROL))["tokensToday"] == 10**9


async def test_the_minute_budget_refuses_then_admits_once_the_window_passes(
    make_ledger: MakeLedger,
) -> None:
    """Spending the per-minute budget refuses the user until those tokens are a minute old."""
    clock = Clock()
    ledger = await make_ledger([BudgetRule(tokens_per_minute=1000)], clock)
    await ledger.record(CAROL, 600)
    await ledger.check(CAROL)
    clock.advance(20)
    await ledger.record(CAROL, 500)
    data = await refusal(ledger, CAROL)
    assert data["limit"] == "tokensPerMinute"
    assert data["retryAfter"] == 40  # The first 600 tokens expire 60 s after they were used.
    assert (data["allowed"], data["used"]) == (1000, 1100)
    await ledger.check(BOB)  # Budgets are per user.
    clock.advance(39)
    await refusal(ledger, CAROL)
    clock.advance(1)
    await ledger.check(CAROL)
    assert (await ledger.usage(CAROL))["tokensLastMinute"] == 500


async def test_the_day_budget_refuses_until_utc_midnight(make_ledger: MakeLedger) -> None:
    """The per-day budget refills at the next UTC midnight, and the refusal says when."""
    clock = Clock()
    ledger = await make_ledger([BudgetRule(tokens_per_day=5000)], clock)
    for _ in range(5):
        await ledger.record(CAROL, 1000)
        clock.advance(120)
    data = await refusal(ledger, CAROL)
    assert data["limit"] == "tokensPerDay"
    until_midnight = DAY - (clock.now % DAY)
    assert data["retryAfter"] == int(until_midnight)
    clock.advance(until_midnight - 1)
    await refusal(ledger, CAROL)
    clock.advance(1)
    await ledger.check(CAROL)
    assert (await ledger.usage(CAROL))["tokensToday"] == 0


async def test_when_both_budgets_are_spent_the_later_refill_is_reported(
    make_ledger: MakeLedger,
) -> None:
    """retryAfter is the wait until the user may really go again."""
    clock = Clock()
    ledger = await make_ledger([BudgetRule(tokens_per_minute=100, tokens_per_day=100)], clock)
    await ledger.record(CAROL, 150)
    data = await refusal(ledger, CAROL)
    assert data["limit"] == "tokensPerDay"
    clock.now = (int(clock.now // DAY) + 1) * DAY - 10  # Ten seconds before midnight.
    await ledger.record(CAROL, 150)
    assert (await refusal(ledger, CAROL))["limit"] == "tokensPerMinute"


async def test_the_most_specific_rule_wins(make_ledger: MakeLedger) -> None:
    """A user rule beats a role rule, which beats the rule for everyone."""
    rules = [
        BudgetRule(tokens_per_minute=100),
        BudgetRule(tokens_per_minute=1000, role="staff"),
        BudgetRule(tokens_per_minute=10_000, role="admin"),
        BudgetRule(tokens_per_minute=50, user="alice"),
    ]
    ledger = await make_ledger(rules, Clock())
    assert ledger.rule_for(ALICE) is rules[3]
    assert ledger.rule_for(BOB) is rules[1]
    assert ledger.rule_for(CAROL) is rules[0]
    for user in (ALICE, BOB, CAROL):
        await ledger.record(user, 500)
    await refusal(ledger, ALICE)
    await ledger.check(BOB)
    await refusal(ledger, CAROL)


async def test_a_rule_naming_user_and_role_needs_both(make_ledger: MakeLedger) -> None:
    """A rule with user and role applies only while that user holds the role."""
    rule = BudgetRule(tokens_per_day=1, user="bob", role="staff")
    ledger = await make_ledger([rule], Clock())
    assert ledger.rule_for(BOB) is rule
    assert ledger.rule_for(User("bob")) is None


async def test_usage_reports_counts_and_the_limits_that_apply(make_ledger: MakeLedger) -> None:
    """usage() gives the last minute, today, and the limits of the rule that applies."""
    clock = Clock()
    ledger = await make_ledger([BudgetRule(tokens_per_minute=100, tokens_per_day=1000)], clock)
    limits = {"tokensPerMinute": 100, "tokensPerDay": 1000}
    assert await ledger.usage(CAROL) == {"tokensLastMinute": 0, "tokensToday": 0, "limits": limits}
    assert (await ledger.usage(BOB))["tokensToday"] == 0
    await ledger.record(CAROL, 30)
    clock.advance(61)
    await ledger.record(CAROL, 20)
    assert (await ledger.usage(CAROL)) == {
        "tokensLastMinute": 20,
        "tokensToday": 50,
        "limits": {"tokensPerMinute": 100, "tokensPerDay": 1000},
    }


async def test_memory_is_bounded_by_recent_users() -> None:
    """Users idle for a minute whose day has ended are forgotten; per-user buckets stay few."""
    clock = Clock()
    ledger = BudgetLedger([BudgetRule(tokens_per_minute=10**9)], clock=clock)
    for i in range(1000):
        await ledger.record(User(f"user{i}"), 1)
    for _ in range(300):
        clock.advance(0.5)
        await ledger.record(CAROL, 1)
    assert len(ledger._accounts["carol"].buckets) <= 61
    clock.advance(DAY)
    await ledger.record(CAROL, 1)
    assert len(ledger) == 1
