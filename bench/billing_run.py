"""Billing run throughput, embedded (chdb + SQLite): N subscriptions (default 10,000) on a monthly plan with a
base fee and graduated usage, one customer and subject each, a month of usage in chdb (default 1,000,000 events,
100 per subscription); then the run at period end that invoices every one of them, and a second run that must bill
nothing.

Lineage (issue 21: "writing lineage adds < 10 % to the billing-run bench"): the same run is measured with lineage on
and off in this one process over the same store: the meta database (SQLite) is copied after the set-up and put back
before each run (the run writes only there; the usage store it only reads), the runs in the order on, off, off, on
(--pairs 2; a drift of load or caches weighs on both sides alike). Each run prints wall and CPU seconds (this
process, every thread: chdb runs in it) and the load average; the lineage's own digest queries
(UsageStore.line_digests) are timed inside the runs with lineage on. The overhead (on / off - 1, means) is printed
for wall and CPU beside the budget; CPU is the figure other processes' load does not inflate.

What each figure includes: "billing run" is the entitlement sync, rating, invoices + marks committed 200 per
transaction and issuing through the sandbox app (paid); it excludes the documents (rendered with no time budget
inside the run, then timed on their own as "documents", HTML + PDF stored, for at most 15 s) and sends no
notifications (the bench defines no notification rule, so no notification event is made or delivered).
Budget: none is set by issue 17 for the run itself; issue 21 sets the lineage overhead's (< 10 %).
Run: .venv/bin/python -m bench.billing_run [--subscriptions 10000] [--events 1000000] [--pairs 2]
"""

from __future__ import annotations

import argparse
import gc
import shutil
import sqlite3
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.ingest import load
from billow.adapters.sql import SqlMetaStore
from billow.adapters.sql_billing import SqlBillingStore
from billow.adapters.sql_catalog import SqlCatalogStore
from billow.bootstrap import Settings, build, install
from billow.services import billing, catalog, directory, features, subscriptions
from billow.services import billing_run as billing_run_module
from billow.services.jobs import billing_run as run_billing
from billow.services.jobs import render_pending_documents


class Clock:
    def __init__(self) -> None:
        self.t = datetime(2026, 3, 31, tzinfo=UTC)

    def now(self) -> datetime:
        return self.t


PLAN: dict[str, Any] = {
    "key": "usage", "name": "Usage", "currency": "USD", "billingCadence": "P1M",
    "phases": [{"key": "default", "name": "Default", "rateCards": [
        {"type": "flat_fee", "key": "base", "name": "Base fee", "billingCadence": "P1M",
         "price": {"type": "flat", "amount": "49.99", "paymentTerm": "in_arrears"}},
        {"type": "usage_based", "key": "tokens", "name": "Tokens", "featureKey": "tokens", "billingCadence": "P1M",
         "price": {"type": "tiered", "mode": "graduated", "tiers": [
             {"upToAmount": "1000", "unitPrice": {"type": "unit", "amount": "0.01"}},
             {"unitPrice": {"type": "unit", "amount": "0.005"}}]}}]}]}


