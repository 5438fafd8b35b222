"""Issue 17's guarantees probed from outside, on the vectorised ingest path (batch records, event_keys ledger,
columnar inserts): `billow serve` (chdb + SQLite + in-process bus) is SIGKILLed at random points while 10 clients
post single events (`application/cloudevents+json`), JSON arrays and cloudevents batches of 1 to 5,000 events,
resend batches already acknowledged, drop the connection without reading the answer (an answer lost) and resend
those later, sometimes from another client at the same time. After the last restart, per (source, id): every
acknowledged event is counted exactly once (0 lost, 0 doubled), nothing is counted twice, and SUM (exact
Decimals, JSON numbers and strings, 18 decimal places), COUNT and UNIQUE_COUNT equal the values computed from
the events; then everything is resent once more and the totals do not move."""

from __future__ import annotations

import decimal
import http.client
import json
import random
import signal
import threading
import urllib.parse
from decimal import Decimal
from pathlib import Path
from typing import Any

from tests.e2e.conftest import Server

CONFIG = """
meters:
  - slug: kl_sum
    eventType: kl
    aggregation: SUM
    valueProperty: $.v
  - slug: kl_count
    eventType: kl
    aggregation: COUNT
  - slug: kl_per_id
    eventType: kl
    aggregation: COUNT
    groupBy: {eid: $.eid}
  - slug: kl_unique
    eventType: kl
    aggregation: UNIQUE_COUNT
    valueProperty: $.u
"""
CLIENTS, KILLS = 10, 10
# Sums of 30-digit values: the test's own arithmetic must be exact too (the default context keeps 28 digits).
EXACT = decimal.Context(prec=100, traps=[decimal.Inexact, decimal.Overflow, decimal.InvalidOperation])
SINGLE, ARRAY, BATCH = "application/cloudevents+json", "application/json", "application/cloudevents-batch+json"


class Batch:
    def __init__(self, key: str, events: list[dict[str, Any]], body: bytes, ctype: str) -> None:
        self.key, self.events, self.body, self.ctype = key, events, body, ctype


def value(rng: random.Random) -> tuple[str, str]:
    """(JSON literal, exact decimal text): strings and numbers, up to 18 places and 11 integer digits."""
    whole, frac = rng.randrange(10**11), rng.randrange(10**18)
    text = f"{'-' if rng.random() < 0.1 else ''}{whole}.{frac:018d}"
    kind = rng.randrange(3)
    if kind == 0:
        return json.dumps(text), text
    if kind == 1:
        return text, text  # a JSON number with 29 significant digits: no float may touch it
    small = str(rng.randrange(1000))
    return small, small


def make_batches(rng: random.Random) -> list[Batch]:
    sizes = [1] * 12 + [rng.randint(2, 40) for _ in range(14)] + [rng.randint(200, 1200) for _ in range(4)] + [5000]
    rng.shuffle(sizes)
    out, n = [], 0
    for b, size in enumerate(sizes):
        events, parts = [], []
        for i in range(size):
            eid = f"b{b}-{i}"
            literal, text = value(rng)
            e: dict[str, Any] = {"specversion": "1.0", "id": eid, "source": f"src{n % 3}", "type": "kl", "subject": f"s{n % 7}",
                 "time": f"2026-06-03T{9 + n % 3:02d}:{n % 60:02d}:{(n * 7) % 60:02d}.{n % 1000:03d}Z",
                 "data": {"v": "@V@", "eid": eid, "u": f"u{rng.randrange(4000)}"}}
            parts.append(json.dumps(e).replace('"@V@"', literal))
            events.append({**e, "data": {**e["data"], "v": text}})
            n += 1
        if size == 1 and b % 2 == 0:
            out.append(Batch(f"b{b}", events, parts[0].encode(), SINGLE))
        else:
            out.append(Batch(f"b{b}", events, ("[" + ",".join(parts) + "]").encode(), ARRAY if b % 3 == 0 else BATCH))
    return out


