"""What an ingestion receipt costs (issue 21: "a receipt adds < 10 % to ingest"), over HTTP against `billow serve`.

A fresh data dir is preloaded with --preload events (default 10 M, as bench.ingest stores them: raw events and values,
so the dedup ledger and every rollup hold them), then one `billow serve` on it takes the same kind of batches of new
events (bench.ingest.batches, --batch events each) posted with and without `Prefer: return=representation`, in turn
(with, without; then without, with; ...), over one keep-alive connection, after one warm batch each way. Per request
the server process's CPU seconds (user + system, all threads, chdb's included: /proc) and the wall time are summed per
way, and apart the CPU of the engine's background merges (MergeMutate threads): both ways insert the same events and
cause the same merges, but a merge's CPU falls on whichever request it overlaps, more often on the longer one, so the
verdict is on the CPU per event with the merges shared evenly (shared_merges_overhead); printed beside it: the CPU as
measured per request, without the merges, and the wall-clock rate, each way and as the receipt's overhead. CPU is the figure other processes' load does not inflate; the load average is printed beside.
Every receipt is checked (200, every event accepted), and at the end the meter's total against what was sent.
Run: .venv/bin/python -m bench.receipts [--events 200000] [--batch 5000] [--preload 10000000]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import tempfile
import time
from decimal import Decimal
from typing import Any

from bench.ingest import METER, _cpu_of, _run, _threads_cpu, batches, load, serving

PREFER = "return=representation"


def receipt_verdict(overhead: float) -> str:
    """Issue 21's budget: a receipt adds < 10 % to ingest."""
    return f"budget < 10 %: {'ok' if overhead < 0.10 else 'OVER'}"


def shared_merges_overhead(cpu0: float, merges0: float, cpu1: float, merges1: float) -> float:
    """The receipt's CPU overhead with the engine's background merges shared evenly between the two ways: both insert
    the same events into the same tables, so they cause the same merges, but a merge's CPU falls on whichever request
    it overlaps, more often on the longer one (a receipt's request also waits for its row's durable commit)."""
    half = (merges0 + merges1) / 2
    return (cpu1 - merges1 + half) / (cpu0 - merges0 + half) - 1


def _merges(before: dict[str, float], after: dict[str, float]) -> float:
    """CPU seconds the engine's background merges (its MergeMutate threads) spent between two snapshots: they merge
    what earlier requests of either way inserted, so they fall on whichever request they overlap."""
    return sum(v - before.get(k, 0.0) for k, v in after.items() if k.startswith("MergeMutate"))


def measure(port: int, pid: int, n: int, size: int) -> dict[str, Any]:
    """The same batches of new events with and without a receipt, in turn; per way: events, wall and CPU seconds."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.request("POST", "/api/v1/meters", json.dumps(METER), {"Content-Type": "application/json"})
    conn.getresponse().read()  # 201, or 409 when the preload made it
    ways = {False: [json.dumps(b).encode() for b in batches(n + size, size, "plain-")],
            True: [json.dumps(b).encode() for b in batches(n + size, size, "receipt-")]}
    sent = sum(e["data"]["tokens"] for w in ("plain-", "receipt-") for b in batches(n + size, size, w) for e in b)

    def post(body: bytes, receipt: bool) -> None:
        headers = {"Content-Type": "application/cloudevents-batch+json"}
        if receipt:
            headers["Prefer"] = PREFER
        conn.request("POST", "/api/v1/events", body, headers)
        r = conn.getresponse()
        out = r.read()
        if receipt:
            doc = json.loads(out)
            assert r.status == 200 and doc["accepted"] == doc["events"] == size and not doc["duplicates"], \
                (r.status, out[:300])
        else:
            assert r.status == 204, (r.status, out[:300])

    post(ways[False][0], False)  # warm: each way's first request (the key filter's first build among them)
    post(ways[True][0], True)
    spent = {False: [0.0, 0.0, 0.0], True: [0.0, 0.0, 0.0]}  # way -> [wall, cpu, cpu of the engine's merges]
    for k in range(1, len(ways[False])):
        for receipt in ((True, False) if k % 2 else (False, True)):
            th0 = _threads_cpu(pid)
            t0, c0 = time.perf_counter(), _cpu_of(pid)
            post(ways[receipt][k], receipt)
            spent[receipt][0] += time.perf_counter() - t0
            spent[receipt][1] += _cpu_of(pid) - c0
            spent[receipt][2] += _merges(th0, _threads_cpu(pid))
    conn.request("GET", "/api/v1/meters/tokens/query")
    r = conn.getresponse()
    rows = json.loads(r.read())["data"]
    total = sum((Decimal(str(x["value"])) for x in rows), Decimal(0))
    return {"events": n, "plain": spent[False], "receipt": spent[True], "sent": sent, "total": str(total)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=200_000, help="events each way (with and without a receipt)")
    ap.add_argument("--batch", type=int, default=5_000, help="events per request")
    ap.add_argument("--preload", type=int, default=10_000_000, help="events stored before measuring")
    args, _ = ap.parse_known_args(argv)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory(dir=os.environ.get("BILLOW_BENCH_DIR")) as tmp:
        loaded = _run(f"import sys; sys.path.insert(0, {here!r}); from bench.ingest import preload; "
                      f"preload({tmp!r}, {args.preload})")
        print(f"store preloaded with {args.preload:,} events (raw + values) in {loaded['seconds']:.1f} s; {load()}"
              if args.preload else "store empty", flush=True)
        with serving(tmp) as (proc, port):
            before = load()
            r = measure(port, proc.pid, args.events, args.batch)
    n = r["events"]
    (w0, c0, m0), (w1, c1, m1) = r["plain"], r["receipt"]
    for label, wall, cpu, merges in (("without a receipt (204)", w0, c0, m0), ("with a receipt (200)    ", w1, c1, m1)):
        print(f"  HTTP POST /api/v1/events {label}, batches of {args.batch:,}, {args.preload:,} stored: "
              f"{n / wall:,.0f} events/s, {cpu / n * 1e6:.1f} us server CPU/event, of which the engine's background "
              f"merges {merges / n * 1e6:.1f} ({n:,} events)", flush=True)
    shared = shared_merges_overhead(c0, m0, c1, m1)
    print(f"  receipt overhead: server CPU/event {shared * 100:+.1f} % with the background merges shared evenly "
          f"[{receipt_verdict(shared)}] (as measured per request {(c1 / c0 - 1) * 100:+.1f} % "
          f"[{receipt_verdict(c1 / c0 - 1)}], without the merges {((c1 - m1) / (c0 - m0) - 1) * 100:+.1f} %); "
          f"wall {(w1 / w0 - 1) * 100:+.1f} % [{receipt_verdict(w1 / w0 - 1)}]; {before} before, {load()} after",
          flush=True)
    expected = Decimal(sum(i % 1000 for i in range(args.preload)) + r["sent"])
    print(f"  total of the bench meter: {r['total']} (expected {expected}: "
          f"{'ok' if Decimal(r['total']) == expected else 'MISMATCH'})", flush=True)


if __name__ == "__main__":
    main()
