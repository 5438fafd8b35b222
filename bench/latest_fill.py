"""The LATEST fill of one meter stored before usage-store migration 5 (ClickHouseUsageStore.fill_latest, the
statements of clickhouse_schema.LATEST_BACKFILL), in the embedded engine: what a first LATEST query of an upgraded
meter waits for.

A store is made at migration 3; --rows values of one meter (S subjects over D days, no group-by values) are loaded with
INSERT ... SELECT FROM numbers() (every rollup filled by its view), with 1,000 values of another meter; the store is
migrated to head, its background merges are waited for; then the meter's fill runs once, each statement timed: wall
time, and CPU time of this process (every thread: the engine's, and its background merges'; other processes' load
does not inflate it), with the machine's load average. `--keep DIR` keeps the migrated store (before the fill) and
`--store DIR` fills a copy of one kept so, not loading again (e.g. to compare two versions on one store).
Run: .venv/bin/python -m bench.latest_fill [--rows 2000000] [--subjects 10000] [--days 45]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from typing import Any

from billow.adapters import clickhouse
from billow.adapters.clickhouse import ClickHouseUsageStore, connect


def load(data_dir: str, rows: int, subjects: int, days: int) -> None:
    everything = list(clickhouse.MIGRATIONS)
    clickhouse.MIGRATIONS[:] = [m for m in everything if m[0] < 4]
    store = ClickHouseUsageStore(connect(f"chdb://{data_dir}"))
    store.migrate()
    t0 = time.perf_counter()
    for lo in range(0, rows, 5_000_000):
        store._command(
            "INSERT INTO meter_values (namespace, meter_id, subject, time, value, value_str, group_by, source, id) "
            "SELECT 'default', 'M', concat('customer_', toString(number % {subjects:UInt64})), "
            "toDateTime64('2026-01-01 00:00:00', 3, 'UTC') + toIntervalMillisecond(number * {step:UInt64}), "
            "toDecimal128(number % 7, 18) / 100, toString(number % 7), map(), 'bench', toString(number) "
            "FROM numbers({lo:UInt64}, {n:UInt64})",
            {"step": days * 24 * 3600 * 1000 // rows, "subjects": subjects, "lo": lo, "n": min(5_000_000, rows - lo)})
    store._command(
        "INSERT INTO meter_values (namespace, meter_id, subject, time, value, value_str, group_by, source, id) "
        "SELECT 'default', 'other', 's', toDateTime64('2026-01-01 00:00:00', 3, 'UTC') + toIntervalSecond(number), "
        "1, '1', map(), 'other', toString(number) FROM numbers(1000)", {})
    print(f"loaded {rows:,} values of meter M ({subjects:,} subjects over {days} days) at migration 3 in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    clickhouse.MIGRATIONS[:] = everything
    store.migrate()
    t0 = time.perf_counter()
    while store._query("SELECT count() FROM system.merges", {})[0][0]:
        time.sleep(0.5)
    print(f"migrated to head; background merges ended {time.perf_counter() - t0:.1f} s later", flush=True)
    store.close()


def fill(data_dir: str) -> None:
    store = ClickHouseUsageStore(connect(f"chdb://{data_dir}"))
    client = store._client
    for table, _, _ in clickhouse.ROLLUPS:
        print(f"  {table}: {store._query(f'SELECT count() FROM {table} WHERE meter_id = {{m:String}}', {'m': 'M'})[0][0]:,} "  # noqa: S608
              "rows of meter M", flush=True)
    command = client.command
    total = [0.0, 0.0]

    def timed(sql: str, *args: Any, **kw: Any) -> Any:
        w, c = time.perf_counter(), time.process_time()
        out = command(sql, *args, **kw)
        w, c = time.perf_counter() - w, time.process_time() - c
        total[0] += w
        total[1] += c
        print(f"  {w:7.2f} s wall, {c:6.2f} s CPU: {' '.join(sql.split())[:120]}", flush=True)
        return out

    client.command = timed
    w0 = time.perf_counter()
    store.fill_latest("default", "M")
    wall = time.perf_counter() - w0
    print(f"fill of meter M: {wall:.1f} s wall ({total[0]:.1f} s in its statements, {total[1]:.1f} s CPU); "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} cores)", flush=True)
    store.close()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--subjects", type=int, default=10_000)
    ap.add_argument("--days", type=int, default=45)
    ap.add_argument("--keep", help="keep the migrated store here (before the fill)")
    ap.add_argument("--store", help="fill a copy of a store kept with --keep")
    args, _ = ap.parse_known_args(argv)
    work = tempfile.mkdtemp(prefix="billow-bench-latest-")
    data = os.path.join(work, "usage")
    try:
        if args.store:
            subprocess.run(["cp", "-a", args.store, data], check=True)  # keeps the engine's relative symlinks
        else:
            load(data, args.rows, args.subjects, args.days)
            if args.keep:
                subprocess.run(["cp", "-a", data, args.keep], check=True)
        fill(data)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
