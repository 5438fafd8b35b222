"""Backtest summaries (billow.domain.backtest): the totals are the exact sums over customers, the distribution
counts every customer once, percentages are of the current amount."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from billow.domain import backtest as bt

amounts = st.decimals(min_value=Decimal(0), max_value=Decimal("1000000"), places=2, allow_nan=False,
                      allow_infinity=False)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(amounts, amounts), max_size=40))
def test_the_sum_over_customers_equals_the_total(pairs: list[tuple[Decimal, Decimal]]) -> None:
    rows = [bt.Row(f"c{i}", f"k{i}", None, "USD", 1, cur, cand) for i, (cur, cand) in enumerate(pairs)]
    totals = bt.totals(rows, "USD")
    assert Decimal(totals["current"]) == sum((r.current for r in rows), Decimal(0))
    assert Decimal(totals["candidate"]) == sum((r.candidate for r in rows), Decimal(0))
    assert Decimal(totals["difference"]) == sum((Decimal(r.to_json()["difference"]) for r in rows), Decimal(0))
    dist = bt.distribution(rows)
    assert dist["more"] + dist["less"] + dist["same"] == len(rows)
    assert sum(b["customers"] for b in dist["buckets"]) + dist["fromZero"] == len(rows)
    csv_lines = bt.to_csv(rows).splitlines()
    assert len(csv_lines) == len(rows) + 1 and csv_lines[0].startswith("customer_id,")


def test_percentages_and_buckets() -> None:
    row = bt.Row("c", "k", None, "USD", 1, Decimal("62.49"), Decimal("36.00"))
    assert row.to_json()["differencePercent"] == "-42.39"
    assert bt.Row("c", "k", None, "USD", 1, Decimal(0), Decimal(5)).to_json()["differencePercent"] is None
    rows = [bt.Row(str(i), None, None, "USD", 1, Decimal(100), Decimal(v)) for i, v in
            enumerate(["40", "60", "90", "99.999", "100", "100.001", "110", "130", "200"])]
    dist = bt.distribution(rows)
    assert {b["label"]: b["customers"] for b in dist["buckets"]} == {
        "< -50%": 1, "-50% to -20%": 1, "-20% to -5%": 1, "-5% to 0%": 1, "0%": 1, "0% to 5%": 1, "5% to 20%": 1,
        "20% to 50%": 1, ">= 50%": 1}
    assert (dist["more"], dist["less"], dist["same"]) == (4, 4, 1)
