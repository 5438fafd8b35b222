"""Issue 17 item 6 / issue 20: the LLM cost report by customer and the margin report price token rows in the usage
store (rated_sums). On chdb its first statement looks for the rate keys among the values of the meter every row has
(Rating.key_meter: an `llm` event's input tokens) and reads that meter's rows only, measured as
tests/adapters/test_rollup_layouts.py measures (`EXPLAIN ESTIMATE` of the exact SQL); a key only the other meters
have is still priced (the pricing statement runs once more), never listed as unpriced nor rated in Python. The
answer is domain.usage.rate_rows' over sum_meters' rows, exactly."""

from __future__ import annotations

import os
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from billow.adapters.clickhouse import _ROLLUPS
from billow.domain.usage import Rating, UsageQuery, rate_rows
from tests.conftest import t

METERS = ["M1", "M2", "M3", "M4"]
ROWS = 40_000  # per meter, over two days; a distinct (hour, group values) cell for nearly every value


@pytest.fixture(scope="module")
def loaded(chdb_store: Any) -> Iterator[tuple[Any, str]]:
    ns = f"rated{os.getpid()}"
    for meter in METERS:
        # model m0..m3 on every meter; "only-m4" on some of M4's values alone (a key M1 does not have: output tokens
        # of an event without input tokens); M1's values above M2's and M3's together
        chdb_store._command(
            "INSERT INTO meter_values (namespace, meter_id, subject, time, value, value_str, group_by, source, id) "
            "SELECT {ns:String}, {m:String}, concat('s', toString(number % 50)), "
            "toDateTime64('2026-04-01 00:00:00', 3, 'UTC') + toIntervalMillisecond(number * 4320), "
            "toDecimal128(number % 7, 18) + if({m:String} = 'M1', 20, 1), '', "
            "map('model', if({m:String} = 'M4' AND number % 997 = 5, 'only-m4', "
            "concat('m', toString(number % 4))), 'customer', concat('c', toString(number % 400))), 'bulk', "
            "concat({m:String}, '-', toString(number)) FROM numbers({rows:UInt64})",
            {"ns": ns, "m": meter, "rows": ROWS})
    for table in ("meter_values", *(r[0] for r in _ROLLUPS)):
        chdb_store._command(f"OPTIMIZE TABLE {table} FINAL")
    yield chdb_store, ns


def test_the_rate_keys_are_read_from_the_key_meter_alone(loaded: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    store, ns = loaded
    asked: list[Any] = []

    def rates(start: Any, key: tuple[str, ...]) -> Any:
        asked.append((start, key))
        return None if key == ("m3",) else (Decimal("0.0000025"), Decimal("0.00000125"), Decimal(0), Decimal("1E-5"))

    # quantities as the LLM report's: uncached input (M1 - M2 - M3, never below zero), cached reads, writes, output
    rating = Rating(by=1, forms=((1, -1, -1, 0), (0, 1, 0, 0), (0, 0, 1, 0), (0, 0, 0, 1)), nonnegative=(0,),
                    shown=(1,), rates=rates, key_meter=0)
    query = UsageQuery(namespace=ns, meter_id="M1", aggregation="SUM", start=t("2026-04-01T00:00:00Z"),
                       end=t("2026-04-02T23:59:59.999Z"), window_size="DAY", window_tz="UTC", subjects=None,
                       group_by=["model", "customer"], by_subject=True, subject_customers=None)
    seen: list[tuple[str, dict[str, Any]]] = []
    real = store._query
    monkeypatch.setattr(store, "_query", lambda sql, params, **kw: seen.append((sql, dict(params))) or real(sql, params, **kw))
    got = store.rated_sums(query, METERS, rating)
    monkeypatch.undo()

    assert len(asked) == len(set(asked)) == 2 * 5  # two days x (m0..m3, only-m4): each key priced once
    assert got == rate_rows(store.sum_meters(query, METERS), rating)
    assert any(("only-m4",) in line.rate_keys for line in got.lines)  # priced, though M1 never has it
    assert {r[3][0] for r in got.unrated} == {"m3"}  # no rates: listed, never free
    # the key statement, then the pricing statement twice (the second with only-m4's rates); no Python rating
    assert len(seen) == 3 and all("LEFT JOIN" in sql for sql, _ in seen[1:])
    key_rows = sum(int(n) for *_, n, _marks in real("EXPLAIN ESTIMATE " + seen[0][0], seen[0][1]))
    (one_meter,) = real("SELECT count() FROM meter_rollup_1h_all WHERE namespace = {ns:String} AND meter_id = 'M1'",
                        {"ns": ns})[0]
    assert key_rows <= one_meter + 2 * 8192, (key_rows, one_meter)  # M1's granules, not the four meters'