def post(port: int, batch: Batch, read_answer: bool = True) -> int | None:
    """The status, or None when the answer was not read (the connection dropped: the answer is lost)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", "/api/v1/events", batch.body, {"Content-Type": batch.ctype})
        if not read_answer:
            return None
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 204, (resp.status, body[:2000])
        return resp.status
    finally:
        conn.close()


def get(port: int, path: str) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 200, (resp.status, body[:2000])
        return json.loads(body, parse_float=Decimal, parse_int=Decimal)
    finally:
        conn.close()


def totals(port: int, slug: str, group: str | None = None) -> dict[str, Decimal]:
    qs = {"from": "2026-06-03T00:00:00Z", "to": "2026-06-03T23:59:59.999Z"}
    if group:
        qs["groupBy"] = group
    rows = get(port, f"/api/v1/meters/{slug}/query?" + urllib.parse.urlencode(qs))["data"]
    out: dict[str, Decimal] = {}
    for r in rows:
        key = r["groupBy"][group] if group else ""
        out[key] = out.get(key, Decimal(0)) + r["value"]
    return out


def test_sigkill_loop_with_mixed_batches_resends_and_lost_answers(tmp_path: Path) -> None:
    with decimal.localcontext(EXACT):
        kill_loop(tmp_path)


def kill_loop(tmp_path: Path) -> None:
    rng = random.Random(17_11)
    (tmp_path / "billow.yaml").write_text(CONFIG)
    batches = make_batches(rng)
    acked: set[str] = set()  # batch keys answered 204 at least once
    unknown: set[str] = set(b.key for b in batches)  # never answered 204 yet: pending, or answer lost
    srv = Server(tmp_path / "data", tmp_path / "billow.yaml")
    by_key = {b.key: b for b in batches}
    lock = threading.Lock()

    def client(c: int, port: int, crng: random.Random, stop: threading.Event) -> None:
        while not stop.is_set():
            with lock:
                choice = crng.random()
                pool = sorted(unknown) if unknown and choice < 0.7 else sorted(acked or unknown)
                key = crng.choice(pool)
            lose = crng.random() < 0.15
            try:
                status = post(port, by_key[key], read_answer=not lose)
            except (OSError, http.client.HTTPException):
                return  # the server died: whatever it was stays unknown
            if status == 204:
                with lock:
                    acked.add(key)
                    unknown.discard(key)
            with lock:
                if not unknown and crng.random() < 0.5:
                    return

    for k in range(KILLS):
        srv.start()
        port, stop = srv.port, threading.Event()
        threads = [threading.Thread(target=client, args=(c, port, random.Random(rng.random()), stop))
                   for c in range(CLIENTS)]
        before = len(acked)
        for th in threads:
            th.start()
        # Kill after a random number of new acknowledgements (0 = soon after start), then a random delay.
        want = rng.choice([0, 1, 2, 3, 5, 8])
        waited = threading.Event()
        for _ in range(1000):
            with lock:
                if len(acked) - before >= want or not any(th.is_alive() for th in threads):
                    break
            waited.wait(0.01)
        waited.wait(rng.random() * 0.3)
        assert srv.proc is not None
        srv.proc.send_signal(signal.SIGKILL)
        print(f"kill {k}: {len(acked)} acked, {len(unknown)} unknown", flush=True)
        assert srv.proc.wait(timeout=60) == -signal.SIGKILL
        srv.proc = None
        stop.set()
        for th in threads:
            th.join()

    srv.start()
    try:
        port = srv.port
        # Before anything is resent: every acknowledged event counted once, nothing counted twice.
        per_id = totals(port, "kl_per_id", "eid")
        acked_ids = {e["id"] for key in acked for e in by_key[key].events}
        lost = sorted(i for i in acked_ids if per_id.get(i, Decimal(0)) == 0)
        doubled = sorted(i for i, n in per_id.items() if n != 1)
        assert (lost[:20], len(lost), doubled[:20], len(doubled)) == ([], 0, [], 0), f"{len(acked)} batches acked"
        # Stored but not acknowledged is fine (at-least-once acks); the sums agree with what is counted.
        counted = {i for i, n in per_id.items() if n}
        events = {e["id"]: e for b in batches for e in b.events}
        assert totals(port, "kl_sum") == {"": sum((Decimal(events[i]["data"]["v"]) for i in counted), Decimal(0))}
        assert totals(port, "kl_count") == {"": Decimal(len(counted))}
        # Then everything goes in, and all of it once more: every event counted once, values exact.
        for b in batches:
            post(port, b)
        for b in batches:
            post(port, b)
        per_id = totals(port, "kl_per_id", "eid")
        assert {i for i, n in per_id.items() if n != 1} == set() and set(per_id) == set(events)
        assert totals(port, "kl_sum") == {"": sum((Decimal(e["data"]["v"]) for e in events.values()), Decimal(0))}
        assert totals(port, "kl_count") == {"": Decimal(len(events))}
        assert totals(port, "kl_unique") == {"": Decimal(len({e["data"]["u"] for e in events.values()}))}
    finally:
        srv.stop()
