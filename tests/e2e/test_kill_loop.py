"""Issue 15 item 3, end to end: 8 clients ingest into `billow serve`, the server is SIGKILLed, restarted on the
same data dir, and every client resends each batch it has no 204 for, with the same ids; several cycles.
Some kills land at a random point (after a random number of acknowledged batches), the others the instant a
new `meter_values` part is committed, before or while its materialized-view parts are written (the torn
write of the issue). At the end every batch is acknowledged and resent once more; whole-day, hourly and
minute-edge queries of both meters count every event exactly once: 0 lost, 0 doubled."""

from __future__ import annotations

import os
import random
import re
import signal
import threading
import urllib.parse
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from tests.e2e.conftest import Server

CONFIG = """
meters:
  - slug: loop_tokens
    eventType: loop
    aggregation: SUM
    valueProperty: $.tokens
    groupBy: {model: $.model}
  - slug: loop_calls
    eventType: loop
    aggregation: COUNT
"""
CLIENTS, BATCHES, SIZE, CYCLES = 8, 5, 250, 6
DAY = datetime(2026, 6, 3, tzinfo=UTC)
# (from, to inclusive, windowSize): the whole day, hours, and edges inside minutes (served from raw values).
RANGES = [
    (DAY, DAY + timedelta(days=1) - timedelta(milliseconds=1), "DAY"),
    (DAY, DAY + timedelta(days=1) - timedelta(milliseconds=1), "HOUR"),
    (DAY + timedelta(hours=9, minutes=17, seconds=30, milliseconds=500),
     DAY + timedelta(hours=11, minutes=3, seconds=12, milliseconds=250), None),
    (DAY + timedelta(hours=10, minutes=59, seconds=59, milliseconds=1),
     DAY + timedelta(hours=11, minutes=0, seconds=0, milliseconds=999), "MINUTE"),
]


def iso(t: datetime) -> str:
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def make_batches(rng: random.Random) -> dict[int, list[list[dict[str, Any]]]]:
    """Events between 09:00 and 12:00, so every batch shares minutes and hours with the others."""
    out: dict[int, list[list[dict[str, Any]]]] = {}
    for c in range(CLIENTS):
        out[c] = [[{"specversion": "1.0", "id": f"c{c}-b{b}-{i}", "source": "loop", "type": "loop",
                    "subject": f"s{(c + i) % 5}",
                    "time": iso(DAY + timedelta(hours=9, milliseconds=rng.randrange(3 * 3600 * 1000))),
                    "data": {"tokens": f"{rng.randrange(1000)}.{rng.randrange(1000):03d}", "model": f"m{i % 3}"}}
                   for i in range(SIZE)] for b in range(BATCHES)]
    return out


def values_dir(data_dir: Path) -> Path:
    return data_dir / "usage" / "data" / "default" / "meter_values"


def max_block(path: Path) -> int:
    """The highest block number among the committed parts of a table (an insert commits all_N_N_0)."""
    best = 0
    try:
        names = os.listdir(path)
    except FileNotFoundError:
        return 0
    for name in names:
        m = re.fullmatch(r"all_\d+_(\d+)_\d+(_\d+)?", name)
        if m:
            best = max(best, int(m.group(1)))
    return best


def query(srv: Server, slug: str, start: datetime, end: datetime, window: str | None) -> dict[str, Decimal]:
    qs = {"from": iso(start), "to": iso(end)}
    if window:
        qs["windowSize"] = window
    status, _, body = srv.request("GET", f"/api/v1/meters/{slug}/query?" + urllib.parse.urlencode(qs))
    assert status == 200, body
    out: dict[str, Decimal] = {}
    for r in body["data"]:
        key = iso(datetime.fromisoformat(r["windowStart"].replace("Z", "+00:00"))) if window else "None"
        out[key] = out.get(key, Decimal(0)) + Decimal(str(r["value"]))
    return out


def expected(events: list[dict[str, Any]], start: datetime, end: datetime, window: str | None,
             count: bool) -> dict[str, Decimal]:
    out: dict[str, Decimal] = {}
    for e in events:
        t = datetime.fromisoformat(e["time"].replace("Z", "+00:00"))
        if not start <= t <= end:
            continue
        cut = {"DAY": {"hour": 0, "minute": 0}, "HOUR": {"minute": 0}, "MINUTE": {}}
        key = iso(t.replace(second=0, microsecond=0, **cut[window])) if window else "None"
        out[key] = out.get(key, Decimal(0)) + (Decimal(1) if count else Decimal(e["data"]["tokens"]))
    return out


def test_sigkill_loop_loses_and_doubles_nothing(tmp_path: Path) -> None:
    rng = random.Random(15_3)
    (tmp_path / "billow.yaml").write_text(CONFIG)
    data = tmp_path / "data"
    batches = make_batches(rng)
    pending = {c: list(range(BATCHES)) for c in range(CLIENTS)}  # batches without a 204 yet, per client
    srv = Server(data, tmp_path / "billow.yaml")
    torn_kills = 0
    for cycle in range(CYCLES):
        srv.start()
        lock = threading.Lock()
        acks = [0]

        def client(c: int, server: Server = srv, ack_count: list[int] = acks, guard: threading.Lock = lock) -> None:
            for b in list(pending[c]):
                try:
                    status = server.request("POST", "/api/v1/events", batches[c][b],
                                            "application/cloudevents-batch+json")[0]
                except OSError:
                    return  # the server died: this batch stays pending and is resent after the restart
                assert status == 204
                with guard:
                    pending[c].remove(b)
                    ack_count[0] += 1

        threads = [threading.Thread(target=client, args=(c,)) for c in range(CLIENTS)]
        base = max_block(values_dir(data))
        for th in threads:
            th.start()
        assert srv.proc is not None
        if cycle % 2 == 0:  # the instant the k-th new values part is committed
            k = rng.randint(1, 3)
            while max_block(values_dir(data)) < base + k and any(th.is_alive() for th in threads):
                pass
        else:  # at a random point: after a random number of acknowledged batches
            n = rng.randint(1, 6)
            while acks[0] < n and any(th.is_alive() for th in threads):
                threading.Event().wait(0.001)
        srv.proc.send_signal(signal.SIGKILL)
        assert srv.proc.wait(timeout=60) == -signal.SIGKILL
        srv.proc = None
        torn_kills += cycle % 2 == 0
        for th in threads:
            th.join()

    srv.start()
    try:
        for c in range(CLIENTS):  # the last restart: everything still pending goes in ...
            for b in list(pending[c]):
                assert srv.request("POST", "/api/v1/events", batches[c][b], "application/cloudevents-batch+json")[0] == 204
            for b in range(BATCHES):  # ... and every batch is resent once more: duplicates only
                assert srv.request("POST", "/api/v1/events", batches[c][b], "application/cloudevents-batch+json")[0] == 204
        events = [e for c in range(CLIENTS) for batch in batches[c] for e in batch]
        report = []
        for slug, count in (("loop_calls", True), ("loop_tokens", False)):
            for start, end, window in RANGES:
                got, want = query(srv, slug, start, end, window), expected(events, start, end, window, count)
                lost = sum(max(Decimal(0), want.get(k, Decimal(0)) - got.get(k, Decimal(0))) for k in want | got)
                doubled = sum(max(Decimal(0), got.get(k, Decimal(0)) - want.get(k, Decimal(0))) for k in want | got)
                report.append((slug, window, iso(start), lost, doubled))
        assert [r for r in report if r[3] or r[4]] == [], report
    finally:
        srv.stop()
