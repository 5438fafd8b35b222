"""An entitlement whose usage period is short beside its age: an hourly period counted from 45 days back has over
a thousand resets since measureUsageFrom. Found from outside: its first check answered 500 (the usage read, one
bound per reset, nested past ClickHouse's AST depth limit), and had it answered, every later check would have run
the engine and read usage from measureUsageFrom again, more each hour: snapshots were only taken at the last reset,
which for a period shorter than the snapshot grace (an hour) is never old enough. Now a check takes its snapshot at
the latest reset older than the grace, and the next check reads from there."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from tests.conftest import t
from tests.entitlements.conftest import Billow

PATH = "/api/v1/subjects/customer_1/entitlements"


def _hourly(b: Billow, measure_from: str = "2026-01-01T00:00:00Z") -> None:
    b.ok("POST", "/api/v1/features", {"key": "ai_tokens", "name": "AI tokens", "meterSlug": "tokens"})
    b.clock.set("2026-02-14T12:30:00Z")
    b.ok("POST", PATH, {"type": "metered", "featureKey": "ai_tokens", "issueAfterReset": 100,
                        "measureUsageFrom": measure_from,
                        "usagePeriod": {"interval": "PT1H", "anchor": "2026-01-01T00:00:00Z"}})
    # Usage in earlier hours (each its own period: it never reaches this one) and in the current hour.
    start = t("2026-01-01T00:00:00Z")
    earlier = [("prompt", "customer_1", (start + timedelta(hours=h, minutes=h % 60)).isoformat(), {"tokens": "7"})
               for h in range(0, 45 * 24, 5)]
    b.send_events(*earlier)  # late usage, stored a while before the checks (a snapshot computed since holds)
    b.clock.set("2026-02-14T12:37:00Z")
    for tokens, at in (("3", "2026-02-14T11:59:59.999Z"), ("2.5", "2026-02-14T12:00:00Z"),
                       ("1.25", "2026-02-14T12:36:59.999Z"), ("64", "2026-02-14T12:37:00Z")):
        b.usage(tokens, at)


def test_an_hourly_period_counted_from_weeks_back_is_checked_and_then_read_from_its_snapshot(
        billow: Billow, monkeypatch: Any) -> None:
    b = billow
    _hourly(b)
    b.c.balance_cache = None  # Lambda: every check reads the snapshot and the usage since
    want = {"hasAccess": True, "balance": 96.25, "usage": 3.75, "overage": 0, "totalAvailableGrantAmount": 100}
    assert b.value("customer_1", "ai_tokens") == want  # the first check: ~1,080 resets since measureUsageFrom
    bounds_read: list[list[Any]] = []
    store = b.c.usage
    real = store.bounded_usage
    monkeypatch.setattr(store, "bounded_usage", lambda ns, mid, agg, subjects, filters, bounds:
                        bounds_read.append(list(bounds)) or real(ns, mid, agg, subjects, filters, bounds))
    assert b.value("customer_1", "ai_tokens") == want
    # From the snapshot at 11:00, the latest reset an hour old (the last one, 12:00, is not yet): 11:00, 12:00, now.
    assert bounds_read == [[t("2026-02-14T11:00:00Z"), t("2026-02-14T12:00:00Z"), t("2026-02-14T12:37:00Z")]]
    b.clock.set("2026-02-14T13:01:00Z")  # the next period (the 64 at 12:37 was the last one's); 12:00 is an hour old
    assert b.value("customer_1", "ai_tokens") == {**want, "balance": 100, "usage": 0}
    assert bounds_read[-1] == [t(f"2026-02-14T{hm}:00Z") for hm in ("11:00", "12:00", "13:00", "13:01")]
    b.clock.set("2026-02-14T14:30:00Z")
    b.usage("0.5", "2026-02-14T14:00:00Z")
    assert b.value("customer_1", "ai_tokens") == {**want, "balance": 99.5, "usage": 0.5}
    # from the snapshot the last check took at 12:00; this one takes one at 13:00
    assert bounds_read[-1] == [t(f"2026-02-14T{hm}:00Z") for hm in ("12:00", "13:00", "14:00", "14:30")]
    assert b.value("customer_1", "ai_tokens") == b.fresh_value("customer_1", "ai_tokens")


def test_late_usage_before_the_snapshot_is_counted(billow: Billow) -> None:
    """The snapshot a check takes at a reset before the last one is dropped by usage arriving late for a time
    before it, as the last reset's always was: the next check counts that usage. Overage carries over resets here,
    so usage in an earlier period shows in this one."""
    b = billow
    _hourly(b)
    b.ok("PUT", PATH + "/ai_tokens/override", {"type": "metered", "featureKey": "ai_tokens", "issueAfterReset": 10,
                                                "preserveOverageAtReset": True, "measureUsageFrom": "2026-02-14T09:00:00Z",
                                                "usagePeriod": {"interval": "PT1H", "anchor": "2026-01-01T00:00:00Z"}})
    b.c.balance_cache = None
    assert b.value("customer_1", "ai_tokens") == {  # 10 an hour, 3 in the 11:00 period, 3.75 in this one
        "hasAccess": True, "balance": 6.25, "usage": 3.75, "overage": 0, "totalAvailableGrantAmount": 10}
    b.usage("25", "2026-02-14T10:30:00Z")  # late: more than an hour before the clock, before the 11:00 snapshot
    # 15 over in the 10:00 period, carried: 5 still over after 11:00's 10, 8 after its 3; 2 left at 12:00, 1.75 over
    assert b.value("customer_1", "ai_tokens") == {
        "hasAccess": False, "balance": 0, "usage": 3.75, "overage": 1.75, "totalAvailableGrantAmount": 2}


def test_distinct_and_latest_meters_over_weeks_of_hourly_periods_read_usage_once_or_twice(
        billow: Billow, monkeypatch: Any) -> None:
    """A UNIQUE_COUNT or LATEST value does not add up across segments: each segment's usage is what it adds to its
    period's value so far. That was one usage query per period (two per segment after a mid-period grant), so a
    first check over ~1,080 hourly periods made ~1,080 queries: 6-8 s on chdb, and a year of hourly periods would
    pass API Gateway's 29 s on every check, never saving the snapshot that shortens the next. Now the spans between
    neighbouring bounds are one windowed query, and so is a span across a mid-period bound (the grant at 12:20),
    which was read on its own: each window of the distinct users counts from its period's start, and a span's
    value is that of its last window with usage."""
    b = billow
    for agg, slug in (("UNIQUE_COUNT", "users"), ("LATEST", "gauge")):
        b.ok("POST", "/api/v1/meters", {"slug": slug, "eventType": slug, "aggregation": agg, "valueProperty": "$.v"})
        b.ok("POST", "/api/v1/features", {"key": slug, "name": slug, "meterSlug": slug})
    b.clock.set("2026-02-14T12:30:00Z")
    start = t("2026-01-01T00:00:00Z")
    for slug in ("users", "gauge"):
        b.ok("POST", PATH, {"type": "metered", "featureKey": slug, "issueAfterReset": 100,
                            "measureUsageFrom": "2026-01-01T00:00:00Z",
                            "usagePeriod": {"interval": "PT1H", "anchor": "2026-01-01T00:00:00Z"}})
        b.ok("POST", f"{PATH}/{slug}/grants", {"amount": 10, "priority": 5, "effectiveAt": "2026-02-14T12:20:00Z",
                                               "expiration": {"duration": "DAY", "count": 1}})
        earlier = [(slug, "customer_1", (start + timedelta(hours=h, minutes=7)).isoformat(), {"v": f"{h % 9}"})
                   for h in range(0, 44 * 24 + 12, 4)]  # through 08:07 today
        now = [(slug, "customer_1", f"2026-02-14T12:0{i}:00Z", {"v": f"{i + 1}"}) for i in range(5)]
        b.send_events(*earlier, *now, (slug, "customer_1", "2026-02-14T12:25:00Z", {"v": "2"}),
                      (slug, "customer_1", "2026-02-14T12:26:00Z", {"v": "9"}))
    b.clock.set("2026-02-14T12:37:00Z")
    b.c.balance_cache = None
    reads: list[str] = []
    store = b.c.usage
    for name in ("aggregate", "bounded_usage"):
        real = getattr(store, name)
        monkeypatch.setattr(store, name, lambda *a, _real=real, _name=name, **k: reads.append(_name) or _real(*a, **k))
    # users 1..5 before the grant, then 9 new: 6 in the period; the gauge stands at 9 (2 then 9 after the grant)
    # one read: [12:00, 12:37) is its last window with usage (the users: counted from the period's start)
    for slug, used in (("users", 6), ("gauge", 9)):
        reads.clear()
        got = b.value("customer_1", slug)
        assert got == {"hasAccess": True, "balance": 110 - used, "usage": used, "overage": 0,
                       "totalAvailableGrantAmount": 110}, slug
        assert reads == ["aggregate"], (slug, len(reads))


def test_a_grant_recurring_every_minute_is_checked(billow: Billow, monkeypatch: Any) -> None:
    """OpenMeter takes any positive recurrence: a grant recurring every minute, two weeks into a monthly period, puts
    ~19,000 bounds in the check's usage read. Spelled out as comparisons that statement passed ClickHouse's 256 KiB
    (max_query_size) and the check answered 500 on chdb; it now sums by cell."""
    b = billow
    b.ok("POST", "/api/v1/features", {"key": "ai_tokens", "name": "AI tokens", "meterSlug": "tokens"})
    b.clock.set("2026-02-01T00:00:00Z")
    b.ok("POST", PATH, {"type": "metered", "featureKey": "ai_tokens", "measureUsageFrom": "2026-02-01T00:00:00Z",
                        "usagePeriod": {"interval": "MONTH", "anchor": "2026-01-01T00:00:00Z"}})
    for every in ("PT1M", "PT5M"):
        b.ok("POST", PATH + "/ai_tokens/grants", {
            "amount": 1, "priority": 1, "effectiveAt": "2026-02-01T00:00:00Z", "expiration": {"duration": "YEAR", "count": 1},
            "recurrence": {"interval": every, "anchor": "2026-02-01T00:00:00Z"}})
    b.usage("3", "2026-02-10T00:00:30Z")
    b.usage("0.25", "2026-02-14T12:36:00Z")
    b.clock.set("2026-02-14T12:36:30Z")
    b.c.balance_cache = None
    read: list[int] = []
    real = b.c.usage.bounded_usage
    monkeypatch.setattr(b.c.usage, "bounded_usage", lambda *a: read.append(len(a[-1])) or real(*a))
    assert b.value("customer_1", "ai_tokens") == {
        "hasAccess": True, "balance": 1.75, "usage": 3.25, "overage": 0, "totalAvailableGrantAmount": 5}
    assert read and read[0] > 19_000, read
