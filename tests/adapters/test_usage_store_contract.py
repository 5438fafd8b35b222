"""One contract, two implementations: the in-memory twin and chdb (the ClickHouse engine)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal, localcontext
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billow.adapters.memory import InMemoryUsageStore
from billow.domain.events import CloudEvent
from billow.domain.usage import GroupFilter, MeterValue, StoredEvent, UsageQuery, final_value
from billow.exact import EXACT
from tests.conftest import t

T0 = t("2026-03-28T22:00:00Z")


def mv(i: int, value: str, when: str, subject: str = "a", model: str = "m1", meter: str = "M1") -> MeterValue:
    return MeterValue(meter, subject, t(when), Decimal(value), value, {"model": model}, "src", str(i))


def q(ns: str, agg: str = "SUM", **kw: Any) -> UsageQuery:
    base: dict[str, Any] = dict(namespace=ns, meter_id="M1", aggregation=agg, start=None, end=None, window_size=None,
                                window_tz="UTC", subjects=None, group_by=[], by_subject=False, subject_customers=None)
    base.update(kw)
    return UsageQuery(**base)


def test_dedup_ledger(usage_store: Any, namespace: str) -> None:
    ev = CloudEvent("e1", "src", "prompt", "a", T0, {"x": 1})
    assert usage_store.present_keys(namespace, [("src", "e1")]) == set()
    usage_store.write(namespace, [mv(1, "1", "2026-03-28T22:00:00Z")], [StoredEvent(ev, T0)])
    assert usage_store.present_keys(namespace, [("src", "e1"), ("src", "e2")]) == {("src", "e1")}
    assert usage_store.present_keys("other_ns", [("src", "e1")]) == set()
    assert usage_store.valued_keys(namespace, ["M1"], T0, T0, [("src", "1"), ("src", "2")]) == {("src", "1")}
    assert usage_store.valued_keys(namespace, ["M2"], T0, T0, [("src", "1")]) == set()
    # Bounds are inclusive, and None is no bound on that side (the sink's look-up after a crash).
    later, earlier = T0 + timedelta(milliseconds=1), T0 - timedelta(milliseconds=1)
    assert usage_store.valued_keys(namespace, ["M1"], later, None, [("src", "1")]) == set()
    assert usage_store.valued_keys(namespace, ["M1"], None, earlier, [("src", "1")]) == set()
    assert usage_store.valued_keys(namespace, ["M1"], None, None, [("src", "1"), ("src", "2")]) == {("src", "1")}
    assert usage_store.valued_keys(namespace, ["M1"], earlier, None, [("src", "1")]) == {("src", "1")}


def test_aggregations_are_exact(usage_store: Any, namespace: str) -> None:
    big = "99999999999999999999.999999999999999999"  # the largest Decimal(38, 18) value
    usage_store.write(namespace, [mv(1, big, "2026-03-28T22:00:01Z"), mv(2, big, "2026-03-28T22:00:02Z"),
                                  mv(3, "0.1", "2026-03-28T22:05:00Z"), mv(4, "0.2", "2026-03-28T22:59:59.999Z")], [])
    expected = {
        "SUM": "200000000000000000000.299999999999999998",  # past Decimal128's range: no overflow
        "COUNT": "4", "MIN": "0.1", "MAX": big, "LATEST": "0.2",
        "AVG": "50000000000000000000.075",
    }
    for agg, want in expected.items():
        (row,) = usage_store.aggregate(q(namespace, agg))
        assert final_value(agg, row) == Decimal(want), agg


def test_from_to_inclusive_and_partial_minutes(usage_store: Any, namespace: str) -> None:
    usage_store.write(namespace, [mv(i, "1", w) for i, w in enumerate([
        "2026-03-28T22:00:00.000Z", "2026-03-28T22:00:30.250Z", "2026-03-28T22:01:00Z",
        "2026-03-28T22:10:59.999Z", "2026-03-28T22:11:00Z", "2026-03-28T22:11:00.001Z"])], [])

    def total(start: str, end: str) -> Decimal:
        rows = usage_store.aggregate(q(namespace, "COUNT", start=t(start), end=t(end)))
        return sum((final_value("COUNT", r) for r in rows), Decimal(0))

    assert total("2026-03-28T22:00:00Z", "2026-03-28T22:11:00Z") == 5  # `to` is inclusive
    assert total("2026-03-28T22:00:30.250Z", "2026-03-28T22:10:59.999Z") == 3
    assert total("2026-03-28T22:00:30.251Z", "2026-03-28T22:00:59.999Z") == 0
    assert total("2026-03-28T22:11:00.001Z", "2026-03-28T23:00:00Z") == 1


def test_windows_group_by_and_dst(usage_store: Any, namespace: str) -> None:
    # 2026-03-29 is 23 hours long in Berlin.
    usage_store.write(namespace, [
        mv(1, "1", "2026-03-28T22:59:00Z", model="a"), mv(2, "2", "2026-03-28T23:00:00Z", model="a"),
        mv(3, "4", "2026-03-29T21:59:59Z", model="b"), mv(4, "8", "2026-03-29T22:00:00Z", model="b", subject="z"),
    ], [])
    rows = usage_store.aggregate(q(namespace, window_size="DAY", window_tz="Europe/Berlin", group_by=["model"]))
    got = [(r.window_start, r.groups["model"], r.sum) for r in rows]
    assert got == [
        (t("2026-03-27T23:00:00Z"), "a", Decimal(1)),
        (t("2026-03-28T23:00:00Z"), "a", Decimal(2)),
        (t("2026-03-28T23:00:00Z"), "b", Decimal(4)),
        (t("2026-03-29T22:00:00Z"), "b", Decimal(8)),
    ]
    by_subject = usage_store.aggregate(q(namespace, by_subject=True, subjects=["z", "a"]))
    assert [(r.subject, r.sum) for r in by_subject] == [("a", Decimal(7)), ("z", Decimal(8))]
    cust = usage_store.aggregate(q(namespace, subject_customers={"a": "C1", "z": "C2"}, subjects=["a", "z"]))
    assert [(r.customer_id, r.sum) for r in cust] == [("C1", Decimal(7)), ("C2", Decimal(8))]


def test_group_filters(usage_store: Any, namespace: str) -> None:
    usage_store.write(namespace, [mv(i, "1", "2026-03-28T22:00:00Z", model=m) for i, m in
                                  enumerate(["gpt-4", "gpt-4o", "claude", "Claude-3", "llama"])], [])

    def count(*conj: list[GroupFilter]) -> int:
        rows = usage_store.aggregate(q(namespace, "COUNT", filters=list(conj)))
        return int(rows[0].count) if rows else 0

    f = GroupFilter
    assert count([f("model", "$eq", "claude")]) == 1
    assert count([f("model", "$like", "gpt%")]) == 2
    assert count([f("model", "$ilike", "claude%")]) == 2
    assert count([f("model", "$nin", ["llama", "claude"])]) == 3
    assert count([f("model", "$gt", "gpt")], [f("model", "$eq", "Claude-3")]) == 4
    assert count([f("model", "$eq", "x'); DROP TABLE events; --")]) == 0


def test_bounds_windows_one_value_per_segment(usage_store: Any, namespace: str) -> None:
    """Balance segments: one query gives the usage of each [bounds[i], bounds[i+1]), whole hours or not."""
    usage_store.write(namespace, [mv(i, v, w) for i, (v, w) in enumerate([
        ("1", "2026-03-28T21:59:59.999Z"), ("2", "2026-03-28T22:00:00Z"), ("4", "2026-03-28T22:06:59.999Z"),
        ("8", "2026-03-28T22:07:00Z"), ("16", "2026-03-29T00:59:00Z"), ("32", "2026-03-29T01:00:00Z")])], [])
    for bounds in (["2026-03-28T22:00:00Z", "2026-03-28T22:07:00Z", "2026-03-29T01:00:00Z"],
                   ["2026-03-28T22:00:00Z", "2026-03-28T23:00:00Z", "2026-03-29T01:00:00Z"]):
        b = [t(x) for x in bounds]
        rows = usage_store.aggregate(q(namespace, start=b[0], end=b[-1] - timedelta(milliseconds=1),
                                       window_size="BOUNDS", bounds=b))
        got = {r.window_start: r.sum for r in rows}
        if bounds[1].endswith("22:07:00Z"):
            assert got == {b[0]: Decimal(6), b[1]: Decimal(24)}
        else:
            assert got == {b[0]: Decimal(14), b[1]: Decimal(16)}


_value = st.one_of(
    st.decimals(min_value=Decimal("-1000"), max_value=Decimal("1000"), places=3, allow_nan=False),
    # the whole Decimal(38, 18) range a value may take, in every form str() gives (exponents, -0, 0E-18)
    st.integers(min_value=0, max_value=18).flatmap(lambda places: st.builds(
        lambda digits, sign: Decimal(f"{sign}{digits}E-{places}"),
        st.integers(min_value=0, max_value=10 ** (20 + places) - 1), st.sampled_from(["", "-"]))),
)
_offset = st.integers(min_value=0, max_value=3 * 24 * 3600 * 1000)
# Instants rows often share (LATEST ties: of values at one instant the largest is the latest, in every tier).
_instant = st.one_of(_offset, st.sampled_from([0, 59_999, 60_000, 3_600_000, 3_600_000 + 30_000]))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(_value, _instant, st.sampled_from("ab"), st.sampled_from(["x", "y", ""])), min_size=1, max_size=40),
       agg=st.sampled_from(["SUM", "COUNT", "AVG", "MIN", "MAX", "UNIQUE_COUNT", "LATEST"]),
       size=st.sampled_from([None, "MINUTE", "HOUR", "DAY", "MONTH"]),
       tz=st.sampled_from(["UTC", "Europe/Berlin", "Asia/Kolkata", "America/St_Johns"]),
       cut=st.tuples(_offset, _offset))
def test_twin_and_chdb_agree(chdb_store: Any, rows: list, agg: str, size: str | None, tz: str, cut: tuple[int, int]) -> None:
    import uuid

    ns = "prop_" + uuid.uuid4().hex[:12]
    twin = InMemoryUsageStore()
    vals = [MeterValue("M1", subj, T0 + timedelta(milliseconds=off), v, str(v.normalize()), {"model": model}, "p", str(i))
            for i, (v, off, subj, model) in enumerate(rows)]
    for store in (twin, chdb_store):  # in two writes, the second reversed: ties stored in either order, two parts
        store.write(ns, vals[::2], [])
        store.write(ns, vals[1::2][::-1], [])
    lo, hi = sorted(cut)
    query = q(ns, agg, window_size=size, window_tz=tz, group_by=["model"], by_subject=True,
              start=T0 + timedelta(milliseconds=lo), end=T0 + timedelta(milliseconds=hi))
    expected = [(r.window_start, r.subject, r.groups, final_value(agg, r)) for r in twin.aggregate(query)]
    actual = [(r.window_start, r.subject, r.groups, final_value(agg, r)) for r in chdb_store.aggregate(query)]
    assert actual == expected


def test_repair_keeps_whole_rollups_whole(usage_store: Any, namespace: str) -> None:
    """Repairing events whose write was not torn (or twice) changes no answer: the rebuilt cells equal the old."""
    usage_store.write(namespace, [mv(i, str(i), w, meter="M1" if i % 3 else "M2") for i, w in enumerate([
        "2026-03-28T22:00:01Z", "2026-03-28T22:00:59.999Z", "2026-03-28T22:59:00Z", "2026-03-28T23:00:00Z",
        "2026-03-28T23:30:30.500Z", "2026-03-29T01:00:00Z", "2026-03-29T01:01:00Z"])], [])

    def answers() -> list[Any]:
        return [[(r.window_start, final_value(agg, r)) for r in usage_store.aggregate(
            q(namespace, agg, meter_id=meter, window_size=size, start=start))]
            for meter in ("M1", "M2") for agg in ("SUM", "COUNT", "MIN", "MAX", "LATEST")
            for size in (None, "MINUTE", "HOUR") for start in (None, t("2026-03-28T22:00:30Z"))]

    before = answers()
    for _ in range(2):
        usage_store.repair(namespace, [("src", "1"), ("src", "3"), ("src", "4"), ("src", "nope")])
    assert answers() == before


def test_sum_meters_side_by_side(usage_store: Any, namespace: str) -> None:
    """Several SUM meters in one pass (the LLM cost report's token meters): one row per group any of them has
    values in, each meter's sum in the order asked (0 where it has none), the same groups and sums as each
    meter's own `aggregate`."""
    values = [
        mv(1, "1.5", "2026-03-28T22:00:00Z", meter="M1"), mv(2, "2", "2026-03-28T22:30:00Z", meter="M1"),
        mv(3, "0.25", "2026-03-28T22:30:00Z", meter="M2"),
        mv(4, "4", "2026-03-29T23:10:00Z", meter="M2", model="m2", subject="z"),
        mv(5, "99999999999999999999.999999999999999999", "2026-03-29T23:20:00Z", meter="M3", model="m2", subject="z"),
        mv(6, "99999999999999999999.999999999999999999", "2026-03-29T23:21:00Z", meter="M3", model="m2", subject="z"),
        mv(7, "8", "2026-03-29T23:30:00Z", meter="M4", model="m2", subject="z"),  # not asked for
        mv(8, "16", "2026-03-28T22:00:00Z", meter="M1", model="m3"),
    ]
    usage_store.write(namespace, values, [])
    mids = ["M2", "M1", "M3"]
    for kw in ({}, {"window_size": "DAY", "window_tz": "Europe/Berlin"}, {"window_size": "HOUR", "by_subject": True},
               {"subject_customers": {"a": "C1", "z": "C2"}, "subjects": ["a", "z"], "window_size": "DAY"},
               {"filters": [[GroupFilter("model", "$ne", "m3")]], "start": t("2026-03-28T22:00:00Z"),
                "end": t("2026-03-29T23:20:59.999Z"), "window_size": "MINUTE"}):
        query = q(namespace, group_by=["model"], **kw)
        want: dict[tuple[Any, ...], list[Decimal]] = {}
        for n, mid in enumerate(mids):
            for r in usage_store.aggregate(q(namespace, meter_id=mid, group_by=["model"], **kw)):
                key = (r.window_start, r.subject, r.customer_id, (r.groups["model"],))
                want.setdefault(key, [Decimal(0)] * len(mids))[n] = r.sum
        got = usage_store.sum_meters(query, mids)
        order = sorted(want, key=lambda k: (k[0] or T0, k[1] or "", k[2] or "", k[3]))
        assert got == [(*k, *want[k]) for k in order], kw
        assert want, kw


def test_rated_sums_price_rows_and_add_them_up_as_the_reference_does(usage_store: Any, namespace: str) -> None:
    """rated_sums (the LLM cost report by customer, issue 17 item 6) returns what domain.usage.rate_rows makes of
    sum_meters' rows: rows priced per (window, first group value), exact, added up to lines of the shown groups in
    the order of their first row; rows without rates, with a quantity below zero where it may not be, or with a
    quantity where a rate is missing, come back one by one. Rates are asked for once per rate key. The same with
    the rate keys looked for among one meter's values (key_meter: M1 has every key, M2 lacks some) and with lines
    over every window (per_window False: rated per window, added up over all; unrated rows keep their window)."""
    from billow.domain.usage import Rating, rate_rows

    big = "99999999999999999999.999999999999999999"
    values = []
    for i, (meter, value, when, subject, model, team) in enumerate([
            ("M1", "1000", "2026-03-28T22:00:00Z", "a", "m1", "x"), ("M2", "100", "2026-03-28T22:10:00Z", "a", "m1", "x"),
            ("M1", "7", "2026-03-28T22:20:00Z", "a", "m2", "x"), ("M1", "3.5", "2026-03-28T23:05:00Z", "z", "m2", "y"),
            ("M1", "5", "2026-03-29T01:00:00Z", "z", "m1", "y"), ("M2", "9", "2026-03-29T01:00:00Z", "z", "m1", "y"),
            ("M1", "1", "2026-03-29T01:30:00Z", "z", "m3", "y"),  # no rates for m3
            ("M1", "2", "2026-03-29T02:00:00Z", "a", "m2", "y"), ("M2", "4", "2026-03-29T02:00:00Z", "a", "m2", "y"),
            ("M2", "0.000000000000000001", "2026-03-28T22:30:00Z", "a", "m2", "z"),  # M2 has no m2 rate
            ("M1", big, "2026-03-29T03:00:00Z", "a", "m1", "x"), ("M1", big, "2026-03-29T03:01:00Z", "a", "m1", "x")]):
        values.append(MeterValue(meter, subject, t(when), Decimal(value), value, {"model": model, "team": team},
                                 "src", str(i)))
    usage_store.write(namespace, values, [])
    rates = {"m1": (Decimal("0.0000025"), Decimal("1E-28")), "m2": (Decimal("0.3"), None)}
    for kw in ({"window_size": "DAY"}, {"window_size": "HOUR", "by_subject": True},
               {"window_size": "DAY", "subject_customers": {"a": "C1", "z": "C2"}, "subjects": ["a", "z"]}):
        for shown, fine, key_meter, per_window in (((), False, None, True), ((1,), False, None, True),
                                                   ((1,), True, None, True), ((1,), False, 0, True),
                                                   ((1,), False, 1, True), ((), False, 1, False),
                                                   ((1,), False, None, False), ((1,), True, 1, False)):
            asked: list[Any] = []

            def rate(start: Any, key: tuple[str, ...], fine: bool = fine, asked: list[Any] = asked) -> Any:
                asked.append((start, key))
                r = rates.get(key[0])
                return (r[0], Decimal("1E-40")) if fine and r and r[1] else r

            # quantities: M1 - M2 (never below zero), M2
            rating = Rating(by=1, forms=((1, -1), (0, 1)), nonnegative=(0,), shown=shown, rates=rate,
                            key_meter=key_meter, per_window=per_window)
            query = q(namespace, group_by=["model", "team"], **kw)
            got = usage_store.rated_sums(query, ["M1", "M2"], rating)
            assert len(asked) == len(set(asked)), kw
            want = rate_rows(usage_store.sum_meters(query, ["M1", "M2"]), rating)
            assert got == want, (kw, shown, fine, key_meter, per_window)
            assert got.unrated and got.lines, kw
            if not per_window:
                assert all(line.window_start is None for line in got.lines), kw
                assert all(row[0] is not None for row in got.unrated), kw
    day = rate_rows(usage_store.sum_meters(q(namespace, group_by=["model", "team"], window_size="DAY"), ["M1", "M2"]),
                    Rating(by=1, forms=((1, -1), (0, 1)), nonnegative=(0,), shown=(), rates=lambda s, k: rates.get(k[0])))
    first = day.lines[0]  # 28 March: m1/x (900 x 0.0000025 + 100 x 1E-28); m2/x (7 x 0.3), m2/y (3.5 x 0.3)
    assert (first.rate_keys, first.sums, first.amounts) == (
        [("m1",), ("m2",)], [Decimal("1010.5"), Decimal(100)], [Decimal("3.15225"), Decimal("1E-26")])
    # m2/z has an M2 quantity and m2 no second rate; on 29 March m1/y's and m2/y's M1 - M2 are below zero; m3 has
    # no rates
    assert [r[3] for r in day.unrated] == [("m2", "z"), ("m1", "y"), ("m2", "y"), ("m3", "y")]
    # Over every window: the rated rows of both days added up per team (shown), each day priced on its own
    span = rate_rows(usage_store.sum_meters(q(namespace, group_by=["model", "team"], window_size="DAY"), ["M1", "M2"]),
                     Rating(by=1, forms=((1, -1), (0, 1)), nonnegative=(0,), shown=(1,),
                            rates=lambda s, k: rates.get(k[0]), per_window=False))
    with localcontext(EXACT):  # x: m1 900 (28th) + 2 x big (29th) at 0.0000025, m2 7 at 0.3; y: m2 3.5 (28th)
        x = (Decimal(900) + 2 * Decimal(big)) * Decimal("0.0000025") + Decimal("2.1")
    assert [(ln.window_start, ln.groups, ln.rate_keys, ln.amounts) for ln in span.lines] == [
        (None, ("x",), [("m1",), ("m2",)], [x, Decimal("1E-26")]), (None, ("y",), [("m2",)], [Decimal("1.05"), 0])]
    assert [(r[0], r[3]) for r in span.unrated] == [(t("2026-03-28T00:00:00Z"), ("m2", "z")),
                                                    (t("2026-03-29T00:00:00Z"), ("m1", "y")),
                                                    (t("2026-03-29T00:00:00Z"), ("m2", "y")),
                                                    (t("2026-03-29T00:00:00Z"), ("m3", "y"))]


def test_line_events_and_digests_issue21(usage_store: Any, namespace: str) -> None:
    """Lineage (issue 21): the values behind a line in [start, end) in (source, id) order with their ingest time,
    paged by cursor; the digest per group (count, exact sum, SHA-256 over the sorted keys) is the domain's."""
    from billow.domain.lineage import digest, key_hash

    ing = t("2026-03-29T00:00:00Z")
    vals = [mv(3, "0.1", "2026-03-28T22:00:00Z"), mv(1, "0.2", "2026-03-28T22:30:00.5Z", model="m2"),
            mv(2, "1", "2026-03-28T22:59:59.999Z", subject="b"), mv(4, "5", "2026-03-28T23:00:00Z"),
            mv(5, "7", "2026-03-28T22:10:00Z", subject="c")]
    usage_store.write(namespace, vals, [StoredEvent(CloudEvent(v.event_id, "src", "prompt", v.subject, v.time, {}), ing)
                                        for v in vals])
    s, e = T0, t("2026-03-28T23:00:00Z")
    rows = usage_store.line_events(namespace, "M1", ["a", "b"], s, e, [], None, None)
    assert [(r.id, r.subject, r.value, r.ingested_at) for r in rows] == [
        ("1", "a", Decimal("0.2"), ing), ("2", "b", Decimal(1), ing), ("3", "a", Decimal("0.1"), ing)]
    page = usage_store.line_events(namespace, "M1", ["a", "b"], s, e, [], ("src", "1"), 1)
    assert [r.id for r in page] == ["2"]
    only_m1 = usage_store.line_events(namespace, "M1", ["a", "b"], s, e, [[GroupFilter("model", "$eq", "m1")]], None, None)
    assert [r.id for r in only_m1] == ["2", "3"]
    got = usage_store.line_digests(namespace, "M1", s, e, [], {"a": "cust1", "b": "cust1", "c": "cust2"})
    assert got["cust1"] == digest(rows)
    assert (got["cust1"].events, got["cust1"].sum) == (3, Decimal("1.3"))
    assert got["cust1"].hash == key_hash([("src", "1"), ("src", "2"), ("src", "3")])
    assert got["cust2"].events == 1
    assert usage_store.line_digests(namespace, "M1", s, e, [], {"zz": "x"}) == {}


def test_count_events_per_subject_since_an_instant(usage_store: Any, namespace: str) -> None:
    """Issue 16 (the debug metrics): stored events per subject whose time is at or after the instant; values alone
    (no raw event) and other namespaces do not count."""
    evs = [StoredEvent(CloudEvent(f"c{i}", "src", "prompt", subject, t(when), {}), T0) for i, (subject, when) in enumerate([
        ("a", "2026-03-28T21:59:59.999Z"), ("a", "2026-03-28T22:00:00Z"), ("a", "2026-03-28T23:00:00Z"),
        ("b", "2026-03-29T01:00:00Z")])]
    usage_store.write(namespace, [mv(9, "1", "2026-03-28T22:30:00Z", subject="c")], evs)
    usage_store.write("other_" + namespace, [], evs)
    assert usage_store.count_events(namespace, T0) == {"a": 2, "b": 1}
    assert usage_store.count_events(namespace, t("2026-03-30T00:00:00Z")) == {}


def test_rated_sums_rate_usage_written_while_they_run(usage_store: Any, namespace: str) -> None:
    """Usage of a new (window, group) written after the store found the rate keys, before it priced the rows (ingest
    goes on while a report runs), is priced like the rest (or not read at all, by a store that read the rows first),
    never listed as unpriced for want of rates it was not asked for."""
    from billow.domain.usage import Rating, rate_rows

    usage_store.write(namespace, [mv(1, "10", "2026-03-28T22:00:00Z")], [])
    late = [mv(2, "4", "2026-03-29T09:00:00Z", model="m9")]

    def rate(start: Any, key: tuple[str, ...]) -> Any:
        if late:  # the first call: a write lands between the two reads
            usage_store.write(namespace, [late.pop()], [])
        return (Decimal("0.5"),)

    rating = Rating(by=1, forms=((1,),), nonnegative=(0,), shown=(), rates=rate)
    query = q(namespace, group_by=["model"], window_size="DAY")
    got = usage_store.rated_sums(query, ["M1"], rating)
    assert got.unrated == []
    assert [(line.rate_keys, line.amounts) for line in got.lines][:1] == [([("m1",)], [Decimal(5)])]
    assert all(line.amounts == [line.sums[0] * Decimal("0.5")] for line in got.lines)
    assert len(got.lines) == 1 or got == rate_rows(usage_store.sum_meters(query, ["M1"]), rating)


def test_bounded_usage_is_each_segment_exactly(usage_store: Any, namespace: str) -> None:
    """Issue 17 item 5: an entitlement check's one usage read. SUM or COUNT of the subjects' usage in each
    [bounds[i], bounds[i+1]): bounds inclusive at the start and exclusive at the end to the millisecond, mid-minute
    ends and whole-hour and whole-minute inner bounds, group-by filters, other subjects and meters left out, exact
    past Decimal128 (the largest Decimal(38, 18) plus more)."""
    big = "99999999999999999999.999999999999999999"
    usage_store.write(namespace, [
        mv(1, "5", "2026-03-28T21:59:59.999Z"), mv(2, "1.1", "2026-03-28T22:00:30.250Z"),
        mv(3, "2", "2026-03-28T22:00:30.249Z"), mv(4, "0.3", "2026-03-28T22:59:59.999Z"),
        mv(5, "4", "2026-03-28T23:00:00Z"), mv(6, "0.05", "2026-03-28T23:16:59.999Z"),
        mv(7, "7", "2026-03-28T23:17:00Z"), mv(8, big, "2026-03-29T00:00:00Z"),
        mv(9, "3", "2026-03-29T00:41:12.499Z"), mv(10, "8", "2026-03-29T00:41:12.500Z"),
        mv(11, "16", "2026-03-28T23:30:00Z", subject="b"), mv(12, "32", "2026-03-28T23:40:00Z", model="m2"),
        mv(13, "64", "2026-03-28T23:30:00Z", meter="M2")], [])
    bounds = [t("2026-03-28T22:00:30.250Z"), t("2026-03-28T23:00:00Z"), t("2026-03-28T23:17:00Z"),
              t("2026-03-29T00:41:12.500Z")]
    m1 = [[GroupFilter("model", "$eq", "m1")]]
    assert usage_store.bounded_usage(namespace, "M1", "SUM", ["a"], m1, bounds) == [
        Decimal("1.4"), Decimal("4.05"), Decimal("100000000000000000009.999999999999999999")]
    assert usage_store.bounded_usage(namespace, "M1", "COUNT", ["a"], m1, bounds) == [2, 2, 3]
    assert usage_store.bounded_usage(namespace, "M1", "SUM", ["a", "b"], [], bounds) == [
        Decimal("1.4"), Decimal("4.05"), Decimal("100000000000000000057.999999999999999999")]
    # Whole-hour inner bounds: the hours in between from the hourly rollup (the subject-first one on ClickHouse).
    assert usage_store.bounded_usage(namespace, "M1", "SUM", ["a"], m1, [bounds[0], bounds[1], bounds[3]]) == [
        Decimal("1.4"), Decimal("100000000000000000014.049999999999999999")]
    # A segment without usage is 0; a later bound adds one; no segment, no value; no subject, nothing.
    assert usage_store.bounded_usage(namespace, "M1", "SUM", ["b"], [], [*bounds, t("2026-03-30T00:00:00Z")]) == [
        0, 0, 16, 0]
    assert usage_store.bounded_usage(namespace, "M1", "SUM", ["a"], [], bounds[:1]) == []
    assert usage_store.bounded_usage(namespace, "M1", "SUM", [], [], bounds) == [0, 0, 0]


def test_bounded_usage_over_thousands_of_bounds(usage_store: Any, namespace: str) -> None:
    """A check's first read since measureUsageFrom has a bound at every period start: an hourly usage period a
    quarter back is ~2,000 bounds, a daily one years back as many. Each segment is still its usage, exactly
    (on ClickHouse the read was refused, AST too deep, past ~1,000 bounds: every check of such an entitlement
    answered 500, and no snapshot was ever saved to shorten the next one). Whole-hour bounds, whole-minute ones
    and bounds inside a minute (the raw values), each thousands deep."""
    start = t("2026-01-01T00:00:00Z")
    hours = [start + timedelta(hours=h) for h in range(2_000)]
    values = [mv(h, f"{h % 7}.5", (hours[h] + timedelta(minutes=h % 60, milliseconds=h)).isoformat())
              for h in range(0, 2_000, 3)]
    usage_store.write(namespace, values, [])

    def expected(bounds: list[Any]) -> list[Decimal]:
        return [sum((v.value for v in values if lo <= v.time < hi), Decimal(0)) for lo, hi in zip(bounds, bounds[1:], strict=False)]

    # an hourly period's bounds, the first and last mid-minute (a snapshot's instant, now)
    hourly = [start + timedelta(seconds=7.25), *hours[1:], hours[-1] + timedelta(minutes=30, seconds=1)]
    got = usage_store.bounded_usage(namespace, "M1", "SUM", ["a"], [], hourly)
    assert got == expected(hourly) and sum(got) == sum(v.value for v in values[1:])  # the first is before the start
    assert usage_store.bounded_usage(namespace, "M1", "COUNT", ["a"], [], hourly) == [
        Decimal(len([v for v in values if lo <= v.time < hi])) for lo, hi in zip(hourly, hourly[1:], strict=False)]
    minutely = [start + timedelta(minutes=m) for m in range(1_500)]
    assert usage_store.bounded_usage(namespace, "M1", "SUM", ["a"], [], minutely) == expected(minutely)
    inside = [start + timedelta(milliseconds=ms) for ms in range(0, 1_500 * 40, 40)]  # every 40 ms of one minute
    assert usage_store.bounded_usage(namespace, "M1", "SUM", ["a"], [], inside) == expected(inside)


def test_bounded_usage_of_a_customer_with_thousands_of_subjects(usage_store: Any, namespace: str) -> None:
    """An entitlement check counts every subject of the customer. 5,000 subjects with long non-ASCII keys: as
    literals in each branch of the statement they passed ClickHouse's 256 KiB (max_query_size) and the check
    answered 500; now they are one parameter. Subjects outside the list count nothing."""
    subjects = [f"user-{'é' * 40}-{i}" for i in range(5_000)]
    usage_store.write(namespace, [mv(i, f"{i % 5}.25", "2026-03-28T22:10:00Z", subject=subjects[i * 97])
                                  for i in range(50)]
                      + [mv(99, "1000", "2026-03-28T22:10:00Z", subject="someone-else")], [])
    bounds = [t("2026-03-28T21:30:00Z"), t("2026-03-28T22:00:00Z"), t("2026-03-28T23:00:00Z"),
              t("2026-03-28T23:10:30Z")]
    want = sum(Decimal(f"{i % 5}.25") for i in range(50))
    assert usage_store.bounded_usage(namespace, "M1", "SUM", subjects, [], bounds) == [0, want, 0]
    assert usage_store.bounded_usage(namespace, "M1", "COUNT", subjects, [], bounds) == [0, 50, 0]
    assert usage_store.bounded_usage(namespace, "M1", "SUM", [*subjects, "someone-else"], [], bounds) == [
        0, want + 1000, 0]


def test_window_ends_are_the_next_window_starts_by_the_stores_own_calendar(usage_store: Any, namespace: str) -> None:
    """Each store draws calendar windows with its own time-zone data (chdb's and Python's differ on Vancouver from
    November 2026): the end it gives a window is where its next window begins, through DST and that change."""
    start = t("2026-10-01T12:00:00Z")
    usage_store.write(namespace, [mv(i, "1", (start + timedelta(hours=8 * i)).isoformat()) for i in range(3 * 100)], [])
    for tz in ("America/Vancouver", "Europe/Berlin", "Asia/Kathmandu"):
        for size in ("DAY", "MONTH"):
            starts = [r.window_start for r in usage_store.aggregate(q(namespace, window_size=size, window_tz=tz))]
            ends = usage_store.window_ends(starts, size, tz)
            assert [ends[s] for s in starts[:-1]] == starts[1:], (tz, size)
            assert ends[starts[-1]] > starts[-1]


def test_window_starts_are_where_the_store_puts_usage(usage_store: Any, namespace: str) -> None:
    """The windows a store lists over a range (an entitlement history's) are those its `aggregate` groups usage by:
    every window with usage is listed, the list begins with the window holding the range's start and each next one
    is the previous one's end (`window_ends`), through DST and Vancouver's change of November 2026 in chdb's data."""
    start = t("2026-09-15T00:30:00Z")
    usage_store.write(namespace, [mv(i, "1", (start + timedelta(hours=5 * i)).isoformat()) for i in range(5 * 24 * 4)], [])
    lo, hi = t("2026-09-20T10:00:00Z"), t("2026-12-05T03:00:00.5Z")
    for tz in ("America/Vancouver", "Europe/Berlin", "Asia/Kathmandu", "Australia/Lord_Howe"):
        for size in ("DAY", "MONTH"):
            listed = usage_store.window_starts(lo, hi, size, tz)
            used = [r.window_start for r in usage_store.aggregate(q(namespace, window_size=size, window_tz=tz,
                                                                  start=lo, end=hi))]
            assert set(used) <= set(listed) and listed[0] <= lo < listed[1] and listed[-1] < hi, (tz, size)
            ends = usage_store.window_ends(listed, size, tz)
            assert [ends[s] for s in listed[:-1]] == listed[1:] and ends[listed[-1]] >= hi, (tz, size)


@pytest.mark.parametrize("day", ["2026-04-04", "2026-10-03"])
def test_hour_windows_through_a_half_hour_dst_change_by_the_stores_own_calendar(usage_store: Any, namespace: str,
                                                                               day: str) -> None:
    """Lord Howe's clocks move by half an hour: chdb keeps a local day's first offset for its hours all that day
    (its last hour is then half an hour), Python aligns each hour to the offset of its own time. Each store lists
    the hours where its `aggregate` puts usage, and ends each where its next begins."""
    start = t(day + "T00:00:00Z")
    usage_store.write(namespace, [mv(i, "1", (start + timedelta(minutes=15 * i)).isoformat()) for i in range(4 * 72)], [])
    lo, hi = start, start + timedelta(days=3)
    for tz in ("Australia/Lord_Howe", "Asia/Kathmandu", "Europe/Berlin"):
        listed = usage_store.window_starts(lo, hi, "HOUR", tz)
        rows = usage_store.aggregate(q(namespace, window_size="HOUR", window_tz=tz, start=lo, end=hi))
        assert [r.window_start for r in rows] == listed, tz  # every window has usage: every quarter hour has an event
        ends = usage_store.window_ends(listed, "HOUR", tz)
        assert [ends[s] for s in listed[:-1]] == listed[1:], tz
        for r in rows[1:-1]:
            assert r.sum == (ends[r.window_start] - r.window_start) / timedelta(minutes=15), (tz, r)
        # a few windows far apart: their ends are the same
        later = usage_store.window_starts(t("2030-01-01T00:00:00Z"), t("2030-01-01T03:00:00Z"), "HOUR", tz)[1]
        far = [listed[0], *listed[10::40], later]
        assert usage_store.window_ends(far, "HOUR", tz) == {**{s: ends[s] for s in far[:-1]},
                                                            later: later + timedelta(hours=1)}, tz


def _each_world(usage_store: Any, namespace: str) -> None:
    """Values of subjects a, b, c on models m1, m2, m3 and none, over two hours with partial minutes at both ends."""
    vals = []
    for i in range(48):
        when = T0 + timedelta(minutes=i * 3, seconds=i % 7, milliseconds=i * 37 % 1000)
        model = ("m1", "m2", "m3", None)[i % 4]
        vals.append(MeterValue("M1", "abc"[i % 3], when, Decimal(f"{i % 9}.{i % 10}5"), f"u{i % 5}",
                               {"model": model} if model else {}, "src", f"x{i}"))
    usage_store.write(namespace, vals, [])


FILTER_SETS = [
    [], [[GroupFilter("model", "$eq", "m1")]], [[GroupFilter("model", "$in", ["m1", "m2"])]],
    [[GroupFilter("model", "$ne", "m1")]], [[GroupFilter("model", "$like", "m%")]],
    [[GroupFilter("model", "$eq", "m1")], [GroupFilter("model", "$eq", "m3")]],  # an OR
    [[GroupFilter("subject", "$eq", "b"), GroupFilter("model", "$nin", ["m2"])]],  # an AND with the subject
    [[GroupFilter("model", "$eq", "m9")]],  # nothing
    [[GroupFilter("model", "$in", ["m3", "m2"])], [GroupFilter("model", "$eq", "m3")]],  # overlapping values
    [[GroupFilter("model", "$in", [])]],  # nothing
    [[GroupFilter("model", "$eq", "")]],  # values without a model
]


def test_aggregate_each_is_aggregate_once_per_filter_set(usage_store: Any, namespace: str) -> None:
    """The billing run's one read of many features of a meter: each set's rows are exactly `aggregate`'s with that
    set's filters, for every aggregation and grouping (by subject, by customer, by a group key, per window), the span
    cutting minutes at both ends; with no unfiltered set the values are read through the sets' OR."""
    from dataclasses import replace

    _each_world(usage_store, namespace)
    s, e = T0 + timedelta(seconds=30), T0 + timedelta(minutes=121, milliseconds=500)
    shapes = [dict(subjects=["a", "b", "c"], by_subject=True), dict(subjects=["a", "b"], by_subject=True),
              dict(subjects=["a", "b", "c"], subject_customers={"a": "k1", "b": "k1", "c": "k2"}),
              dict(group_by=["model"], window_size="HOUR")]
    for agg in ("SUM", "COUNT", "UNIQUE_COUNT", "LATEST", "AVG", "MIN", "MAX"):
        for shape in shapes:
            query = q(namespace, agg, start=s, end=e, **shape)
            each = [usage_store.aggregate(replace(query, filters=f)) for f in FILTER_SETS]
            assert usage_store.aggregate_each(query, FILTER_SETS) == each, (agg, shape)
            assert usage_store.aggregate_each(query, FILTER_SETS[1:]) == each[1:], (agg, shape)  # read through the OR
    by_subject_sets = [[[GroupFilter("subject", "$eq", "a")]], [[GroupFilter("subject", "$in", ["a", "c"])]],
                       [[GroupFilter("model", "$eq", "m1")]]]
    query = q(namespace, "SUM", start=s, end=e, subjects=["a", "b", "c"], by_subject=True)
    assert usage_store.aggregate_each(query, by_subject_sets) == [
        usage_store.aggregate(replace(query, filters=f)) for f in by_subject_sets]
    # Checked by hand once: SUM by subject of model m1 = values i = 0, 4, ..., 40 (i % 4 == 0) inside the span.
    (_, m1, *_) = usage_store.aggregate_each(q(namespace, "SUM", start=s, end=e, subjects=["a", "b", "c"],
                                               by_subject=True), FILTER_SETS)
    want: dict[str, Decimal] = {}
    for i in range(0, 48, 4):
        when = T0 + timedelta(minutes=i * 3, seconds=i % 7, milliseconds=i * 37 % 1000)
        if s <= when <= e:
            want["abc"[i % 3]] = want.get("abc"[i % 3], Decimal(0)) + Decimal(f"{i % 9}.{i % 10}5")
    assert {r.subject: r.sum for r in m1} == want


def test_line_digests_each_is_line_digests_once_per_filter_set(usage_store: Any, namespace: str) -> None:
    _each_world(usage_store, namespace)
    s, e = T0 + timedelta(seconds=30), T0 + timedelta(minutes=121, milliseconds=500)
    groups = {"a": "k1", "b": "k1", "c": "k2"}
    for sets in (FILTER_SETS, FILTER_SETS[1:]):
        got = usage_store.line_digests_each(namespace, "M1", s, e, sets, groups)
        assert got == [usage_store.line_digests(namespace, "M1", s, e, f, groups) for f in sets]
    assert usage_store.line_digests_each(namespace, "M1", s, e, FILTER_SETS[:2], {}) == [{}, {}]
