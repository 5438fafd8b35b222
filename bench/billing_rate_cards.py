"""Billing run with many usage rate cards, embedded (chdb + SQLite): the shape of an AI company's price list. One
`tokens` meter (SUM, groupBy {model, type}); N features (default 150), each the meter filtered to one model (most
by meterGroupByFilters, every fifth by advancedMeterGroupByFilters); a monthly plan with N usage rate cards, one per
feature (unit prices, every tenth graduated tiers); C customers (default 100), one subject each, subscribed from
2026-04-01; a month of usage (default 200,000 events: subject, model and type in turn, exact decimal token counts)
ingested through the real path (services.ingest.ingest_events -> in-process bus -> usage sink -> chdb). Then the run
at the period's end that bills every customer one invoice of N usage lines, and a re-run that must bill nothing.

Each run is measured on the same store: the meta database (SQLite) is copied after the set-up and put back before
each run (the run writes only there). Printed per run: wall and CPU seconds (this process, every thread: chdb runs
in it), the usage-store statements the run sent, by the UsageStore method that sent them (aggregate: the rated usage,
line_digests: the lineage digests, ...), and the cost per invoice line (wall / lines). The documents (HTML + PDF of
every invoice) are timed on their own after the runs, with the usage-store statements they send.

What "billing run" includes: the entitlement sync, rating, lineage, invoices + marks committed and issued through the
sandbox app (paid); not the documents (timed apart) nor notifications (no rule defined).
Budget: none is set (issue 17 sets none for this shape); target: the cost per line flat in N and < 5 ms/line, and
the usage-store statements per run not growing with the number of features that share a meter.
Run: .venv/bin/python -m bench.billing_rate_cards [--cards 150] [--customers 100] [--events 200000] [--runs 2]
"""

from __future__ import annotations

import argparse
import contextvars
import gc
import shutil
import tempfile
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.billing_run import copy_db
from bench.ingest import load
from billow.adapters.sql import SqlMetaStore
from billow.adapters.sql_billing import SqlBillingStore
from billow.adapters.sql_catalog import SqlCatalogStore
from billow.bootstrap import Settings, build, install
from billow.services import billing, catalog, directory, features, subscriptions
from billow.services.ingest import ingest_events
from billow.services.jobs import billing_run as run_billing

TYPES = ("input", "output", "cached")
BATCH = 5_000  # events per ingest call


class Clock:
    def __init__(self) -> None:
        self.t = datetime(2026, 3, 31, tzinfo=UTC)

    def now(self) -> datetime:
        return self.t


def model(i: int) -> str:
    return f"model-{i:03d}"


def rate_card(i: int) -> dict[str, Any]:
    price: dict[str, Any] = {"type": "unit", "amount": f"0.{i % 9 + 1:d}{i:03d}"}
    if i % 10 == 3:
        price = {"type": "tiered", "mode": "graduated", "tiers": [
            {"upToAmount": "1000", "unitPrice": {"type": "unit", "amount": "0.002"}},
            {"upToAmount": "100000", "unitPrice": {"type": "unit", "amount": "0.0015"}},
            {"unitPrice": {"type": "unit", "amount": "0.001"}}]}
    return {"type": "usage_based", "key": f"tokens_{i:03d}", "name": f"Tokens {model(i)}",
            "featureKey": f"tokens_{i:03d}", "billingCadence": "P1M", "price": price}


def feature(i: int) -> dict[str, Any]:
    body: dict[str, Any] = {"key": f"tokens_{i:03d}", "name": f"Tokens {model(i)}", "meterSlug": "tokens"}
    if i % 5 == 4:
        body["advancedMeterGroupByFilters"] = {"model": {"$eq": model(i)}}
    else:
        body["meterGroupByFilters"] = {"model": model(i)}
    return body


