"""Batch-ingest throughput into the embedded store (chdb + SQLite + in-process bus).

Measures two paths, each in a fresh data dir: the ingest use-case called directly (validation, meter
extraction, dedup lookup, chdb insert) and real HTTP against the embedded host (`billow serve`'s server).
Run: .venv/bin/python -m bench.ingest [--events 200000] [--batch 5000]
"""

from __future__ import annotations

import argparse
import http.client
import json
import queue
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

METER = {"slug": "tokens", "eventType": "prompt", "aggregation": "SUM", "valueProperty": "$.tokens",
         "groupBy": {"model": "$.model"}}


def batches(n: int, size: int, prefix: str) -> list[list[dict[str, Any]]]:
    out = []
    for start in range(0, n, size):
        out.append([{"specversion": "1.0", "id": f"{prefix}{i}", "source": "bench", "type": "prompt",
                     "subject": f"customer-{i % 100}", "time": f"2026-11-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:00Z",
                     "data": {"tokens": i % 1000, "model": f"model-{i % 8}"}} for i in range(start, min(n, start + size))])
    return out


def budget(size: int) -> str:
    """Issue 17's budget for this batch size."""
    want = {5_000: "80,000", 10_000: "100,000"}.get(size)
    return f"budget >= {want} events/s" if want else "issue 17 sets budgets for batches of 5,000 and 10,000 only"


def service_path(n: int, size: int) -> None:
    from billow.bootstrap import Settings, build, install
    from billow.services.ingest import ingest_events
    from billow.services.meters import create_meter
    from functions.usage_sink.handler import lambda_handler as sink

    with tempfile.TemporaryDirectory() as tmp:
        c = build(Settings(data_dir=tmp), deliver=lambda ev: sink(ev, None))  # type: ignore[arg-type]
        install(c)
        create_meter(c.namespace, METER, meta=c.meta, usage=c.usage, now=c.clock.now(), sink_lock=c.sink_lock)
        work = batches(n, size, "s")
        assert c.bus is not None
        t0 = time.perf_counter()
        for b in work:
            ingest_events(c.namespace, b, meta=c.meta, bus=c.bus, now=c.clock.now())
        dt = time.perf_counter() - t0
        print(f"ingest (use-case -> bus -> sink -> chdb): {n} events in {dt:.2f} s = {n / dt:,.0f} events/s "
              f"(batches of {size}; {budget(size)}; store empty at the start)")
        c.close()


def http_path(n: int, size: int) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen([sys.executable, "-m", "billow.cli", "serve", "--port", str(port), "--data-dir", tmp],
                                stdout=subprocess.PIPE, text=True)
        try:
            wait_ready(proc, timeout=120)
            _measure_http(port, n, size)
        finally:
            proc.terminate()
            proc.wait(timeout=60)


def wait_ready(proc: subprocess.Popen[str], timeout: float) -> None:
    """Wait until the server prints that it is ready; a RuntimeError if it exits first or is not ready within
    `timeout` seconds. Its output is drained from then on (a full pipe would stall it)."""
    assert proc.stdout is not None
    lines: queue.Queue[str] = queue.Queue()

    def drain() -> None:
        for line in proc.stdout or ():
            lines.put(line)

    threading.Thread(target=drain, daemon=True).start()
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            if "ready" in lines.get(timeout=min(left, 0.5)):
                return
        except queue.Empty:
            if proc.poll() is not None and lines.empty():
                raise RuntimeError(f"the server exited with {proc.returncode} before it was ready") from None
    raise RuntimeError(f"the server was not ready within {timeout:.0f} s")


def _measure_http(port: int, n: int, size: int) -> None:
    """Every request has a bounded wait (120 s): a server that dies or hangs is an error, never a spin."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.request("POST", "/api/v1/meters", json.dumps(METER), {"Content-Type": "application/json"})
    conn.getresponse().read()
    bodies = [json.dumps(b).encode() for b in batches(n, size, "h")]
    t0 = time.perf_counter()
    for body in bodies:
        conn.request("POST", "/api/v1/events", body, {"Content-Type": "application/cloudevents-batch+json"})
        r = conn.getresponse()
        r.read()
        assert r.status == 204, r.status
    dt = time.perf_counter() - t0
    conn.request("GET", "/api/v1/meters/tokens/query")
    total = json.loads(conn.getresponse().read())["data"][0]["value"]
    expected = sum(i % 1000 for i in range(n))
    print(f"ingest (HTTP POST /api/v1/events, keep-alive, one client): {n} events in {dt:.2f} s = {n / dt:,.0f} "
          f"events/s ({budget(size)}; store empty at the start); "
          f"query total {total} (expected {expected}: {'ok' if total == expected else 'MISMATCH'})")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=5_000)
    args = ap.parse_args(argv)
    # Each path in its own process: chdb opens one data path per process.
    for path in ("service", "http"):
        subprocess.run([sys.executable, "-c", f"from bench.ingest import {path}_path; {path}_path({args.events}, {args.batch})"],
                       check=True)


if __name__ == "__main__":
    main()
