"""Meter-query latency over N events (default 10 M) in the embedded engine: hourly windows, one group-by.

The events are loaded straight into `meter_values` with SQL (the materialized view fills the one-minute
rollup as it would on ingest), ~30 days of data, 100 subjects, 8 models. Then UsageStore.aggregate runs
over the whole range, minute-aligned and not (the raw-edge branch), and in a DST time zone by DAY.
Run: .venv/bin/python -m bench.query [--rows 10000000] [--runs 30]
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from datetime import datetime

from billow.adapters.clickhouse import ClickHouseUsageStore, connect
from billow.domain.usage import UsageQuery


def t(s: str) -> datetime:
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args(argv)
    store = ClickHouseUsageStore(connect(f"chdb://{tempfile.mkdtemp(prefix='billow-bench-')}"))
    store.migrate()
    step_ms = max(1, 30 * 24 * 3600 * 1000 // args.rows)
    t0 = time.perf_counter()
    store._command(
        "INSERT INTO meter_values (namespace, meter_id, subject, time, value, value_str, group_by, source, id) "
        "SELECT 'default', 'M1', concat('customer-', toString(number % 100)), "
        "toDateTime64('2026-10-01 00:00:00', 3, 'UTC') + toIntervalMillisecond(number * {step:UInt64}), "
        "toDecimal128(number % 1000, 18) / 10, '', map('model', concat('model-', toString(number % 8))), "
        "'bench', toString(number) FROM numbers({rows:UInt64})", {"step": step_ms, "rows": args.rows})
    load = time.perf_counter() - t0
    rollup = store._query("SELECT count() FROM meter_rollup_1m", {})[0][0]
    print(f"loaded {args.rows:,} events in {load:.1f} s ({args.rows / load:,.0f} rows/s); rollup rows: {rollup:,}")

    def bench(label: str, **kw: object) -> None:
        base: dict = dict(namespace="default", meter_id="M1", aggregation="SUM", start=t("2026-10-01T00:00:00Z"),
                          end=t("2026-10-31T00:00:00Z"), window_size="HOUR", window_tz="UTC", subjects=None,
                          group_by=["model"], by_subject=False, subject_customers=None)
        base.update(kw)
        q = UsageQuery(**base)
        for _ in range(3):
            rows = store.aggregate(q)
        times = []
        for _ in range(args.runs):
            s = time.perf_counter()
            store.aggregate(q)
            times.append((time.perf_counter() - s) * 1000)
        times.sort()
        p95 = times[max(0, math.ceil(0.95 * len(times)) - 1)]  # nearest rank: with 30 runs, the 29th of 30
        print(f"{label}: median {statistics.median(times):.1f} ms, p95 {p95:.1f} ms (nearest rank of {len(times)} "
              f"runs), max {times[-1]:.1f} ms, min {times[0]:.1f} ms, {len(rows)} rows (issue 17's budget, p99 < 100 ms, "
              "is for 100 M events)")

    bench("HOUR x model, minute-aligned range")
    bench("HOUR x model, unaligned from/to (raw edges)", start=t("2026-10-01T00:00:30.250Z"), end=t("2026-10-30T23:59:10.5Z"))
    bench("DAY x model in Europe/Berlin", window_size="DAY", window_tz="Europe/Berlin")
    bench("HOUR x model, one subject", subjects=["customer-7"])
    store.close()


if __name__ == "__main__":
    main()
