"""Issue 17: meter queries read the rollups in few branches (the partial hours at both ends of a range in one read of
the minute rollup) and build their rows column by column. Whatever the query, the answer is the twin's, exactly.

One store of 4,000 values over three days (dense enough that every partial hour and minute at the ends of a random
range holds values), five subjects, two group-by keys (one missing on some values), values of every scale and sign.
Random queries, each compared with the in-memory twin over the same values: every aggregation, windows (none,
minute, hour, day, month) in whole-hour and half-hour zones, ranges open or cut to the millisecond, and each
rollup layout (per meter: neither filter nor group by subject; subject-first: named subjects; time first: by
subject, by customer, a subject filter), with group-by on none, one or both keys and group filters."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billow.adapters.memory import InMemoryUsageStore
from billow.domain.usage import AggRow, GroupFilter, MeterValue, UsageQuery, final_value
from tests.conftest import t

T0 = t("2026-03-27T21:00:00Z")  # Europe/Berlin changes its offset on 2026-03-29
SPAN_MS = 3 * 24 * 3600 * 1000
N = 4000
SUBJECTS = ["a", "b", "c", "d", "e"]


def _values() -> list[MeterValue]:
    out = []
    for i in range(N):
        when = T0 + timedelta(milliseconds=(i * 64_817 + (i * 7919) % 1000) % SPAN_MS)
        value = Decimal((i * 7919) % 200_003 - 100_000).scaleb(-(i % 19))  # 0 to 18 places, both signs
        groups = {"model": f"m{i % 3}"}
        if i % 5:
            groups["region"] = "eu" if i % 4 else "us"
        out.append(MeterValue("M1", SUBJECTS[(i * 3) % 5], when, value, str(i % 37), groups, "src", f"e{i}"))
    return out


@pytest.fixture(scope="module")
def stores(chdb_store: Any) -> Iterator[tuple[Any, Any, str]]:
    import os

    ns = f"exactreads{os.getpid()}"
    twin = InMemoryUsageStore()
    values = _values()
    for store in (twin, chdb_store):
        for lo in range(0, N, 500):  # several writes: several parts of each rollup, as a live store has
            store.write(ns, values[lo:lo + 500], [])
    yield twin, chdb_store, ns


_LAYOUTS: dict[str, dict[str, Any]] = {
    "all": {},
    "subjects": {"subjects": ["b", "d"]},
    "by subject": {"by_subject": True},
    "by customer": {"subjects": ["a", "c", "e"], "subject_customers": {"a": "C1", "c": "C1", "e": "C2"}},
    "customer, all subjects": {"subject_customers": {"a": "C1", "b": "C2"}},
    "subject filter": {"filters": [[GroupFilter("subject", "$in", ["a", "e"])]]},
}
_FILTERS = [[], [[GroupFilter("model", "$ne", "m1")]], [[GroupFilter("region", "$eq", "eu")], [GroupFilter("model", "$eq", "m2")]]]


def seen(rows: list[AggRow], agg: str) -> list[tuple[Any, ...]]:
    return [(r.window_start, r.subject, r.customer_id, r.groups, final_value(agg, r)) for r in rows]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(min_value=0, max_value=2**32))
def test_every_query_answers_as_the_twin(stores: Any, seed: int) -> None:
    """The query drawn uniformly from a seed (hypothesis alone draws offsets near 0, ranges at the data's edge)."""
    twin, store, ns = stores
    rnd = random.Random(seed)
    agg = rnd.choice(["SUM", "COUNT", "AVG", "MIN", "MAX", "UNIQUE_COUNT", "LATEST"])
    size = rnd.choice([None, "MINUTE", "HOUR", "HOUR", "DAY", "MONTH"])
    unit = rnd.choice([1, 1, 60_000, 3_600_000])  # from and to cut to the millisecond, or whole minutes or hours
    start, end = sorted(rnd.randrange(-3_600_000, SPAN_MS + 3_600_000) // unit * unit for _ in range(2))
    ends = rnd.choice(["both", "both", "both", "from", "to", "none"])
    kw: dict[str, Any] = dict(
        namespace=ns, meter_id="M1", aggregation=agg,
        start=T0 + timedelta(milliseconds=start) if ends in ("both", "from") else None,
        # `to` is inclusive: a whole unit's last millisecond
        end=T0 + timedelta(milliseconds=end - (unit > 1)) if ends in ("both", "to") else None,
        window_size=size, window_tz=rnd.choice(["UTC", "UTC", "Europe/Berlin", "Asia/Kolkata"]), subjects=None,
        group_by=rnd.choice([[], ["model"], ["region", "model"]]), by_subject=False, subject_customers=None,
        filters=list(rnd.choice(_FILTERS)))
    layout = dict(_LAYOUTS[rnd.choice(sorted(_LAYOUTS))])
    if "filters" in layout:
        layout["filters"] = [c + f for c in layout["filters"] for f in (kw["filters"] or [[]])]
    kw.update(layout)
    q = UsageQuery(**kw)
    want, got = twin.aggregate(q), store.aggregate(q)
    assert seen(got, agg) == seen(want, agg)
    if size is None:  # the first and last times counted: the start of the earliest cell read, the end of the latest
        for g, w in zip(got, want, strict=True):
            assert g.first_time is not None and w.first_time is not None and g.last_time and w.last_time
            assert g.first_time <= w.first_time < g.first_time + timedelta(hours=1)
            assert g.last_time - timedelta(hours=1) < w.last_time <= g.last_time


def test_an_unaligned_month_by_hour_is_the_twins_to_the_value(stores: Any) -> None:
    """The bench's shape (issue 17): HOUR x model over every subject, from and to inside a minute, so that the range
    is read from raw values (partial minutes), the minute rollup (partial hours at both ends) and the hour rollup;
    and the same by subject and as sums of AVG's parts."""
    twin, store, ns = stores
    for agg in ("SUM", "AVG", "MIN", "LATEST"):
        for by_subject in (False, True):
            q = UsageQuery(ns, "M1", agg, T0 + timedelta(minutes=17, seconds=30, milliseconds=250),
                           T0 + timedelta(days=2, hours=22, minutes=3, seconds=10, milliseconds=500), "HOUR", "UTC",
                           None, ["model"], by_subject, None)
            got, want = store.aggregate(q), twin.aggregate(q)
            assert seen(got, agg) == seen(want, agg)
            assert len(got) > 60 * 3
            # The first and last hours are partial, read from raw values and minutes: their rows' first and last
            # times are the twin's (the first and last minutes holding values); the whole hours are whole cells.
            edges = {T0, T0 + timedelta(days=2, hours=22)}
            assert {g.window_start for g in got} >= edges
            for g, w in zip(got, want, strict=True):
                if g.window_start in edges:
                    assert (g.first_time, g.last_time) == (w.first_time, w.last_time)
                else:
                    assert (g.first_time, g.last_time) == (g.window_start, g.window_start + timedelta(hours=1))
