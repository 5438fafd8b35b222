"""Billing run throughput, embedded (chdb + SQLite): N subscriptions (default 10,000) on a monthly plan with a
base fee and graduated usage, one customer and subject each, a month of usage in chdb; then the run at period
end that invoices every one of them, and a second run that must bill nothing.

What each figure includes: "billing run" is the entitlement sync, rating, invoices + marks committed 200 per
transaction and issuing through the sandbox app (paid); it excludes the documents (rendered with no time budget
inside the run, then timed on their own as "documents", HTML + PDF stored, for at most 15 s) and sends no
notifications (the bench defines no notification rule, so no notification event is made or delivered).
Budget: none is set by issue 17 for this figure.
Run: .venv/bin/python -m bench.billing_run [--subscriptions 10000] [--events 1000000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime
from typing import Any

from billow.adapters.sql_billing import SqlBillingStore
from billow.adapters.sql_catalog import SqlCatalogStore
from billow.bootstrap import Settings, build, install
from billow.services import billing, catalog, directory, features, subscriptions
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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--subscriptions", type=int, default=10_000)
    ap.add_argument("--events", type=int, default=1_000_000)
    args, _ = ap.parse_known_args(argv)
    n = args.subscriptions
    c = build(Settings.parse(dict(data_dir=tempfile.mkdtemp(prefix="billow-bench-billing-"), meters=[
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

    clock.t = datetime(2026, 5, 1, 0, 10, tzinfo=UTC)
    t1 = time.perf_counter()
    result = run_billing(c, documents_budget_s=0)  # documents are timed on their own below
    first = time.perf_counter() - t1
    issued = [i for i in bill.list_invoices(ns) if i["status"] == "paid"]
    print(f"billing run: {len(result.invoices)} invoices for {result.subscriptions} subscriptions "
          f"({result.points} billing points) in {first:.1f} s = {len(result.invoices) / first:,.0f} invoices/s; "
          f"{len(issued)} issued and paid (sandbox); without documents and notifications (no budget set)", flush=True)
    t3 = time.perf_counter()
    docs = render_pending_documents(c, budget_s=15)
    spent = time.perf_counter() - t3
    print(f"documents: {docs} invoices rendered to HTML + PDF and stored in {spent:.1f} s = {docs / spent:.1f}/s "
          "(the rest are rendered by later runs or on first request)", flush=True)
    t2 = time.perf_counter()
    again = run_billing(c, documents_budget_s=0)
    print(f"re-run: {len(again.invoices)} invoices in {time.perf_counter() - t2:.1f} s (idempotent)", flush=True)
    assert not again.invoices and len(result.invoices) == n


if __name__ == "__main__":
    main()