def load_april_usage(usage: Any, ns: str, meter_id: str, *, subjects: int, events: int) -> None:
    """`events` values of the meter spread evenly over April 2026, subjects s0..s{subjects-1} in turn, value number % 29,
    inserted by the engine itself (INSERT ... SELECT FROM numbers())."""
    usage._command(
        "INSERT INTO meter_values (namespace, meter_id, subject, time, value, value_str, group_by, source, id) "
        "SELECT {ns:String}, {mid:String}, concat('s', toString(number % {n:UInt64})), "
        "toDateTime64('2026-04-01 00:00:00', 3, 'UTC') + toIntervalMillisecond(number * {step:UInt64}), "
        "toDecimal128(number % 29, 18), '', map(), 'bench', toString(number) FROM numbers({rows:UInt64})",
        {"ns": ns, "mid": meter_id, "n": subjects, "step": 30 * 24 * 3600 * 1000 // events, "rows": events})


def lineage_verdict(overhead: float) -> str:
    """Issue 21's budget: writing lineage adds < 10 % to the billing run."""
    return f"budget < 10 %: {'ok' if overhead < 0.10 else 'OVER'}"


def copy_db(src: str, dst: str) -> None:
    """The SQLite database `src` copied onto `dst` (the online backup API: consistent, WAL included)."""
    a, b = sqlite3.connect(src), sqlite3.connect(dst)
    try:
        a.backup(b)
    finally:
        a.close()
        b.close()


def _timed(owner: Any, name: str) -> list[float]:
    """Wall seconds of each call of `owner.name` from now on (the method wrapped in place)."""
    spent: list[float] = []
    real = getattr(owner, name)

    def timed(*a: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return real(*a, **kw)
        finally:
            spent.append(time.perf_counter() - t0)

    setattr(owner, name, timed)
    return spent


def _settle(usage: Any) -> float:
    """Wait (at most 10 minutes) until the engine has merged what the set-up inserted: chdb merges in this process,
    and a merge running during one run but not another would count as that run's CPU. Returns the seconds waited."""
    t0 = time.perf_counter()
    while usage._query("SELECT count() FROM system.merges", {})[0][0] and time.perf_counter() - t0 < 600:
        time.sleep(1)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--subscriptions", type=int, default=10_000)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--pairs", type=int, default=2, help="runs with lineage on and off, each (order on, off, off, on)")
    args, _ = ap.parse_known_args(argv)
    n = args.subscriptions
    data_dir = tempfile.mkdtemp(prefix="billow-bench-billing-")
    c = build(Settings.parse(dict(data_dir=data_dir, meters=[
        {"slug": "tokens", "eventType": "prompt", "aggregation": "SUM", "valueProperty": "$.tokens"}])))
    clock = Clock()
    c.clock = clock  # type: ignore[assignment]
    install(c)
    ns, now = c.namespace, clock.now()
    cat, bill = c.store(SqlCatalogStore), c.store(SqlBillingStore)
    t0 = time.perf_counter()
    features.create_feature(ns, {"key": "tokens", "name": "Tokens", "meterSlug": "tokens"}, store=c.entitlements,
                            meta=c.meta, now=now)
    plan = catalog.create(ns, "plan", PLAN, store=cat, now=now)
    catalog.publish(ns, "plan", plan["id"], store=cat, features=c.entitlements, now=now)
    billing.create_profile(ns, {"name": "Default", "default": True, "supplier": {"name": "Bench Inc."},
                                "apps": {"invoicing": "sandbox", "payment": "sandbox", "tax": "sandbox"}},
                           store=bill, now=now)
    for i in range(n):
        directory.create_customer(ns, {"key": f"c{i}", "name": f"Customer {i}",
                                       "usageAttribution": {"subjectKeys": [f"s{i}"]}}, meta=c.meta, now=now)
        subscriptions.create(ns, {"plan": {"key": "usage"}, "customerKey": f"c{i}", "timing": "2026-04-01T00:00:00Z"},
                             store=cat, meta=c.meta, ents=c.entitlements, now=now)
    meter = c.meta.get_meter(ns, "tokens")
    assert meter is not None
    load_april_usage(c.usage, ns, meter.id, subjects=n, events=args.events)
    print(f"set-up: {n} subscriptions, {args.events} usage events in {time.perf_counter() - t0:.1f} s", flush=True)

    db = str((Path(data_dir) / "billow.db").resolve())
    snapshot = str(Path(data_dir) / "before-run.db")
    assert isinstance(c.meta, SqlMetaStore)  # SQLite in the data dir
    engine = c.meta.engine
    engine.dispose()
    copy_db(db, snapshot)
    settled = _settle(c.usage)
    digests = _timed(c.usage, "line_digests")  # the digest query, inside the lineage part below
    lineage_part = _timed(billing_run_module.BatchedUsage, "lineage")  # per line: digest (once per span) + its JSON
    print(f"the engine's merges of the set-up done {settled:.0f} s later", flush=True)
    clock.t = datetime(2026, 5, 1, 0, 10, tzinfo=UTC)
    figures: dict[bool, list[tuple[float, float, float]]] = {True: [], False: []}  # lineage -> (wall, cpu, digests)
    order = [True, False, False, True] * (args.pairs // 2) + [True, False] * (args.pairs % 2)
    result = None
    for k, on in enumerate(order):
        if k:  # the store as the set-up left it: the same invoices are due again
            engine.dispose()
            copy_db(snapshot, db)
        digests.clear()
        lineage_part.clear()
        result = None
        gc.collect()  # the previous run's objects gone: each run starts from the same heap
        before = load()
        t1, c1 = time.perf_counter(), time.process_time()
        result = run_billing(c, documents_budget_s=0, lineage=on)  # documents are timed on their own below
        wall, cpu = time.perf_counter() - t1, time.process_time() - c1
        assert len(result.invoices) == n and not result.failures, (len(result.invoices), result.failures[:3])
        lines = [ln for inv in result.invoices for ln in inv["lines"] if ln.get("lineage")]
        assert len(lines) == (n if on else 0), len(lines)
        figures[on].append((wall, cpu, sum(lineage_part)))
        print(f"billing run, lineage {'on ' if on else 'off'}: {len(result.invoices)} invoices for "
              f"{result.subscriptions} subscriptions ({result.points} billing points) in {wall:.1f} s wall = "
              f"{len(result.invoices) / wall:,.0f} invoices/s, {cpu:.1f} s CPU"
              + (f"; {len(lines)} lines with lineage: {sum(lineage_part):.2f} s wall in their lineage, of which "
                 f"{sum(digests):.2f} s in {len(digests)} digest quer{'y' if len(digests) == 1 else 'ies'}" if on else "")
              + f"; {before} before, {load()} after", flush=True)
    assert result is not None
    mean = {on: tuple(sum(f[i] for f in figures[on]) / len(figures[on]) for i in range(3)) for on in (True, False)}
    (w_on, c_on, d_on), (w_off, c_off, _) = mean[True], mean[False]
    print(f"lineage overhead (mean of {len(figures[True])} runs each, on / off - 1): wall {w_on:.1f} s vs "
          f"{w_off:.1f} s = {(w_on / w_off - 1) * 100:+.1f} % [{lineage_verdict(w_on / w_off - 1)}]; CPU {c_on:.1f} s "
          f"vs {c_off:.1f} s = {(c_on / c_off - 1) * 100:+.1f} % [{lineage_verdict(c_on / c_off - 1)}]; the lineage "
          f"part timed inside the runs with it on: {d_on:.2f} s wall = {d_on / w_on * 100:.1f} % of the run "
          f"[{lineage_verdict(d_on / (w_on - d_on))}]; {load()}", flush=True)
    issued = [i for i in bill.list_invoices(ns) if i["status"] == "paid"]
    print(f"billing run: {len(issued)} invoices issued and paid (sandbox), with lineage; without documents and "
          "notifications (issue 17 sets no budget)", flush=True)
    t3 = time.perf_counter()
    docs = render_pending_documents(c, budget_s=15)
    spent = time.perf_counter() - t3
    print(f"documents: {docs} invoices rendered to HTML + PDF and stored in {spent:.1f} s = {docs / spent:.1f}/s "
          "(the rest are rendered by later runs or on first request)", flush=True)
    t2 = time.perf_counter()
    again = run_billing(c, documents_budget_s=0)
    print(f"re-run: {len(again.invoices)} invoices in {time.perf_counter() - t2:.1f} s (idempotent)", flush=True)
    assert not again.invoices
    c.close()
    shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
