"""The credit balance engine against a minute-by-minute reference model, plus OpenMeter's worked scenarios."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from billow.domain.credits import Grant, ResetAt, Result, Snapshot, run
from billow.domain.periods import RecurringPeriod
from billow.errors import ValidationFailed
from tests.conftest import t

D = Decimal
T0 = t("2026-01-01T00:00:00Z")
H = 240  # the horizon of generated histories, in minutes
MIN = timedelta(minutes=1)


def m(k: int) -> datetime:
    return T0 + k * MIN


class MinuteUsage:
    """usage(a, b) = the sum of per-minute values in [a, b); records every call."""

    def __init__(self, per_minute: dict[int, Decimal]) -> None:
        self.per_minute = per_minute
        self.calls: list[tuple[datetime, datetime]] = []

    def __call__(self, a: datetime, b: datetime) -> Decimal:
        self.calls.append((a, b))
        lo, hi = (a - T0) // MIN, (b - T0) // MIN
        return sum((v for k, v in self.per_minute.items() if lo <= k < hi), D(0))


class EventUsage:
    """usage(a, b) from (time, amount) events, for the calendar scenarios."""

    def __init__(self, events: list[tuple[str, int]]) -> None:
        self.events = [(t(ts), D(v)) for ts, v in events]

    def __call__(self, a: datetime, b: datetime) -> Decimal:
        return sum((v for ts, v in self.events if a <= ts < b), D(0))


# -- the reference model ----------------------------------------------------------------------------------------
@dataclass
class RefFlows:
    granted: Decimal = D(0)
    rolled_in: Decimal = D(0)
    burned: Decimal = D(0)
    expired: Decimal = D(0)
    voided: Decimal = D(0)
    forfeited: Decimal = D(0)
    overage_forgiven: Decimal = D(0)


@dataclass
class RefState:
    balances: dict[str, Decimal] = field(default_factory=dict)
    overage: Decimal = D(0)
    flows: RefFlows = field(default_factory=RefFlows)
    min_balance: Decimal = D(0)


def _active(g: Grant, x: datetime) -> bool:
    if g.voided_at is not None and g.voided_at <= x:
        return False
    return g.effective_at <= x and (g.expires_at is None or x < g.expires_at)


def _order(g: Grant) -> tuple[Any, ...]:
    far = datetime(9999, 1, 1, tzinfo=UTC)
    return (g.priority, g.expires_at is None, g.expires_at or far, g.created_at, g.id)


def _recurs_at(g: Grant, x: datetime) -> bool:
    """Only elapsed-time recurrences are generated: x is on the grid anchor + n * interval."""
    assert g.recurrence is not None
    step = int(g.recurrence.interval[2:-1])
    return (x - g.recurrence.anchor) % (step * MIN) == timedelta(0)


def reference(grants: list[Grant], resets: list[tuple[int, bool | None]], usage: dict[int, Decimal],
              preserve_default: bool, horizon: int = H) -> RefState:
    """Minute by minute, re-deriving the active set and burn order from scratch every minute."""
    s = RefState()
    f = s.flows
    reset_at: dict[int, bool] = {}
    for k, p in resets:
        keep = preserve_default if p is None else p
        reset_at[k] = reset_at.get(k, True) and keep

    def burn(amount: Decimal) -> Decimal:
        for g in sorted((g for g in grants if g.id in s.balances), key=_order):
            take = min(s.balances[g.id], amount)
            s.balances[g.id] -= take
            amount -= take
            f.burned += take
        return amount

    for k in range(horizon + 1):
        x = m(k)
        if k > 0:
            for g in grants:
                if g.id in s.balances and not _active(g, x):
                    b = s.balances.pop(g.id)
                    voided = g.voided_at is not None and g.voided_at <= x and (
                        g.expires_at is None or g.voided_at <= g.expires_at)
                    if voided:
                        f.voided += b
                    else:
                        f.expired += b
            if k in reset_at:
                if not reset_at[k]:
                    f.overage_forgiven += s.overage
                    s.overage = D(0)
                for g in grants:
                    if g.id in s.balances:
                        old = s.balances[g.id]
                        new = min(g.max_rollover_amount, max(old, g.min_rollover_amount))
                        f.forfeited += max(old - new, D(0))
                        f.rolled_in += max(new - old, D(0))
                        s.balances[g.id] = new
            for g in grants:
                if g.id in s.balances and g.recurrence is not None and x > g.effective_at and _recurs_at(g, x):
                    f.forfeited += s.balances[g.id]
                    f.granted += g.amount
                    s.balances[g.id] = g.amount
        for g in grants:
            if g.id not in s.balances and _active(g, x):
                s.balances[g.id] = g.amount
                f.granted += g.amount
        s.overage = burn(s.overage)
        s.min_balance = min([s.min_balance, *s.balances.values()])
        if k == horizon:
            break
        s.overage += burn(usage.get(k, D(0)))
    return s


# -- generated histories ----------------------------------------------------------------------------------------
amounts = st.builds(lambda n, q: D(n) / q, st.integers(1, 60), st.sampled_from([1, 4, 100]))


@st.composite
def grant_lists(draw: st.DrawFn) -> list[Grant]:
    out = []
    for i in range(draw(st.integers(0, 5))):
        eff = draw(st.integers(-30, H))
        expires = draw(st.none() | st.integers(eff + 1, eff + H))
        max_roll = draw(st.sampled_from([D(0), D(0), D(5), D("12.5"), D(1000)]))
        min_roll = draw(st.sampled_from([v for v in (D(0), D(0), D(1), D(5)) if v <= max_roll]))
        rec = None
        if draw(st.booleans()):
            rec = RecurringPeriod(interval=f"PT{draw(st.integers(7, 90))}M", anchor=m(eff + draw(st.integers(-50, 50))))
        voided = draw(st.none() | st.none() | st.integers(eff - 10, H + 10))
        out.append(Grant(
            id=f"g{i}", amount=draw(amounts), priority=draw(st.integers(1, 3)), effective_at=m(eff),
            expires_at=m(expires) if expires is not None else None,
            created_at=m(draw(st.integers(-100, 0))), max_rollover_amount=max_roll, min_rollover_amount=min_roll,
            recurrence=rec, voided_at=m(voided) if voided is not None else None))
    return out


usages = st.dictionaries(st.integers(0, H - 1), st.builds(lambda n, q: D(n) / q, st.integers(0, 40),
                                                          st.sampled_from([1, 4, 10])), max_size=60)
reset_lists = st.lists(st.tuples(st.integers(1, H), st.none() | st.booleans()), max_size=5)


def _resets(rs: list[tuple[int, bool | None]]) -> list[ResetAt]:
    return [ResetAt(m(k), p) for k, p in rs]


def _check_segments(res: Result, start: datetime, until: datetime, calls: list[tuple[datetime, datetime]]) -> None:
    segs = res.segments
    assert [(s.start, s.end) for s in segs] == calls, "usage is asked exactly once per segment"
    if start == until:
        assert segs == []
        return
    assert segs[0].start == start and segs[-1].end == until
    assert all(a.end == b.start for a, b in zip(segs, segs[1:], strict=False))
    for s in segs:
        assert s.start < s.end
        burnt = sum((u for _, u in s.grant_usages), D(0))
        assert s.balance_at_end == s.balance_at_start - burnt
        assert s.overage == s.overage_at_start + s.usage - burnt
        assert all(v >= 0 for v in (*s.grant_balances_at_start.values(), *s.grant_balances_at_end.values()))
        assert all(u > 0 for _, u in s.grant_usages)
        assert s.overage >= 0


def _conserves(res: Result, start: Snapshot, total_usage: Decimal) -> None:
    f = res.flows
    assert start.balance + f.granted + f.rolled_in == f.burned + f.expired + f.voided + f.forfeited + res.balance
    assert total_usage + start.overage == f.burned + f.overage_forgiven + res.overage


@settings(max_examples=250, deadline=None)
@given(grants=grant_lists(), usage=usages, resets=reset_lists, preserve=st.booleans())
def test_engine_matches_the_minute_by_minute_reference(
        grants: list[Grant], usage: dict[int, Decimal], resets: list[tuple[int, bool | None]], preserve: bool) -> None:
    start = Snapshot.empty(T0)
    u = MinuteUsage(usage)
    res = run(grants, start, _resets(resets), u, m(H), preserve)
    ref = reference(grants, resets, usage, preserve)

    assert res.end.balances == ref.balances
    assert res.overage == ref.overage
    assert res.balance == sum(ref.balances.values(), D(0))
    assert vars(res.flows) == vars(ref.flows)
    assert res.balance >= 0 and res.overage >= 0 and ref.min_balance >= 0
    _check_segments(res, T0, m(H), u.calls)
    _conserves(res, start, sum(usage.values(), D(0)))
    f = res.flows
    event(f"ends with overage: {res.overage > 0}")
    for name in ("expired", "voided", "forfeited", "rolled_in", "burned", "overage_forgiven"):
        event(f"{name} > 0: {getattr(f, name) > 0}")
    event(f"recurred: {f.granted > sum((g.amount for g in grants), D(0))}")
    # the balance-only path computes the same state
    lean = run(grants, start, _resets(resets), MinuteUsage(usage), m(H), preserve, keep_history=False)
    assert lean.end == res.end and lean.segments == []


@settings(max_examples=200, deadline=None)
@given(grants=grant_lists(), usage=usages, resets=reset_lists, preserve=st.booleans(),
       cuts=st.lists(st.integers(0, H), min_size=1, max_size=3), at_resets=st.booleans())
def test_running_from_an_intermediate_snapshot_is_exact(
        grants: list[Grant], usage: dict[int, Decimal], resets: list[tuple[int, bool | None]], preserve: bool,
        cuts: list[int], at_resets: bool) -> None:
    """Cut anywhere, and (as the service does) at resets: the legs chained through stored snapshots end exactly
    where one run does."""
    whole = run(grants, Snapshot.empty(T0), _resets(resets), MinuteUsage(usage), m(H), preserve)
    snap = Snapshot.empty(T0)
    if at_resets:
        cuts = cuts + [k for k, _ in resets]
    for k in sorted(set(cuts)) + [H]:
        part = run(grants, snap, _resets(resets), MinuteUsage(usage), m(k), preserve)
        # each leg conserves credit on its own, from its starting balance and overage
        leg_from = (snap.at - T0) // MIN
        _conserves(part, snap, sum((v for i, v in usage.items() if leg_from <= i < k), D(0)))
        snap = Snapshot.from_json(part.end.to_json())  # through storage, exactly
        assert snap == part.end
    assert snap == whole.end


# -- worked scenarios (OpenMeter entitlement docs) --------------------------------------------------------------
MONTHLY = RecurringPeriod(interval="MONTH", anchor=t("2026-01-01T00:00:00Z"))


def _grant(gid: str, amount: int | str, **kw: Any) -> Grant:
    kw.setdefault("effective_at", t("2026-01-01T00:00:00Z"))
    kw.setdefault("created_at", kw["effective_at"])
    return Grant(id=gid, amount=D(amount), **kw)


def test_free_tier_with_monthly_reset_issues_1000_after_each_reset() -> None:
    # issueAfterReset = 1000: a grant recurring with the usage period (the caller creates it; nothing special here)
    free = _grant("free", 1000, recurrence=MONTHLY)
    usage = EventUsage([("2026-01-10T00:00:00Z", 300), ("2026-02-03T00:00:00Z", 900), ("2026-02-20T00:00:00Z", 300),
                        ("2026-03-02T00:00:00Z", 50)])
    resets = MONTHLY.boundaries(t("2026-01-01T00:01:00Z"), t("2026-03-15T00:00:00Z"))
    start = Snapshot.empty(t("2026-01-01T00:00:00Z"))

    jan = run([free], start, resets, usage, t("2026-01-31T00:00:00Z"))
    assert (jan.balance, jan.overage) == (D(700), D(0))
    feb = run([free], start, resets, usage, t("2026-02-28T00:00:00Z"))
    assert (feb.balance, feb.overage) == (D(0), D(200))  # 1000 fresh, 1200 used
    mar = run([free], start, resets, usage, t("2026-03-15T00:00:00Z"))
    assert (mar.balance, mar.overage) == (D(950), D(0))  # overage dropped at the reset, 1000 issued again
    assert mar.flows.granted == D(3000) and mar.flows.overage_forgiven == D(200)
    reset_rows = [s for s in mar.segments if s.reset_at_end]
    assert [s.end for s in reset_rows] == [t("2026-02-01T00:00:00Z"), t("2026-03-01T00:00:00Z")]


def test_prepaid_credits_burn_by_priority_then_expiry_and_expired_credit_leaves() -> None:
    day = timedelta(days=1)
    d0 = t("2026-01-01T00:00:00Z")
    base = _grant("base", 100, priority=2)
    promo_long = _grant("promo-7d", 50, priority=1, expires_at=d0 + 7 * day)
    promo_short = _grant("promo-3d", 30, priority=1, expires_at=d0 + 3 * day)
    usage = EventUsage([("2026-01-01T12:00:00Z", 20), ("2026-01-02T12:00:00Z", 40), ("2026-01-09T00:00:00Z", 10)])
    res = run([base, promo_long, promo_short], Snapshot.empty(d0), [], usage, d0 + 10 * day)
    # day 1: 20 from promo-3d (earlier expiry); day 2: its last 10, then 30 of promo-7d; day 7: 20 expire
    assert res.end.balances == {"base": D(90)}
    assert res.flows.expired == D(20) and res.flows.burned == D(70)
    usages = [u for s in res.segments for u in s.grant_usages]
    assert usages == [("promo-3d", D(30)), ("promo-7d", D(30)), ("base", D(10))]
    assert [s.end for s in res.segments] == [d0 + 3 * day, d0 + 7 * day, d0 + 10 * day]


def test_same_priority_and_expiry_burns_the_older_grant_first() -> None:
    d0 = t("2026-01-01T00:00:00Z")
    newer = _grant("a-newer", 10, created_at=d0 + MIN)
    older = _grant("z-older", 10, created_at=d0)
    res = run([newer, older], Snapshot.empty(d0), [], EventUsage([("2026-01-01T01:00:00Z", 4)]), d0 + 120 * MIN)
    assert res.end.balances == {"a-newer": D(10), "z-older": D(6)}


def test_rollover_keeps_at_most_max_and_at_least_min() -> None:
    g = _grant("g", 100, max_rollover_amount=D(50), min_rollover_amount=D(10))
    usage = EventUsage([("2026-01-05T00:00:00Z", 30), ("2026-02-05T00:00:00Z", 60)])
    resets = [t("2026-02-01T00:00:00Z"), t("2026-03-01T00:00:00Z")]
    start = Snapshot.empty(t("2026-01-01T00:00:00Z"))
    assert run([g], start, resets, usage, t("2026-02-01T00:00:00Z")).balance == D(50)  # 70, capped at 50
    feb_end = run([g], start, resets, usage, t("2026-02-28T00:00:00Z"))
    assert (feb_end.balance, feb_end.overage) == (D(0), D(10))
    mar = run([g], start, resets, usage, t("2026-03-01T00:00:00Z"))
    assert (mar.balance, mar.overage) == (D(10), D(0))  # raised to the minimum, overage dropped
    assert (mar.flows.forfeited, mar.flows.rolled_in, mar.flows.overage_forgiven) == (D(20), D(10), D(10))
    kept = run([g], start, resets, usage, t("2026-03-01T00:00:00Z"), preserve_overage_at_reset=True)
    assert (kept.balance, kept.overage) == (D(0), D(0))  # the preserved 10 of overage burns the rolled-over 10


def test_default_rollover_is_nothing() -> None:
    g = _grant("g", 100)
    res = run([g], Snapshot.empty(t("2026-01-01T00:00:00Z")), [t("2026-02-01T00:00:00Z")], EventUsage([]),
              t("2026-02-02T00:00:00Z"))
    assert res.end.balances == {"g": D(0)} and res.flows.forfeited == D(100)


def test_overage_is_burnt_from_a_grant_that_becomes_effective_later_in_the_period() -> None:
    d0 = t("2026-01-01T00:00:00Z")
    a = _grant("a", 10)
    b = _grant("b", 100, effective_at=d0 + 60 * MIN, priority=5)
    usage = EventUsage([("2026-01-01T00:10:00Z", 25), ("2026-01-01T01:30:00Z", 5)])
    before = run([a, b], Snapshot.empty(d0), [], usage, d0 + 59 * MIN)
    assert (before.balance, before.overage) == (D(0), D(15))
    after = run([a, b], Snapshot.empty(d0), [], usage, d0 + 60 * MIN)
    assert after.end.balances == {"a": D(0), "b": D(85)} and after.overage == D(0)
    later = run([a, b], Snapshot.empty(d0), [], usage, d0 + 120 * MIN)
    assert later.end.balances == {"a": D(0), "b": D(80)}
    assert later.segments[-1].grant_balances_at_start == {"a": D(0), "b": D(85)}


def test_a_recurring_grant_tops_up_and_pays_outstanding_overage() -> None:
    d0 = t("2026-01-01T00:00:00Z")
    daily = _grant("daily", 10, recurrence=RecurringPeriod(interval="DAY", anchor=d0))
    usage = EventUsage([("2026-01-01T10:00:00Z", 4), ("2026-01-02T10:00:00Z", 13), ("2026-01-03T10:00:00Z", 1)])
    r = run([daily], Snapshot.empty(d0), [], usage, t("2026-01-04T00:00:00Z"))
    # day 1: 10 -> 6; day 2: topped to 10 (6 forfeited) -> 0, 3 over; day 3: 10 - 3 - 1; day 4: topped up again
    assert r.end.balances == {"daily": D(10)} and r.overage == D(0)
    d3 = run([daily], Snapshot.empty(d0), [], usage, t("2026-01-03T23:00:00Z"))
    assert d3.end.balances == {"daily": D(6)}
    assert r.flows.forfeited == D(6) + D(0) + D(6)


def test_voided_grant_balance_disappears() -> None:
    d0 = t("2026-01-01T00:00:00Z")
    g = _grant("g", 50, voided_at=d0 + 30 * MIN)
    keep = _grant("keep", 5, priority=9)
    usage = EventUsage([("2026-01-01T00:10:00Z", 20), ("2026-01-01T00:40:00Z", 7)])
    r = run([g, keep], Snapshot.empty(d0), [], usage, d0 + 60 * MIN)
    assert r.end.balances == {"keep": D(0)} and r.overage == D(2)
    assert r.flows.voided == D(30)


def test_grant_times_are_truncated_to_the_minute() -> None:
    g = Grant(id="g", amount=D(1), effective_at=t("2026-01-01T00:00:59.999Z"),
              expires_at=t("2026-01-01T00:05:30Z"), created_at=t("2026-01-01T00:00:59Z"),
              recurrence=RecurringPeriod(interval="PT1H", anchor=t("2026-01-01T00:00:10Z")))
    assert g.effective_at == t("2026-01-01T00:00:00Z") and g.expires_at == t("2026-01-01T00:05:00Z")
    assert g.recurrence is not None and g.recurrence.anchor == t("2026-01-01T00:00:00Z")
    assert g.created_at == t("2026-01-01T00:00:59Z")  # only orders grants; kept as given
    with pytest.raises(ValidationFailed) as e:  # expiry and effect land in the same minute
        Grant(id="g", amount=D(1), effective_at=t("2026-01-01T00:00:10Z"), expires_at=t("2026-01-01T00:00:50Z"),
              created_at=T0)
    assert e.value.errors[0]["field"] == "expiresAt"


def test_usage_is_asked_once_per_segment_split_at_every_change() -> None:
    d0 = t("2026-01-01T00:00:00Z")
    grants = [_grant("a", 10, expires_at=d0 + 30 * MIN), _grant("b", 10, effective_at=d0 + 10 * MIN),
              _grant("c", 10, voided_at=d0 + 20 * MIN),
              _grant("r", 1, recurrence=RecurringPeriod(interval="PT25M", anchor=d0))]
    u = MinuteUsage({})
    run(grants, Snapshot.empty(d0), [d0 + 45 * MIN], u, d0 + 60 * MIN)
    assert [(a - d0) // MIN for a, _ in u.calls] == [0, 10, 20, 25, 30, 45, 50]
    assert (u.calls[-1][1] - d0) // MIN == 60


def test_empty_run_and_grant_active_before_measurement_enters_full() -> None:
    d0 = t("2026-01-01T00:00:00Z")
    old = _grant("old", 40, effective_at=d0 - timedelta(days=30))
    r = run([old], Snapshot.empty(d0), [], EventUsage([]), d0)
    assert r.end.balances == {"old": D(40)} and r.segments == []


def test_snapshot_drops_unknown_and_inactive_grants() -> None:
    d0 = t("2026-01-01T00:00:00Z")
    g = _grant("g", 10, expires_at=d0 + 5 * MIN)
    snap = Snapshot(at=d0 + 10 * MIN, balances={"g": D(3), "deleted": D(4)})
    r = run([g], snap, [], EventUsage([]), d0 + 20 * MIN)
    assert r.end.balances == {} and r.flows.expired == D(3) and r.flows.voided == D(4)


def test_history_rows_have_openmeters_burndown_segment_shape() -> None:
    d0 = t("2026-01-01T00:00:00Z")
    r = run([_grant("g", "10.50")], Snapshot.empty(d0), [], EventUsage([("2026-01-01T00:01:00Z", 12)]), d0 + 5 * MIN)
    assert r.segments_json() == [{
        "period": {"from": "2026-01-01T00:00:00Z", "to": "2026-01-01T00:05:00Z"},
        "usage": D(12), "overage": D("1.5"), "balanceAtStart": D("10.5"), "grantBalancesAtStart": {"g": D("10.5")},
        "balanceAtEnd": D(0), "grantBalancesAtEnd": {"g": D(0)}, "grantUsages": [{"grantId": "g", "usage": D("10.5")}],
    }]


def test_snapshot_json_round_trip_is_exact() -> None:
    s = Snapshot(at=t("2026-01-01T00:00:00Z"), balances={"a": D("0.1000000000000000000000000000000001")},
                 overage=D("12345678901234567890.123456789012345678"))
    assert Snapshot.from_json(s.to_json()) == s
    assert Snapshot.from_json(s.to_json()).to_json() == s.to_json()


def test_arithmetic_is_exact_beyond_28_digits() -> None:
    d0 = t("2026-01-01T00:00:00Z")
    big = D("99999999999999999999.000000000000000001")
    r = run([_grant("g", str(big))], Snapshot.empty(d0), [], lambda a, b: D("0.000000000000000001"), d0 + MIN)
    assert r.balance == D("99999999999999999999")


def test_negative_usage_reduces_overage_only() -> None:
    d0 = t("2026-01-01T00:00:00Z")
    g = _grant("g", 5)
    usage = EventUsage([("2026-01-01T00:01:00Z", 8), ("2026-01-01T00:02:00Z", -10)])
    splits = [_grant("x", 1, effective_at=d0 + 2 * MIN, priority=9)]  # split the segments at the minute
    r = run([g, *splits], Snapshot.empty(d0), [], usage, d0 + 3 * MIN)
    assert (r.end.balances["g"], r.overage) == (D(0), D(0))
    _conserves(r, Snapshot.empty(d0), D(-2))


@pytest.mark.parametrize("kw,fld", [
    ({"amount": D(0)}, "amount"),
    ({"amount": D(-1)}, "amount"),
    ({"amount": 1.5}, "amount"),
    ({"amount": D("NaN")}, "amount"),
    ({"priority": 0}, "priority"),
    ({"priority": 256}, "priority"),
    ({"priority": True}, "priority"),
    ({"expires_at": t("2025-12-31T00:00:00Z")}, "expiresAt"),
    ({"expires_at": t("2026-01-01T00:00:00Z")}, "expiresAt"),
    ({"min_rollover_amount": D(6), "max_rollover_amount": D(5)}, "minRolloverAmount"),
    ({"max_rollover_amount": D(-1)}, "maxRolloverAmount"),
    ({"effective_at": datetime(2026, 1, 1)}, "effectiveAt"),
    ({"id": ""}, "id"),
    ({"recurrence": "P1D"}, "recurrence"),
])
def test_bad_grants_are_validation_errors_naming_the_field(kw: dict[str, Any], fld: str) -> None:
    args: dict[str, Any] = {"id": "g", "amount": D(1), "effective_at": T0, "created_at": T0, **kw}
    with pytest.raises(ValidationFailed) as e:
        Grant(**args)
    assert e.value.errors[0]["field"] == fld


def test_bad_snapshots_and_runs_are_refused() -> None:
    with pytest.raises(ValidationFailed):
        Snapshot(at=T0, balances={"g": D(-1)})
    with pytest.raises(ValidationFailed):
        Snapshot(at=T0, balances={}, overage=D(-1))
    with pytest.raises(ValueError):
        run([], Snapshot.empty(T0), [], MinuteUsage({}), T0 - MIN)
    g = _grant("g", 1)
    with pytest.raises(ValueError):
        run([g, g], Snapshot.empty(T0), [], MinuteUsage({}), T0 + MIN)
    with pytest.raises(TypeError):
        run([g], Snapshot.empty(T0), [], lambda a, b: 1.0, T0 + MIN)  # type: ignore[arg-type,return-value]
