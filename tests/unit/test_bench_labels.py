"""The benchmarks measure what their labels say (issue 17, Benchmarks)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_cold_start_covers_every_lambda_handler_migrate_included() -> None:
    from bench.cold_start import HANDLERS

    on_disk = {f"functions.{p.parent.name}.handler" for p in (ROOT / "functions").glob("*/handler.py")}
    assert set(HANDLERS) == on_disk and "functions.migrate.handler" in on_disk and len(on_disk) >= 7


def test_percentiles_are_nearest_rank() -> None:
    from bench.entitlement_check import pct

    thirty = [float(n) for n in range(1, 31)]
    assert pct(thirty, 0.95) == 29.0  # not the 28th value
    assert pct(thirty, 0.99) == 30.0  # with 30 samples p99 is the maximum
    assert pct([float(n) for n in range(1, 301)], 0.99) == 297.0


def test_query_verdict_names_the_events_it_was_measured_over() -> None:
    from bench.query import verdict

    assert verdict(51.0, 100_000_000) == "budget p99 < 100 ms over 100 M events: within"
    assert verdict(120.0, 100_000_000) == "budget p99 < 100 ms over 100 M events: OVER"
    # A smaller load is not the budget's scenario: no within/OVER verdict against it.
    small = verdict(51.0, 2_000_000)
    assert "2,000,000 events" in small and "within" not in small and "OVER" not in small


def test_ingest_ratio_verdict_only_at_the_budgets_store_size() -> None:
    from bench.ingest import ratio_verdict

    assert ratio_verdict(1.19, 50_000_000) == "budget <= 1.20 x at 50 M stored: ok"
    assert ratio_verdict(1.31, 50_000_000) == "budget <= 1.20 x at 50 M stored: OVER"
    assert ratio_verdict(1.31, 10_000_000) == "budget <= 1.20 x at 50 M stored (10,000,000 stored here)"


def test_issue_21_overhead_verdicts_are_below_ten_percent() -> None:
    from bench.billing_run import lineage_verdict
    from bench.receipts import receipt_verdict

    for verdict in (lineage_verdict, receipt_verdict):
        assert verdict(0.099) == "budget < 10 %: ok" and verdict(-0.05) == "budget < 10 %: ok"
        assert verdict(0.10) == "budget < 10 %: OVER" and verdict(0.25) == "budget < 10 %: OVER"


def test_make_bench_runs_every_bench_module() -> None:
    runner = (ROOT / "bench" / "__main__.py").read_text()
    for path in (ROOT / "bench").glob("*.py"):
        if not path.name.startswith("__"):
            assert f'"bench.{path.stem}"' in runner, path.name


def test_the_receipt_overhead_shares_the_background_merges_evenly() -> None:
    from bench.receipts import shared_merges_overhead

    # The same request work, every merge fell on the receipt's requests: no overhead, not +25 %.
    assert shared_merges_overhead(100.0, 0.0, 125.0, 25.0) == 0.0
    # 5 more of the request's own work (80 -> 85), merges 40 in all, split 10 / 30: +5 % of 80 + 20.
    assert round(shared_merges_overhead(90.0, 10.0, 115.0, 30.0), 9) == 0.05
