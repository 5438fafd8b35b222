"""Batch-ingest throughput into the embedded store (chdb + SQLite + in-process bus), with the store empty and already
holding many events (issue 17: the per-event cost must not grow with the store).

For each preload size N (--preload, default 0, 10 M and 50 M) a fresh data dir gets N events (raw events and their
meter values, so the dedup ledger, the values and every rollup hold N rows' worth) by INSERT ... SELECT FROM numbers(N)
straight in chdb, its load time printed; then each table is merged into one part (OPTIMIZE FINAL), as a store that has
held its events a while has merged them (measured unsettled, the first ingest paid for merging the load). Then, for each batch size (--batch, default 5,000 and 10,000), two paths
ingest --events new events into that store, each in a process of its own (chdb opens one data path per process):
  use-case  ingest_events -> in-process bus -> usage sink -> chdb (validation, meter values, dedup, inserts)
  HTTP      POST /api/v1/events to `billow serve` on that data dir, one keep-alive client
Each figure: events/s (wall clock) beside issue 17's budget, and the CPU time per event (the use-case process, or
the server process for HTTP: user + system, all threads, chdb's included), with its ratio to the same figure on the
empty store (budget: within 20 % at 50 M). The machine's load average is printed with every figure: on a shared
machine wall-clock rates fall with the load, CPU per event much less; but the machine's own speed drifts (the same
code's CPU per event moved ~35 % within an hour on an idle 2-CPU machine, 2026-12-07), so for each stored size the
use-case path is also measured paired: the stored store and a fresh empty one in two processes, their batches
alternated, each process's CPU (merges included) over the same minutes, and that ratio is the store-size figure.
Run: .venv/bin/python -m bench.ingest [--events 100000] [--batch 5000,10000] [--preload 0,10000000,50000000]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

METER = {"slug": "tokens", "eventType": "prompt", "aggregation": "SUM", "valueProperty": "$.tokens",
         "groupBy": {"model": "$.model"}}
NAMESPACE = "default"


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


def budget_ok(size: int, rate: float) -> str:
    want = {5_000: 80_000, 10_000: 100_000}.get(size)
    return "" if want is None else ("ok" if rate >= want else "OVER")


def ratio_verdict(ratio: float, stored: int) -> str:
    """Issue 17's budget for the CPU per event relative to the empty store: within 20 % with 50 M events stored."""
    if stored == 50_000_000:
        return f"budget <= 1.20 x at 50 M stored: {'ok' if ratio <= 1.2 else 'OVER'}"
    return f"budget <= 1.20 x at 50 M stored ({stored:,} stored here)"


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.1f}/{five:.1f} on {os.cpu_count()} CPUs"


def _container(data_dir: str, **kw: Any) -> Any:
    from billow.bootstrap import Settings, build

    return build(Settings(data_dir=data_dir), **kw)


