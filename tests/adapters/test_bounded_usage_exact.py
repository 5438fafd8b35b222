"""Issue 17 item 5: the entitlement check's usage read (`ClickHouseUsageStore.bounded_usage`) is written for chdb's
per-expression cost: the namespace, meter, subjects and times go into the statement as literals and each branch's
segment is a sum of comparisons with the bounds inside what it reads. These tests hold it to the raw values, exactly,
over many generated checks (raw partial minutes at either end, minute and hour rollups, inner bounds on the hour, on
the minute or inside a minute, repeated bounds, SUM and COUNT, group-by and subject filters, several subjects, rollup
cells split over parts), and to the subjects it is given whatever their characters."""

from __future__ import annotations

import bisect
import os
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from billow.adapters import clickhouse
from billow.domain.usage import GroupFilter
from billow.exact import exact_sum

START = datetime(2026, 5, 1, tzinfo=UTC)
SPAN_MS = 3 * 86400 * 1000
ROWS = 60_000
# Subjects whose text a careless literal would break or widen: quotes, backslashes, parameter and format markers,
# control characters, non-ASCII. "a" is a prefix of none of them and equal to none after unescaping.
SUBJECTS = ["a", "o'brien", "back\\slash'", "{ns:String}", "%(ns)s %s", "ünï 🙂", "tab\tnew\nline", "a' OR '1'='1"]
MODELS = ["m0", "m1", "m2", "m3", "m4"]


@pytest.fixture(scope="module")
def data(chdb_store: Any) -> Iterator[tuple[Any, str, dict[str, list[tuple[int, Decimal, str]]]]]:
    """ROWS values over SPAN_MS in a namespace of its own (with a quote in its name), loaded in two inserts that
    interleave (every rollup cell split over two parts), and the same values read back: subject -> [(epoch ms,
    value, model)] by time."""
    store, ns = chdb_store, f"bu'{os.getpid()}"
    for half in (0, 1):
        store._command(
            "INSERT INTO meter_values (namespace, meter_id, subject, time, value, value_str, group_by, source, id) "
            "SELECT {ns:String}, 'M1', {subjects:Array(String)}[1 + number % length({subjects:Array(String)})], "
            "toDateTime64({start:DateTime64(3, 'UTC')}, 3, 'UTC') + toIntervalMillisecond(number * {step:UInt64} "
            "+ number * 7919 % 1000), toDecimal128(number % 97, 18) / 8, toString(number), "
            "map('model', {models:Array(String)}[1 + intDiv(number, 3) % 5]), 'bulk', toString(number) "
            "FROM numbers({rows:UInt64}) WHERE number % 2 = {half:UInt8}",
            {"ns": ns, "subjects": SUBJECTS, "start": START, "step": SPAN_MS // ROWS, "rows": ROWS, "half": half,
             "models": MODELS})
    rows: dict[str, list[tuple[int, Decimal, str]]] = {s: [] for s in SUBJECTS}
    for subject, ms, value, model in store._query(
            "SELECT subject, toUnixTimestamp64Milli(time), toString(value), group_by['model'] FROM meter_values "
            "WHERE namespace = {ns:String} ORDER BY time", {"ns": ns}):
        rows[subject].append((int(ms), Decimal(value), model))
    assert sum(map(len, rows.values())) == ROWS
    yield store, ns, rows


