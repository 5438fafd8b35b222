"""LLM cost-report latency in the embedded engine (chdb + SQLite).

N `llm` events (default 200,000) over November 2026: 12 models of 5 providers (one unknown to genai-prices,
priced by an override), 200 subjects (customer = subject; each customer's calls come from one of 9 teams),
4 features. As in bench/query.py the events' meter values are loaded straight into `meter_values` with SQL (4
token meters, so 4 N rows; the materialized view fills the one-minute rollup as on ingest); the ingest path has
its own benchmark. Then the cost report's use-case (GET /api/v1/llm/costs) runs with DAY windows by
provider+model, by team, with HOUR windows, for one subject, by customer, and `llm_cost` (the billing figure)
for one subject's month. The first call also loads genai-prices' bundled table (reported apart).
Budget: every report under 1 s over 200,000 events (issue 17). The wall time is printed beside the CPU time the
process used (chdb runs its threads in it): on a machine other work also loads, the wall time grows, the CPU time
much less.
Run: .venv/bin/python -m bench.llm_costs [--events 200000] [--runs 15]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import UTC, datetime

MODELS = ["openai/gpt-4o", "openai/gpt-4o-mini", "openai/o3-mini", "openai/gpt-4.1", "anthropic/claude-3-5-haiku-latest",
          "anthropic/claude-sonnet-4-5", "anthropic/claude-opus-4-1", "google/gemini-2.5-pro", "google/gemini-2.5-flash",
          "mistral/mistral-large-latest", "mistral/mistral-small-latest", "inhouse/house-1"]
BUDGET_MS = 1000
# per token type: the value of event `number` (h = cityHash64(number)); cached + cache write < input always
VALUES = {"input": "500 + h % 20000", "output": "1 + intDiv(h, 1048576) % 3000",
          "cachedInput": "intDiv(h, 1073741824) % 400", "cacheWrite": "intDiv(h, 1099511627776) % 7 * 10"}
LOAD = """
INSERT INTO meter_values (namespace, meter_id, subject, time, value, value_str, group_by, source, id)
SELECT {ns:String}, {meter:String}, customer,
       toDateTime64('2026-11-01 00:00:00', 3, 'UTC') + toIntervalMillisecond(number * {step:UInt64}),
       toDecimal128(%s, 18), '',
       map('provider', splitByChar('/', pm)[1], 'model', splitByChar('/', pm)[2], 'customer', customer,
           'team', concat('team-', toString(h %% 200 %% 9)), 'feature', concat('feature-', toString(intDiv(h, 1800) %% 4))),
       'bench', toString(number)
FROM (SELECT number, cityHash64(number) AS h, concat('customer-', toString(h %% 200)) AS customer,
             {models:Array(String)}[1 + intDiv(h, 7200) %% 12] AS pm
      FROM numbers({rows:UInt64}))
"""


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args(argv)

    from billow.adapters.sql_llm_prices import SqlLlmPriceStore
    from billow.bootstrap import Settings, build, install
    from billow.domain.llm import TOKEN_METERS
    from billow.services import llm_costs

    with tempfile.TemporaryDirectory() as tmp:
        c = build(Settings(data_dir=tmp))
        install(c)
        ns, now = c.namespace, c.clock.now()
        meters, _ = llm_costs.install_llm_meters(ns, meta=c.meta, usage=c.usage, now=now, sink_lock=c.sink_lock)
        store = c.store(SqlLlmPriceStore)
        llm_costs.create_price(ns, {"provider": "inhouse", "model": "house-1", "inputPerMillionTokens": "0.5",
                                    "outputPerMillionTokens": "1.5"}, store=store, now=now)
        t0 = time.perf_counter()
        step = 30 * 24 * 3600 * 1000 // args.events
        for meter in meters:
            token_type = next(t for t, (slug, _) in TOKEN_METERS.items() if slug == meter.slug)
            c.usage._command(LOAD % VALUES[token_type], {"ns": ns, "meter": meter.id, "step": step,  # type: ignore[attr-defined]
                                                         "rows": args.events, "models": MODELS})
        load = time.perf_counter() - t0
        print(f"loaded {args.events:,} llm events x {len(meters)} token meters in {load:.1f} s")

        base = {"from": ["2026-11-01T00:00:00Z"], "to": ["2026-11-30T23:59:59.999Z"]}
        t0 = time.perf_counter()
        first = llm_costs.cost_report(ns, {**base, "groupBy": ["model"]}, meta=c.meta, usage=c.usage, store=store)
        print(f"first report (loads genai-prices' table): {(time.perf_counter() - t0) * 1000:.0f} ms; "
              f"total {first['total']} USD, complete={first['complete']}, {len(first['data'])} rows")

        def bench(label: str, qs: dict[str, list[str]]) -> None:
            times: list[float] = []
            cpu: list[float] = []
            while len(times) < args.runs and sum(times) < 20_000:  # at most ~20 s per case
                s, p = time.perf_counter(), time.process_time()
                out = llm_costs.cost_report(ns, qs, meta=c.meta, usage=c.usage, store=store)
                times.append((time.perf_counter() - s) * 1000)
                cpu.append((time.process_time() - p) * 1000)
            times.sort()
            print(f"{label}: median {statistics.median(times):.1f} ms (budget < {BUDGET_MS} ms), max {times[-1]:.1f} ms, "
                  f"min {times[0]:.1f} ms ({len(times)} runs); CPU of this process (chdb's threads included) median "
                  f"{statistics.median(cpu):.0f} ms; {len(out['data'])} rows, total {out['total']}")

        bench("DAY x provider+model, 30 days", {**base, "groupBy": ["provider", "model"]})
        bench("DAY x team (priced per model underneath)", {**base, "groupBy": ["team"]})
        bench("HOUR x model, 30 days", {**base, "groupBy": ["model"], "windowSize": ["HOUR"]})
        bench("DAY, one subject, no groupBy", {**base, "subject": ["customer-7"]})
        bench("DAY x customer (200 customers x 12 models x 30 days underneath)", {**base, "groupBy": ["customer"]})

        times = []
        for _ in range(args.runs):
            s = time.perf_counter()
            cost = llm_costs.llm_cost(ns, subject="customer-7", period_start=datetime(2026, 11, 1, tzinfo=UTC),
                                      period_end=datetime(2026, 12, 1, tzinfo=UTC), meta=c.meta, usage=c.usage,
                                      store=store)
            times.append((time.perf_counter() - s) * 1000)
        print(f"llm_cost(subject, November): median {statistics.median(times):.1f} ms, {cost} USD")
        c.close()


if __name__ == "__main__":
    main()
