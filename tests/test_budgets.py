"""BudgetLedger: per-user token budgets per minute and per day, with an injected clock."""

from __future__ import annotations

import pytest

from gateway.budgets import DAY, BudgetLedger
from gateway.config import BudgetRule
from gateway.context import User
from gateway.errors import BudgetExceeded

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


def refusal(ledger: BudgetLedger, user: User) -> dict[str, object]:
    with pytest.raises(BudgetExceeded) as info:
        ledger.check(user)
    assert info.value.data is not None
    return info.value.data


def test_without_rules_nobody_is_limited() -> None:
    """No rule means no limit, but usage is still counted."""
    ledger = BudgetLedger([], clock=Clock())
    ledger.record(CAROL, 10**9)
    ledger.check(CAROL)
    assert ledger.usage("carol")["tokensToday"] == 10**9


def test_the_minute_budget_refuses_then_admits_once_the_window_passes() -> None:
    """Spending the per-minute budget refuses the user until those tokens are a minute old."""
    clock = Clock()
    ledger = BudgetLedger([BudgetRule(tokens_per_minute=1000)], clock=clock)
    ledger.record(CAROL, 600)
    ledger.check(CAROL)
    clock.advance(20)
    ledger.record(CAROL, 500)
    data = refusal(ledger, CAROL)
    assert data["limit"] == "tokensPerMinute"
    assert data["retryAfter"] == 40  # The first 600 tokens expire 60 s after they were used.
    assert (data["allowed"], data["used"]) == (1000, 1100)
    ledger.check(BOB)  # Budgets are per user.
    clock.advance(39)
    refusal(ledger, CAROL)
    clock.advance(1)
    ledger.check(CAROL)
    assert ledger.usage("carol")["tokensLastMinute"] == 500


def test_the_day_budget_refuses_until_utc_midnight() -> None:
    """The per-day budget refills at the next UTC midnight, and the refusal says when."""
    clock = Clock()
    ledger = BudgetLedger([BudgetRule(tokens_per_day=5000)], clock=clock)
    for _ in range(5):
        ledger.record(CAROL, 1000)
        clock.advance(120)
    data = refusal(ledger, CAROL)
    assert data["limit"] == "tokensPerDay"
    until_midnight = DAY - (clock.now % DAY)
    assert data["retryAfter"] == int(until_midnight)
    clock.advance(until_midnight - 1)
    refusal(ledger, CAROL)
    clock.advance(1)
    ledger.check(CAROL)
    assert ledger.usage("carol")["tokensToday"] == 0


def test_when_both_budgets_are_spent_the_later_refill_is_reported() -> None:
    """retryAfter is the wait until the user may really go again."""
    clock = Clock()
    ledger = BudgetLedger([BudgetRule(tokens_per_minute=100, tokens_per_day=100)], clock=clock)
    ledger.record(CAROL, 150)
    data = refusal(ledger, CAROL)
    assert data["limit"] == "tokensPerDay"
    clock.now = (int(clock.now // DAY) + 1) * DAY - 10  # Ten seconds before midnight.
    ledger.record(CAROL, 150)
    assert refusal(ledger, CAROL)["limit"] == "tokensPerMinute"


def test_the_most_specific_rule_wins() -> None:
    """A user rule beats a role rule, which beats the rule for everyone."""
    rules = [
        BudgetRule(tokens_per_minute=100),
        BudgetRule(tokens_per_minute=1000, role="staff"),
        BudgetRule(tokens_per_minute=10_000, role="admin"),
        BudgetRule(tokens_per_minute=50, user="alice"),
    ]
    ledger = BudgetLedger(rules, clock=Clock())
    assert ledger.rule_for(ALICE) is rules[3]
    assert ledger.rule_for(BOB) is rules[1]
    assert ledger.rule_for(CAROL) is rules[0]
    for user in (ALICE, BOB, CAROL):
        ledger.record(user, 500)
    refusal(ledger, ALICE)
    ledger.check(BOB)
    refusal(ledger, CAROL)


def test_a_rule_naming_user_and_role_needs_both() -> None:
    """A rule with user and role applies only while that user holds the role."""
    rule = BudgetRule(tokens_per_day=1, user="bob", role="staff")
    ledger = BudgetLedger([rule], clock=Clock())
    assert ledger.rule_for(BOB) is rule
    assert ledger.rule_for(User("bob")) is None


def test_usage_reports_counts_and_the_limits_that_apply() -> None:
    """usage() gives the last minute, today, and the applied rule's limits."""
    clock = Clock()
    ledger = BudgetLedger([BudgetRule(tokens_per_minute=100, tokens_per_day=1000)], clock=clock)
    assert ledger.usage("carol") == {"tokensLastMinute": 0, "tokensToday": 0, "limits": None}
    ledger.record(CAROL, 30)
    clock.advance(61)
    ledger.record(CAROL, 20)
    assert ledger.usage("carol") == {
        "tokensLastMinute": 20,
        "tokensToday": 50,
        "limits": {"tokensPerMinute": 100, "tokensPerDay": 1000},
    }


def test_memory_is_bounded_by_recent_users() -> None:
    """Users idle for a minute whose day has ended are forgotten; per-user buckets stay few."""
    clock = Clock()
    ledger = BudgetLedger([BudgetRule(tokens_per_minute=10**9)], clock=clock)
    for i in range(1000):
        ledger.record(User(f"user{i}"), 1)
    for _ in range(300):
        clock.advance(0.5)
        ledger.record(CAROL, 1)
    assert len(ledger._accounts["carol"].buckets) <= 61
    clock.advance(DAY)
    ledger.record(CAROL, 1)
    assert len(ledger) == 1