def _ms(t: datetime) -> int:
    return (t - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def _expected(rows: dict[str, list[tuple[int, Decimal, str]]], aggregation: str, subjects: list[str],
              filters: list[list[GroupFilter]], bounds: list[datetime]) -> list[Decimal]:
    ops = {"$eq": lambda v, x: v == x, "$ne": lambda v, x: v != x, "$in": lambda v, x: v in x,
           "$nin": lambda v, x: v not in x}

    def keep(subject: str, model: str) -> bool:
        return not filters or any(all(ops[f.op](subject if f.key == "subject" else model, f.value) for f in conj)
                                  for conj in filters)

    out = []
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        picked = []
        for s in dict.fromkeys(subjects):
            mine = rows[s]
            a = bisect.bisect_left(mine, (_ms(lo),))
            b = bisect.bisect_left(mine, (_ms(hi),))
            picked += [v if aggregation == "SUM" else Decimal(1) for _, v, m in mine[a:b] if keep(s, m)]
        out.append(exact_sum(picked))
    return out


def _instant(rng: random.Random, kind: str) -> datetime:
    t = START + timedelta(milliseconds=rng.randrange(-3_600_000, SPAN_MS + 3_600_000))
    if kind == "hour":
        return t.replace(minute=0, second=0, microsecond=0)
    if kind == "minute":
        return t.replace(second=0, microsecond=0)
    return t


@pytest.mark.parametrize("read", ["cells", "by segment"])
def test_every_generated_check_is_the_raw_values_exactly(data: Any, read: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`read`: the hourly rollup's cells as stored, summed by segment here (a span of up to _CELLS_SPAN), or summed
    by segment in the engine (a longer span with few bounds: every span here, with _CELLS_SPAN at 0)."""
    if read == "by segment":
        monkeypatch.setattr(clickhouse, "_CELLS_SPAN", timedelta(0))
    store, ns, rows = data
    rng = random.Random(17_5)
    filter_choices: list[list[list[GroupFilter]]] = [
        [], [], [[GroupFilter("model", "$eq", "m1")]], [[GroupFilter("model", "$in", ["m0", "m3"])]],
        [[GroupFilter("model", "$ne", "m2")], [GroupFilter("subject", "$eq", "a")]],
        [[GroupFilter("model", "$nin", ["m4"]), GroupFilter("subject", "$ne", "o'brien")]]]
    seen = {"raw edges": 0, "hours": 0, "inside a minute": 0, "repeated": 0, "hours beside bounds off the hour": 0}
    for _ in range(300):
        ends = sorted(_instant(rng, rng.choice(["ms", "ms", "minute", "hour"])) for _ in range(2))
        inner_kind = rng.choice(["hour", "hour", "minute", "ms", "mixed"])  # mixed: each bound of its own kind
        inner = [_instant(rng, rng.choice(["hour", "minute", "ms"]) if inner_kind == "mixed" else inner_kind)
                 for _ in range(rng.randrange(0, 5))]
        bounds = [ends[0], *sorted(b for b in inner if ends[0] <= b <= ends[1]), ends[1]]
        if len(bounds) > 2 and rng.random() < 0.2:
            bounds.insert(1, bounds[1])
            seen["repeated"] += 1
        aggregation = rng.choice(["SUM", "COUNT"])
        subjects = rng.sample(SUBJECTS, rng.choice([1, 1, 2, 3]))
        filters = rng.choice(filter_choices)
        got = store.bounded_usage(ns, "M1", aggregation, subjects, filters, bounds)
        want = _expected(rows, aggregation, subjects, filters, bounds)
        assert got == want, (aggregation, subjects, filters, bounds)
        seen["raw edges"] += bounds[0].second != 0 or bounds[0].microsecond != 0
        seen["hours"] += bounds[-1] - bounds[0] > timedelta(hours=2) and all(b.minute == 0 for b in bounds[1:-1])
        seen["inside a minute"] += any(b.second or b.microsecond for b in bounds[1:-1])
        seen["hours beside bounds off the hour"] += any(b.minute for b in bounds[1:-1]) and any(
            hi - lo > timedelta(hours=2) for lo, hi in zip(bounds, bounds[1:], strict=False))
    assert all(n >= 10 for n in seen.values()), seen


def test_each_subject_is_itself_whatever_its_characters(data: Any) -> None:
    """A subject reaches the statement as a literal: every one is read as itself alone (no quote ends it early, no
    backslash or parameter marker changes it), and together they are the sum of their parts."""
    store, ns, rows = data
    bounds = [START + timedelta(hours=5, milliseconds=123), START + timedelta(hours=30),
              START + timedelta(days=2, hours=7, minutes=41, seconds=3, milliseconds=7)]
    alone = {}
    for s in SUBJECTS:
        for aggregation in ("SUM", "COUNT"):
            got = store.bounded_usage(ns, "M1", aggregation, [s], [], bounds)
            assert got == _expected(rows, aggregation, [s], [], bounds), (s, aggregation)
            assert all(got), (s, got)
        alone[s] = store.bounded_usage(ns, "M1", "SUM", [s], [], bounds)
    together = store.bounded_usage(ns, "M1", "SUM", SUBJECTS, [], bounds)
    assert together == [exact_sum(v[i] for v in alone.values()) for i in range(2)]
    # Names that only look like them are nobody's.
    for other in ("o''brien", "back\\\\slash'", "{ns:String", "A", "a' OR '1'='1'", "ünï"):
        assert store.bounded_usage(ns, "M1", "SUM", [other], [], bounds) == [0, 0], other