def preload(data_dir: str, n: int) -> None:
    """Store n events of the bench meter (raw events and values, so the ledger and rollups follow through their
    views) straight in chdb. Prints the load time as JSON."""
    from billow.bootstrap import install
    from billow.services.meters import create_meter

    c = _container(data_dir)
    install(c)
    meter = create_meter(c.namespace, METER, meta=c.meta, usage=c.usage, now=c.clock.now(), sink_lock=c.sink_lock)
    store = c.usage._real() if hasattr(c.usage, "_real") else c.usage
    t0 = time.perf_counter()
    step = 5_000_000  # blocks of the INSERT ... SELECT: bounded memory for the views' GROUP BY
    for lo in range(0, n, step):
        params = {"ns": c.namespace, "lo": lo, "n": min(step, n - lo), "mid": meter.id}
        src = ("FROM numbers({lo:UInt64}, {n:UInt64})")
        store._command(
            "INSERT INTO events (namespace, source, id, type, subject, time, data, ingested_at) "
            "SELECT {ns:String}, 'preload', toString(number), 'prompt', concat('customer-', toString(number % 100)), "
            "toDateTime64('2025-01-01 00:00:00', 3, 'UTC') + toIntervalMillisecond(number * 613), "
            "concat('{\"tokens\":', toString(number % 1000), ',\"model\":\"model-', toString(number % 8), '\"}'), "
            "toDateTime64('2026-01-01 00:00:00', 3, 'UTC') " + src, params)
        store._command(
            "INSERT INTO meter_values (namespace, meter_id, subject, time, value, value_str, group_by, source, id) "
            "SELECT {ns:String}, {mid:String}, concat('customer-', toString(number % 100)), "
            "toDateTime64('2025-01-01 00:00:00', 3, 'UTC') + toIntervalMillisecond(number * 613), "
            "toDecimal128(number % 1000, 18), '', map('model', concat('model-', toString(number % 8))), 'preload', "
            "toString(number) " + src, params)
    dt = time.perf_counter() - t0
    # A store that holds N events has merged its parts; measuring while this load is merged would count those merges
    # (chdb merges in the process that opened the store) as ingest cost.
    t1 = time.perf_counter()
    while n and store._query("SELECT count() FROM system.merges", {})[0][0] and time.perf_counter() - t1 < 1800:
        time.sleep(1)
    merged = time.perf_counter() - t1
    # An empty merge list is not a settled store: merges of the loaded parts are assigned later, and the first ingest
    # measured after the load paid for them (2.2 x the empty store's CPU per event at 50 M, most of it MergeMutate).
    # A store that has held N events for a while has merged them into large parts: each table is merged into one.
    t2 = time.perf_counter()
    if n:
        for (table,) in store._query("SELECT name FROM system.tables WHERE database = currentDatabase() "
                                     "AND engine LIKE '%MergeTree'", {}):
            store._command(f"OPTIMIZE TABLE {table} FINAL")
    c.close()
    print(json.dumps({"events": n, "seconds": dt, "merged": merged, "settled": time.perf_counter() - t2}))