def events(n: int, *, customers: int, cards: int) -> list[dict[str, Any]]:
    """`n` events spread over April 2026: subject, model and type in turn (every customer uses every model when
    n >= customers * cards), token counts exact decimals."""
    step = 30 * 24 * 3600 * 1000 // n
    start = datetime(2026, 4, 1, tzinfo=UTC)
    out = []
    for k in range(n):
        t = start + timedelta(milliseconds=k * step)
        out.append({"specversion": "1.0", "id": f"e{k}", "source": "bench", "type": "prompt",
                    "subject": f"s{k % customers}", "time": t.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
                    "data": {"tokens": f"{k % 997}.{k % 10}", "model": model((k // customers) % cards),
                             "type": TYPES[k % 3]}})
    return out


_METHOD: contextvars.ContextVar[str] = contextvars.ContextVar("usage_method", default="?")


class Statements(Counter[str]):
    """Statements by method, and the wall seconds they took (`spent`)."""

    def __init__(self) -> None:
        super().__init__()
        self.spent: defaultdict[str, float] = defaultdict(float)

    def clear(self) -> None:
        super().clear()
        self.spent.clear()


def count_statements(store: Any) -> Statements:
    """Usage-store statements sent from now on, by the public UsageStore method that sent them (one call may send
    several: a LATEST fill, a key-filter read), with the wall seconds each kind took."""
    sent = Statements()
    run_query, command = store._run_query, store._command

    def counted_query(sql: str, params: dict[str, Any], *a: Any, **kw: Any) -> Any:
        sent[_METHOD.get()] += 1
        t0 = time.perf_counter()
        try:
            return run_query(sql, params, *a, **kw)
        finally:
            sent.spent[_METHOD.get()] += time.perf_counter() - t0

    def counted_command(sql: str, params: dict[str, Any] | None = None) -> None:
        sent[_METHOD.get() + " (command)"] += 1
        command(sql, params)

    store._run_query, store._command = counted_query, counted_command
    for name in [n for n in dir(type(store)) if not n.startswith("_") and callable(getattr(type(store), n))]:
        real = getattr(store, name)

        def method(*a: Any, _real: Any = real, _name: str = name, **kw: Any) -> Any:
            token = _METHOD.set(_name) if _METHOD.get() == "?" else None
            try:
                return _real(*a, **kw)
            finally:
                if token is not None:
                    _METHOD.reset(token)

        setattr(store, name, method)
    return sent


def _settle(usage: Any) -> float:
    """Wait (at most 10 minutes) until chdb has merged what the set-up inserted (a merge running in one run and not
    another would count as that run's CPU)."""
    t0 = time.perf_counter()
    while usage._query("SELECT count() FROM system.merges", {})[0][0] and time.perf_counter() - t0 < 600:
        time.sleep(1)
    return time.perf_counter() - t0


def statements_text(sent: Statements) -> str:
    return (f"{sum(sent.values())} in {sum(sent.spent.values()):.2f} s wall (" + ", ".join(
        f"{k} {v}: {sent.spent[k]:.2f} s" for k, v in sorted(sent.items(), key=lambda kv: -kv[1])) + ")")


def verdict(per_line_ms: float) -> str:
    return f"no budget set; target < 5 ms/line: {'met' if per_line_ms < 5 else 'not met'}"


def main(argv: list[str] | None = None) -> None:
    from functions.usage_sink.handler import lambda_handler as sink

    ap = argparse.ArgumentParser()
    ap.add_argument("--cards", type=int, default=150, help="usage rate cards (features on the one meter)")
    ap.add_argument("--customers", type=int, default=100)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=2, help="billing runs measured, each from the same set-up")
    ap.add_argument("--documents", type=int, default=10, help="invoices whose documents are timed (0: none)")
    args, _ = ap.parse_known_args(argv)
    n, cs = args.cards, args.customers
    data_dir = tempfile.mkdtemp(prefix="billow-bench-cards-")
    c = build(Settings.parse(dict(data_dir=data_dir, meters=[
        {"slug": "tokens", "eventType": "prompt", "aggregation": "SUM", "valueProperty": "$.tokens",
         "groupBy": {"model": "$.model", "type": "$.type"}}])), deliver=lambda ev: sink(ev, None))
    clock = Clock()
    c.clock = clock  # type: ignore[assignment]
    install(c)
    ns, now = c.namespace, clock.now()
    cat, bill = c.store(SqlCatalogStore), c.store(SqlBillingStore)
    t0 = time.perf_counter()
    for i in range(n):
        features.create_feature(ns, feature(i), store=c.entitlements, meta=c.meta, now=now)
    plan = catalog.create(ns, "plan", {"key": "ai", "name": "AI", "currency": "USD", "billingCadence": "P1M",
                                       "phases": [{"key": "default", "name": "Default",
                                                   "rateCards": [rate_card(i) for i in range(n)]}]},
                          store=cat, now=now)
    catalog.publish(ns, "plan", plan["id"], store=cat, features=c.entitlements, now=now)
    billing.create_profile(ns, {"name": "Default", "default": True, "supplier": {"name": "Bench Inc."},
                                "apps": {"invoicing": "sandbox", "payment": "sandbox", "tax": "sandbox"}},
                           store=bill, now=now)
    for i in range(cs):
        directory.create_customer(ns, {"key": f"c{i}", "name": f"Customer {i}",
                                       "usageAttribution": {"subjectKeys": [f"s{i}"]}}, meta=c.meta, now=now)
        subscriptions.create(ns, {"plan": {"key": "ai"}, "customerKey": f"c{i}", "timing": "2026-04-01T00:00:00Z"},
                             store=cat, meta=c.meta, ents=c.entitlements, now=now)
    t1 = time.perf_counter()
    clock.t = datetime(2026, 4, 30, 23, 59, tzinfo=UTC)
    assert c.bus is not None
    evs = events(args.events, customers=cs, cards=n)
    for k in range(0, len(evs), BATCH):
        ingest_events(ns, evs[k:k + BATCH], meta=c.meta, bus=c.bus, now=clock.now())
    t2 = time.perf_counter()
    print(f"set-up: {n} features and usage rate cards, {cs} customers subscribed in {t1 - t0:.1f} s; {len(evs):,} "
          f"events ingested (ingest_events -> bus -> sink -> chdb) in {t2 - t1:.1f} s", flush=True)
    del evs

    usage = c.usage._real() if hasattr(c.usage, "_real") else c.usage
    db = str((Path(data_dir) / "billow.db").resolve())
    snapshot = str(Path(data_dir) / "before-run.db")
    assert isinstance(c.meta, SqlMetaStore)
    engine = c.meta.engine
    engine.dispose()
    copy_db(db, snapshot)
    print(f"the engine's merges of the set-up done {_settle(usage):.0f} s later", flush=True)
    sent = count_statements(usage)
    clock.t = datetime(2026, 5, 1, 0, 10, tzinfo=UTC)
    walls, cpus = [], []
    lines = 0
    for k in range(args.runs):
        if k:
            engine.dispose()
            copy_db(snapshot, db)
        sent.clear()
        gc.collect()
        before = load()
        w0, c0 = time.perf_counter(), time.process_time()
        result = run_billing(c, documents_budget_s=0)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        assert len(result.invoices) == cs and not result.failures, (len(result.invoices), result.failures[:3])
        lines = sum(1 for inv in result.invoices for ln in inv["lines"] if ln.get("lineage"))
        assert lines == cs * min(n, args.events // cs), lines  # every customer used every model
        walls.append(wall)
        cpus.append(cpu)
        print(f"billing run {k + 1}: {cs} invoices, {lines:,} usage lines with lineage ({n} rate cards) in {wall:.2f} s "
              f"wall, {cpu:.2f} s CPU = {wall / lines * 1000:.2f} ms wall, {cpu / lines * 1000:.2f} ms CPU per line "
              f"[{verdict(wall / lines * 1000)}]; usage-store statements: {statements_text(sent)}; {before} before, "
              f"{load()} after", flush=True)
    w, cp = min(walls), min(cpus)
    print(f"billing run, best of {len(walls)}: {w:.2f} s wall, {cp:.2f} s CPU for {lines:,} lines = "
          f"{w / lines * 1000:.2f} ms wall / {cp / lines * 1000:.2f} ms CPU per line, "
          f"{w / cs * 1000:.0f} ms per customer ({n} rate cards) [{verdict(w / lines * 1000)}]", flush=True)
    if args.documents:
        sent.clear()
        invoices = [i for i in bill.list_invoices(ns) if i["status"] == "paid"][:args.documents]
        apps = c.billing_apps()
        d0, dc0 = time.perf_counter(), time.process_time()
        for inv in invoices:
            apps.documents(inv)
        dw, dc = time.perf_counter() - d0, time.process_time() - dc0
        dl = sum(len(i["lines"]) for i in invoices)
        print(f"documents: {len(invoices)} invoices of {dl // max(len(invoices), 1)} lines rendered to HTML + PDF and "
              f"stored in {dw:.2f} s wall, {dc:.2f} s CPU = {dw / len(invoices) * 1000:.0f} ms per invoice, "
              f"{dw / dl * 1000:.2f} ms per line (no budget set); usage-store statements: {statements_text(sent)}",
              flush=True)
    sent.clear()
    r0 = time.perf_counter()
    again = run_billing(c, documents_budget_s=0)
    print(f"re-run: {len(again.invoices)} invoices in {time.perf_counter() - r0:.2f} s (idempotent); usage-store "
          f"statements: {statements_text(sent)}", flush=True)
    assert not again.invoices
    c.close()
    shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
