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