def _cpu_of(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _threads_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of a process per thread name (Linux /proc: the engine names its threads, e.g. its merges'),
    so that a figure that grows with the store can be traced to the thread that spends it."""
    out: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                head, tail = f.read().rsplit(")", 1)
        except OSError:  # the thread ended meanwhile
            continue
        fields = tail.split()
        name = head.split("(", 1)[1]
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def _threads_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds per thread name spent between two snapshots (threads that ended meanwhile are not counted)."""
    d = {k: after[k] - before.get(k, 0.0) for k in after}
    return {k: round(v, 2) for k, v in sorted(d.items(), key=lambda kv: -kv[1]) if v > 0}


def _time_statements(store: Any) -> dict[str, float]:
    """Wall seconds the usage store spends per statement kind (inserts by table, whether clickhouse-connect encodes
    them or the store does (raw_insert, in process), queries by their text's start), counted from the next call on:
    the store's own figures beside the process's CPU."""
    spent: dict[str, float] = {}
    insert, raw_insert, query = store._client.insert, store._client.raw_insert, store._query

    def timed(run: Any) -> Any:
        def timed_insert(table: str, *a: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return run(table, *a, **kw)
            finally:
                spent[f"INSERT {table}"] = spent.get(f"INSERT {table}", 0.0) + time.perf_counter() - t0

        return timed_insert

    def timed_query(sql: str, params: dict[str, Any], **kw: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return query(sql, params, **kw)
        finally:
            k = " ".join(sql.split()[:6])
            spent[k] = spent.get(k, 0.0) + time.perf_counter() - t0

    store._client.insert, store._client.raw_insert, store._query = timed(insert), timed(raw_insert), timed_query
    return spent


def _use_case(data_dir: str) -> tuple[Any, Callable[[list[dict[str, Any]]], Any]]:
    """The use-case path on `data_dir` as `billow serve` runs it (usage sink in process, heap settled): the container
    and a function ingesting one batch."""
    from billow import heap
    from billow.bootstrap import install
    from billow.services.ingest import ingest_events
    from functions.usage_sink.handler import lambda_handler as sink

    c = _container(data_dir, deliver=lambda ev: sink(ev, None))
    install(c)
    heap.settle()  # as `billow serve` does once started
    assert c.bus is not None
    return c, lambda batch: ingest_events(c.namespace, batch, meta=c.meta, bus=c.bus, now=c.clock.now())


def _sent(n: int) -> int:
    """The bench meter's total over n events of `batches` (or of `preload`)."""
    return sum(i % 1000 for i in range(n))


def service_path(data_dir: str, n: int, size: int, prefix: str) -> None:
    c, ingest = _use_case(data_dir)
    work = batches(n, size, prefix)
    statements = _time_statements(c.usage._real() if hasattr(c.usage, "_real") else c.usage)
    ingest(work[0])  # warm: meters, first insert
    statements.clear()  # the warm batch's (the key filter's first build among them) not counted
    t0, c0, th0 = time.perf_counter(), time.process_time(), _threads_cpu(os.getpid())
    for b in work[1:]:
        ingest(b)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    threads = _threads_delta(th0, _threads_cpu(os.getpid()))
    c.close()
    m = n - len(work[0])
    timed = {k: round(v, 3) for k, v in sorted(statements.items(), key=lambda kv: -kv[1])}
    print(json.dumps({"events": m, "seconds": dt, "cpu": cpu, "load": load(), "threads": threads,
                      "statements": timed}))


def paired_worker(data_dir: str, n: int, size: int, prefix: str) -> None:
    """One side of a paired measurement (`paired`): the use-case path on `data_dir` (the bench meter made there), one
    batch per "go" line read from stdin, each answered "done"; on "stop", as JSON, this process's CPU seconds from the
    first "go" on (every thread: the views, and the background merges it runs while the other side ingests), by
    thread name, and the events ingested. Before "ready": a warm batch, then the merges of parts an earlier
    measurement left on the store (the process that opens a store merges them) are waited out."""
    c, ingest = _use_case(data_dir)
    work = batches(n, size, prefix)
    ingest(work[0])  # warm, as service_path
    store = c.usage._real() if hasattr(c.usage, "_real") else c.usage
    quiet, t0 = 0, time.monotonic()
    while quiet < 3 and time.monotonic() - t0 < 300:
        quiet = 0 if store._query("SELECT count() FROM system.merges", {})[0][0] else quiet + 1
        time.sleep(1)
    print("ready", flush=True)
    c0, th0, done = 0.0, _threads_cpu(os.getpid()), 0
    for line in sys.stdin:
        if line.strip() != "go" or done == len(work) - 1:
            break
        if done == 0:
            c0, th0 = time.process_time(), _threads_cpu(os.getpid())
        ingest(work[1 + done])
        done += 1
        print("done", flush=True)
    cpu, threads = time.process_time() - c0, _threads_delta(th0, _threads_cpu(os.getpid()))
    c.close()
    print(json.dumps({"cpu": cpu, "threads": threads, "events": sum(len(b) for b in work[1:1 + done])}), flush=True)


def paired(stored_dir: str, n: int, size: int, prefix: str, here: str) -> list[dict[str, Any]]:
    """The use-case path on a fresh empty store and on `stored_dir` in the same minutes: two processes (chdb holds
    one data path a process), `n` events each, their batches alternated (A B, then B A, ...), so that what the
    machine's speed does over the run (it moved ~35 % within an hour on the shared 2-CPU machine, 2026-12-07) falls
    on both alike. Each side's paired_worker answer, empty store first; the empty store's total is checked (exact),
    so that side did the values' work too."""
    with tempfile.TemporaryDirectory(dir=os.environ.get("BILLOW_BENCH_DIR")) as empty_dir:
        _run(f"import sys; sys.path.insert(0, {here!r}); from bench.ingest import preload; preload({empty_dir!r}, 0)")
        procs = [subprocess.Popen(
            [sys.executable, "-c", f"import sys; sys.path.insert(0, {here!r}); from bench.ingest import paired_worker; "
                                   f"paired_worker({d!r}, {n}, {size}, {prefix!r})"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for d in (empty_dir, stored_dir)]
        try:
            for p in procs:
                _say(p, None, "ready")
            for i in range(-(-n // size) - 1):  # the batches after each side's warm one
                for p in procs if i % 2 == 0 else procs[::-1]:
                    _say(p, "go", "done")
            out = [json.loads(_say(p, "stop", None)) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                p.wait()
        got, want = _run(f"import sys, json; sys.path.insert(0, {here!r}); from bench.ingest import check_total; "
                         f"print(json.dumps(check_total({empty_dir!r}, {_sent(n)})))")
        if got != want:
            raise SystemExit(f"bench.ingest: the paired empty store holds {got}, not the {want} sent")
    return out


def _say(p: subprocess.Popen[str], word: str | None, answer: str | None) -> str:
    """Send `word` (if any) to a paired_worker and read its next line (which must be `answer`, if given); the bench
    ends if the process has ended."""
    assert p.stdin is not None and p.stdout is not None
    if word is not None:
        p.stdin.write(word + "\n")
        p.stdin.flush()
    line = p.stdout.readline().strip()
    if not line or (answer is not None and line != answer):
        raise SystemExit(f"bench.ingest: a paired measurement's process answered {line!r} (status {p.poll()})")
    return line


@contextlib.contextmanager
def serving(data_dir: str) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """`billow serve` on `data_dir` at a free port, ready: (its process, port); stopped on the way out (killed if it
    ignores SIGTERM for 2 minutes: never a hung server left behind)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "billow.cli", "serve", "--port", str(port), "--data-dir", data_dir],
                            stdout=subprocess.PIPE, text=True)
    try:
        wait_ready(proc, timeout=600)
        yield proc, port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def http_path(data_dir: str, n: int, size: int, prefix: str) -> None:
    with serving(data_dir) as (proc, port):
        print(json.dumps(_measure_http(port, proc.pid, n, size, prefix)))


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


def _measure_http(port: int, pid: int, n: int, size: int, prefix: str) -> dict[str, Any]:
    """Every request has a bounded wait (600 s): a server that dies or hangs is an error, never a spin."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.request("POST", "/api/v1/meters", json.dumps(METER), {"Content-Type": "application/json"})
    conn.getresponse().read()  # 201, or 409 when the preload made it
    bodies = [json.dumps(b).encode() for b in batches(n, size, prefix)]

    def post(body: bytes) -> None:
        conn.request("POST", "/api/v1/events", body, {"Content-Type": "application/cloudevents-batch+json"})
        r = conn.getresponse()
        r.read()
        assert r.status == 204, r.status

    post(bodies[0])  # warm
    t0, c0, th0 = time.perf_counter(), _cpu_of(pid), _threads_cpu(pid)
    for body in bodies[1:]:
        post(body)
    dt, cpu = time.perf_counter() - t0, _cpu_of(pid) - c0
    threads = _threads_delta(th0, _threads_cpu(pid))
    m = n - len(json.loads(bodies[0]))
    # The new events' sum: the query total is checked against the events sent (exact).
    return {"events": m, "seconds": dt, "cpu": cpu, "load": load(), "threads": threads}


def _run(code: str) -> dict[str, Any]:
    """Run one measurement in a process of its own; a failure ends the bench with that process's error output."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"bench.ingest: a measurement failed (exit status {done.returncode}): {code}")
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def check_total(data_dir: str, expected: int) -> tuple[int, int]:
    """The bench meter's total over everything stored, against what was sent (exact)."""
    from billow.domain.usage import UsageQuery, final_value

    c = _container(data_dir)
    meter = c.meta.get_meter(c.namespace, "tokens")
    assert meter is not None
    rows = c.usage.aggregate(UsageQuery(c.namespace, meter.id, "SUM", None, None, None, "UTC", None, [], False, None))
    c.close()
    return int(final_value("SUM", rows[0]) if rows else 0), expected


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=100_000, help="events ingested per measurement")
    ap.add_argument("--batch", default="5000,10000", help="batch sizes, comma-separated")
    ap.add_argument("--preload", default="0,10000000,50000000", help="events stored before measuring, comma-separated")
    ap.add_argument("--paths", default="service,http")
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.batch.split(",")]
    paths = args.paths.split(",")
    base: dict[tuple[str, int], tuple[float, float, int]] = {}  # the first store size's figures, and that size
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for n in (int(x) for x in args.preload.split(",")):
        with tempfile.TemporaryDirectory(dir=os.environ.get("BILLOW_BENCH_DIR")) as tmp:
            loaded = _run(f"import sys; sys.path.insert(0, {here!r}); from bench.ingest import preload; "
                          f"preload({tmp!r}, {n})")
            print(f"store preloaded with {n:,} events (raw + values) in {loaded['seconds']:.1f} s "
                  f"({n / loaded['seconds']:,.0f} rows/s; {load()}), its parts merged {loaded['merged']:.0f} s later, "
                  f"each table merged into one part (OPTIMIZE FINAL: a store that has held them a while) in "
                  f"{loaded['settled']:.0f} s"
                  if n else "store empty", flush=True)
            expected = _sent(n)
            for size in sizes:
                for path in paths:
                    prefix = f"{path[0]}{size}-"
                    r = _run(f"import sys; sys.path.insert(0, {here!r}); from bench.ingest import {path}_path; "
                             f"{path}_path({tmp!r}, {args.events}, {size}, {prefix!r})")
                    expected += _sent(args.events)
                    rate = r["events"] / r["seconds"]
                    wall_us, cpu_us = r["seconds"] / r["events"] * 1e6, r["cpu"] / r["events"] * 1e6
                    base.setdefault((path, size), (wall_us, cpu_us, n))
                    b_wall, b_cpu, b_n = base[(path, size)]
                    than = "empty" if b_n == 0 else f"with {b_n:,} stored"
                    label = "use-case -> bus -> sink -> chdb" if path == "service" else "HTTP POST /api/v1/events"
                    print(f"  ingest ({label}), batches of {size:,}, {n:,} stored: {rate:,.0f} events/s "
                          f"[{budget(size)}: {budget_ok(size, rate)}]; {wall_us:.1f} us/event wall "
                          f"({wall_us / b_wall:.2f} x {than}), {cpu_us:.1f} us CPU/event ({cpu_us / b_cpu:.2f} x {than}; "
                          f"{ratio_verdict(cpu_us / b_cpu, n) if b_n == 0 else 'budget <= 1.20 x empty at 50 M'}); "
                          f"{r['load']}", flush=True)
                    print("    CPU seconds by thread name (the measuring process, or the server; chdb renames the "
                          "threads it runs statements on 'Unknown', so that is Python's work plus the inserts and "
                          "look-ups, MergeMutate the background merges): " + ", ".join(
                        f"{k} {v:.2f}" for k, v in list(r.get("threads", {}).items())[:8]), flush=True)
                    if r.get("statements"):
                        print("    wall seconds in the usage store per statement (use-case path): " + "; ".join(
                            f"{k} {v:.3f}" for k, v in r["statements"].items()), flush=True)
                    if n and path == "service":
                        empty, stored = paired(tmp, args.events, size, f"p{size}-", here)
                        expected += _sent(args.events)
                        e_us, s_us = (side["cpu"] / side["events"] * 1e6 for side in (empty, stored))
                        print(f"  paired (use-case), batches of {size:,}: {s_us:.1f} us CPU/event with {n:,} stored "
                              f"vs {e_us:.1f} on an empty store in the same minutes (two processes, batches "
                              f"alternated): {s_us / e_us:.2f} x [{ratio_verdict(s_us / e_us, n)}]; {load()}",
                              flush=True)
                        print("    CPU seconds by thread name, stored / empty: " + ", ".join(
                            f"{k} {stored['threads'].get(k, 0):.2f} / {empty['threads'].get(k, 0):.2f}"
                            for k in list(stored["threads"])[:5]), flush=True)
            got, want = _run(f"import sys, json; sys.path.insert(0, {here!r}); from bench.ingest import check_total; "
                             f"print(json.dumps(check_total({tmp!r}, {expected})))")
            print(f"  total of the bench meter: {got} (expected {want}: {'ok' if got == want else 'MISMATCH'})",
                  flush=True)


if __name__ == "__main__":
    main()
