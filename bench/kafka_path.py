"""The production usage path on one machine: ingest use-case -> Kafka (idempotent producer, acks=all) ->
MSK-trigger stand-in -> usage sink handler -> ClickHouse engine (chdb via clickhouse-connect).

Prints end-to-end throughput (first publish until every event is queryable; issue 17's budget: >= 50,000 events/s)
with the sink invocations it took, the two halves apart (ingest -> broker ack, then the sink draining that backlog),
and the lag from a publish being acknowledged to its event being visible in a meter query (median, p95, p99 and max
over single-event batches; budget: p99 < 1 s), each line with the 1-minute load average (the machine is shared:
figures under load are not comparable; CPU per event is, much more). The CPU figures are this process's, every
thread (chdb's too); the broker's own CPU (Tansu, and LocalStack when Tansu stores in S3: each partition write and
offset commit is S3 requests) is printed per event too when BILLOW_BENCH_BROKER_PIDS names its processes
(comma-separated pids): on one machine it competes for the same cores.
Needs a broker: BILLOW_TEST_KAFKA=host:port (`eval "$(bash scripts/services.sh start)"` starts Tansu). Each run uses
a namespace (and so a topic and consumer group) of its own.
Run: .venv/bin/python -m bench.kafka_path [--events 100000] [--batch 5000] [--lag-samples 100]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from decimal import Decimal
from typing import Any

from bench.ingest import METER, batches

E2E_BUDGET = 50_000  # events/s, first publish until all queryable (issue 17)
LAG_BUDGET_MS = 1000  # ack -> queryable, p99


def broker_cpu() -> float:
    """CPU seconds (user + system) the processes named in BILLOW_BENCH_BROKER_PIDS have used; 0 if none named."""
    total = 0.0
    for pid in filter(None, os.environ.get("BILLOW_BENCH_BROKER_PIDS", "").split(",")):
        with open(f"/proc/{pid.strip()}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def broker_note(cpu_s: float, events: int) -> str:
    if not os.environ.get("BILLOW_BENCH_BROKER_PIDS"):
        return ""
    return f"; broker processes CPU {cpu_s / events * 1e6:.1f} us/event"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=5000)
    ap.add_argument("--lag-samples", type=int, default=100)
    args, _ = ap.parse_known_args()
    bootstrap = os.environ.get("BILLOW_TEST_KAFKA")
    if not bootstrap:
        sys.exit("bench.kafka_path: set BILLOW_TEST_KAFKA (eval \"$(bash scripts/services.sh start)\")")

    from billow.adapters.kafka import KafkaSinkPoller
    from billow.bootstrap import Settings, build, install
    from billow.bus import topic_for
    from billow.domain.usage import UsageQuery, final_value
    from billow.services.ingest import ingest_events
    from billow.services.meters import create_meter
    from functions.usage_sink.handler import lambda_handler as sink

    ns = "bench" + uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(namespace=ns, data_dir=tmp, bus="kafka", kafka_bootstrap=bootstrap)
        c = build(settings)
        install(c)
        meter = create_meter(ns, METER, meta=c.meta, usage=c.usage, now=c.clock.now(), sink_lock=c.sink_lock)
        assert c.bus is not None
        c.bus.ensure_topic(topic_for(ns))  # type: ignore[attr-defined]
        invocations = [0]

        def deliver(ev: dict[str, Any]) -> Any:
            invocations[0] += 1
            return sink(ev, None)  # type: ignore[arg-type]

        poller = KafkaSinkPoller(settings.kafka_config(), [topic_for(ns)], deliver,
                                 group=f"bench-{ns}", batch_size=5000, batch_window_s=0.05, session_timeout_ms=2000,
                                 lock=c.sink_lock)
        stop = threading.Event()

        def consume() -> None:
            while not stop.is_set():
                poller.poll_once()

        worker = threading.Thread(target=consume, daemon=True)
        worker.start()

        def count() -> int:
            rows = c.usage.aggregate(UsageQuery(ns, meter.id, "COUNT", None, None, None, "UTC", None, [], False, None))
            return int(final_value("COUNT", rows[0])) if rows else 0

        # Warm up: the consumer group join and first producer session are not part of the figures.
        ingest_events(ns, batches(1, 1, "w")[0], meta=c.meta, bus=c.bus, now=c.clock.now())
        while count() < 1:
            time.sleep(0.01)

        work = batches(args.events, args.batch, "b")
        calls0, events0 = invocations[0], poller.events
        t0, cpu0, broker0 = time.perf_counter(), time.process_time(), broker_cpu()
        for b in work:
            ingest_events(ns, b, meta=c.meta, bus=c.bus, now=c.clock.now())
        t_acked = time.perf_counter() - t0
        while count() < args.events + 1:
            time.sleep(0.05)  # each look is a chdb query: its CPU counts in the figures
        dt = time.perf_counter() - t0
        cpu = (time.process_time() - cpu0) / args.events * 1e6
        rate = args.events / dt
        calls = invocations[0] - calls0
        print(f"kafka path: {args.events} events (batches of {args.batch}): all acked by the broker after "
              f"{t_acked:.2f} s ({args.events / t_acked:,.0f} events/s publish), all queryable after {dt:.2f} s "
              f"= {rate:,.0f} events/s end to end (budget >= {E2E_BUDGET:,}: {'ok' if rate >= E2E_BUDGET else 'OVER'}); "
              f"{calls} sink invocations of {(poller.events - events0) / max(calls, 1):,.0f} events on average; "
              f"CPU {cpu:.1f} us/event, every thread of the process{broker_note(broker_cpu() - broker0, args.events)} "
              f"(load {os.getloadavg()[0]:.1f})")

        # The two halves apart, as two Lambdas run them: ingest publishing with no sink in the process, then
        # the sink draining the backlog.
        stop.set()
        worker.join(timeout=10)
        base = count()
        work = batches(args.events, args.batch, "split")
        t0, cpu0, broker0 = time.perf_counter(), time.process_time(), broker_cpu()
        for b in work:
            ingest_events(ns, b, meta=c.meta, bus=c.bus, now=c.clock.now())
        t_pub, cpu_pub = time.perf_counter() - t0, (time.process_time() - cpu0) / args.events * 1e6
        broker_pub = broker_cpu() - broker0
        stop.clear()
        worker = threading.Thread(target=consume, daemon=True)
        calls0 = invocations[0]
        t0, cpu0, broker0 = time.perf_counter(), time.process_time(), broker_cpu()
        worker.start()
        while count() < base + args.events:
            time.sleep(0.05)
        t_sink, cpu_sink = time.perf_counter() - t0, (time.process_time() - cpu0) / args.events * 1e6
        print(f"kafka path, halves apart: ingest -> broker ack {args.events / t_pub:,.0f} events/s "
              f"(CPU {cpu_pub:.1f} us/event{broker_note(broker_pub, args.events)}); usage sink draining the backlog "
              f"{args.events / t_sink:,.0f} events/s in {invocations[0] - calls0} invocations (CPU {cpu_sink:.1f} "
              f"us/event, the meter queries that watch it included{broker_note(broker_cpu() - broker0, args.events)}) "
              f"(load {os.getloadavg()[0]:.1f})")

        lags = []
        for i in range(args.lag_samples):
            before = count()
            ingest_events(ns, batches(1, 1, f"lag{i}-")[0], meta=c.meta, bus=c.bus, now=c.clock.now())
            t1 = time.perf_counter()
            while count() == before:
                time.sleep(0.002)
            lags.append((time.perf_counter() - t1) * 1000)
        lags.sort()
        if lags:
            p95 = lags[max(0, int(len(lags) * 0.95) - 1)]
            p99 = lags[max(0, int(len(lags) * 0.99) - 1)]
            print(f"kafka path: lag from broker ack to queryable, {len(lags)} samples: median "
                  f"{statistics.median(lags):.0f} ms, p95 {p95:.0f} ms, p99 {p99:.0f} ms (budget p99 < {LAG_BUDGET_MS} "
                  f"ms: {'ok' if p99 < LAG_BUDGET_MS else 'OVER'}), max {lags[-1]:.0f} ms (load {os.getloadavg()[0]:.1f})")
        stop.set()
        worker.join(timeout=10)
        assert Decimal(count()) == 2 * args.events + 1 + args.lag_samples
        poller.close()
        c.close()


if __name__ == "__main__":
    main()
