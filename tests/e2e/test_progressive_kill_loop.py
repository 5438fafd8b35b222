"""Progressive billing ("invoice now") probed from outside under SIGKILL and concurrency: a real `billow serve`
(chdb + SQLite; or two of them on one PostgreSQL meta store, each with its own chdb and every event batch sent to
both, as two Lambdas share one ClickHouse), customers on usage subscriptions (a unit and a graduated price) of
one-hour periods whose billing anchors put period ends inside the test. Clients ingest, call invoice-now with
`progressiveBillingOverride` (sometimes `asOf` a past instant) at random instants beside the scheduled billing run
(`billing_every_s: 1`: billow serve's only outside trigger of it), more clients call invoice-now for one customer
all the time; a server is SIGKILLed at random instants and right after an invoice-now returned, restarted on the
same data, and what got no answer is sent again. At the end each subscription is canceled (its period in progress
ends now), every customer is invoiced until nothing is left, and its usage lines are checked against a reference
computed here in exact Decimals from the events sent: for each period and rate card the sum of all its parts (and
corrections) is the period's usage rated once (0 lost, 0 doubled), the parts' periods do not overlap, no answer was
a 5xx or an unclear 4xx, no server logged a traceback or a customer it could not bill.

An invoice-now splits a period in progress at a minute boundary (usage is measured in whole minutes) and the clock
is the machine's: when the next minute comes within 30 s of the setup the test waits for it (periods are split at
it), else the periods end 10 s on without waiting (no split). The randomness is seeded (BILLOW_TEST_SEED, else a
fresh seed, printed); BILLOW_TEST_PORT_BASE keeps the servers on a port range of one's own.

Found (tests/billing/test_gone_charge_line.py): a charge billed in an earlier part and gone in a later one (the
graduated price's usage back below tier 2) was credited on a line named by the rate card's key, with no price."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import scratch_database
from tests.e2e.conftest import BIN
from tests.support.net import free_port
from tests.support.net import json_call as call

D = Decimal
CONFIG = """namespace: default
billing_every_s: 1
meters:
  - slug: pk_tok
    eventType: pk_tok
    aggregation: SUM
    valueProperty: $.v
"""
UNIT = D("0.0123")
GRAD = {"type": "tiered", "mode": "graduated", "tiers": [
    {"upToAmount": "40", "unitPrice": {"type": "unit", "amount": "0.05"}, "flatPrice": {"type": "flat", "amount": "1"}},
    {"unitPrice": {"type": "unit", "amount": "0.0125"}}]}
CARDS = [
    {"type": "usage_based", "key": "pk_unit", "name": "Unit", "featureKey": "pk_unit", "billingCadence": "PT1H",
     "price": {"type": "unit", "amount": str(UNIT)}},
    {"type": "usage_based", "key": "pk_grad", "name": "Grad", "featureKey": "pk_grad", "billingCadence": "PT1H",
     "price": GRAD},
]


def cents(x: Decimal) -> Decimal:
    return x.quantize(D("0.01"), rounding=ROUND_HALF_UP)


def graduated(q: Decimal) -> Decimal:
    """The first tier's flat fee is billed once per period even without usage (as OpenMeter's graduated pricer)."""
    return D(1) + cents(min(q, D(40)) * D("0.05")) + (cents((q - 40) * D("0.0125")) if q > 40 else D(0))


RATE = {"Unit": lambda q: cents(q * UNIT), "Grad": graduated}


def iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse(t: str) -> datetime:
    return datetime.fromisoformat(t.replace("Z", "+00:00"))


def minute(t: datetime) -> datetime:
    return t.replace(second=0, microsecond=0)


def port() -> int:
    base = os.environ.get("BILLOW_TEST_PORT_BASE")  # a port range of one's own on a shared machine
    if not base:
        return free_port()
    import socket

    for p in range(int(base), int(base) + 100):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                continue
            return p
    raise RuntimeError("no free port in the range")


class Serve:
    """`billow serve` whose output is drained all the time; `kill` SIGKILLs it."""

    def __init__(self, data_dir: Path, config: Path) -> None:
        self.data_dir, self.config = data_dir, config
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        self.log: list[str] = []

    def start(self) -> Serve:
        for attempt in range(5):
            try:
                return self._start()
            except OSError:  # the port was taken between finding it free and the server binding it: another port
                if attempt == 4:
                    raise
        raise AssertionError("unreachable")

    def _start(self) -> Serve:
        self.port = port()
        self.proc = subprocess.Popen([str(BIN), "serve", "--port", str(self.port), "--data-dir", str(self.data_dir),
                                      "--config", str(self.config)], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        assert self.proc.stdout is not None
        deadline = time.time() + 90
        seen: list[str] = []
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            seen.append(line)
            if "ready, listening on" in line:
                threading.Thread(target=self.log.extend, args=(self.proc.stdout,), daemon=True).start()
                return self
            if not line and self.proc.poll() is not None:
                text = "".join(seen)
                if "Address already in use" in text:
                    raise OSError(text)
                raise RuntimeError(f"billow serve exited with {self.proc.returncode}: {text[-3000:]}")
        raise RuntimeError("billow serve did not become ready")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=60)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:  # never leave a server running
                self.proc.kill()
                self.proc.wait(timeout=30)
            self.proc = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def ok(url: str, method: str, path: str, body: Any = None) -> Any:
    status, out = call(url, method, path, body)
    assert status < 300, (method, path, status, out)
    return out


@dataclass
class Customer:
    key: str
    id: str = ""
    sub_id: str = ""
    anchor: datetime = field(default_factory=lambda: datetime.now(UTC))
    active_from: datetime = field(default_factory=lambda: datetime.now(UTC))
    active_to: datetime | None = None
    subjects: tuple[str, ...] = ()
    events: dict[str, tuple[datetime, Decimal]] = field(default_factory=dict)  # id: (time, value)


@dataclass
class Tally:
    statuses: dict[str, int] = field(default_factory=dict)
    problems: list[Any] = field(default_factory=list)  # 5xx and unclear answers
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, what: str, status: int | str, out: Any = None) -> None:
        with self.lock:
            k = f"{what}:{status}"
            self.statuses[k] = self.statuses.get(k, 0) + 1
            if isinstance(status, int) and (status >= 500 or (status >= 400 and not _clear_problem(out))):
                self.problems.append((what, status, out))


def _clear_problem(out: Any) -> bool:
    return isinstance(out, dict) and isinstance(out.get("detail") or out.get("title"), str)


def setup_world(url: str, rng: random.Random, n: int) -> list[Customer]:
    ok(url, "POST", "/api/v1/features", {"key": "pk_unit", "name": "pk_unit", "meterSlug": "pk_tok"})
    ok(url, "POST", "/api/v1/features", {"key": "pk_grad", "name": "pk_grad", "meterSlug": "pk_tok"})
    draft = ok(url, "POST", "/api/v1/plans", {"key": "pk", "name": "PK", "currency": "USD", "billingCadence": "PT1H",
                                              "phases": [{"key": "p", "name": "P", "rateCards": CARDS}]})
    ok(url, "POST", f"/api/v1/plans/{draft['id']}/publish")
    now = datetime.now(UTC)
    m1 = minute(now) + timedelta(minutes=1)
    if m1 - now > timedelta(seconds=30):  # no waiting for it (the test stays short): periods end soon all the same;
        m1 = now.replace(microsecond=0) + timedelta(seconds=10)  # splits happen when the next minute comes within 30 s (half of the runs)
    out = []
    for i in range(n):
        c = Customer(f"pk{i}", subjects=(f"pk_s{i}a", f"pk_s{i}b"))
        # period ends: at the next minute boundary (a cut there bills nothing of the next period), a few seconds
        # after it (the cut splits the period), or an hour on (only the cancel ends it)
        c.anchor = [m1, m1 + timedelta(seconds=rng.randrange(3, 10)), m1 + timedelta(minutes=30)][i % 3]
        cust = ok(url, "POST", "/api/v1/customers", {"key": c.key, "name": c.key, "currency": "USD",
                                                   "usageAttribution": {"subjectKeys": list(c.subjects)}})
        sub = ok(url, "POST", "/api/v1/subscriptions", {"plan": {"key": "pk"}, "customerKey": c.key,
                                                        "billingAnchor": iso(c.anchor)})
        c.id, c.sub_id, c.active_from = cust["id"], sub["id"], parse(sub["activeFrom"])
        out.append(c)
    return out


def event(c: Customer, rng: random.Random, n: int) -> dict[str, Any]:
    """An event of the customer's (both rate cards' features read its meter), at now or up to 10 s before, never
    before the subscription."""
    now = datetime.now(UTC)
    at = max(now - timedelta(milliseconds=rng.randrange(10_000)), c.active_from + timedelta(milliseconds=1))
    value = D(rng.randrange(1, 2000)) / D(100)
    eid = f"{c.key}-{n}"
    c.events[eid] = (at, value)
    return {"specversion": "1.0", "id": eid, "source": "pk", "type": "pk_tok", "subject": rng.choice(c.subjects),
            "time": iso(at), "data": {"v": str(value)}}


# -- the reference ----------------------------------------------------------------------------------------------
def periods(c: Customer) -> list[tuple[datetime, datetime]]:
    """The subscription's billing periods from its start to its cancel: one hour each from the anchor."""
    assert c.active_to is not None
    hour = timedelta(hours=1)
    ps = c.anchor - hour * -((c.anchor - c.active_from) // -hour)  # the grid's last start at or before activeFrom
    while ps > c.active_from:
        ps -= hour
    out = []
    while ps < c.active_to:
        out.append((ps, ps + hour))
        ps += hour
    return out


def reference(c: Customer) -> dict[tuple[str, datetime], Decimal]:
    """(card, period start): the period's usage rated once. Usage is measured in whole minutes: a period's span
    [max(start, activeFrom), min(end, activeTo)) counts the events of [its start's minute, its end's minute)."""
    assert c.active_to is not None
    out: dict[tuple[str, datetime], Decimal] = {}
    for ps, pe in periods(c):
        s, e = minute(max(ps, c.active_from)), minute(min(pe, c.active_to))
        q = sum((v for t, v in c.events.values() if s <= t < e), D(0))
        for card, rate in RATE.items():
            out[(card, ps)] = rate(q)
    return out


def billed(url: str, c: Customer) -> tuple[dict[tuple[str, datetime], Decimal], list[str], int, int]:
    """(card, period start): the sum of all the customer's invoiced usage lines (all parts, corrections); the
    overlaps found among a period's parts; the number of lines; the number of (card, period)s billed in parts."""
    sums: dict[tuple[str, datetime], Decimal] = {}
    spans: dict[tuple[str, datetime], list[tuple[datetime, datetime, str]]] = {}
    parts = 0
    for inv in ok(url, "GET", f"/api/v1/billing/invoices?customers={c.id}&pageSize=1000")["items"]:
        if inv["status"] == "gathering":
            continue
        for ln in ok(url, "GET", f"/api/v1/billing/invoices/{inv['id']}?expand=lines")["lines"]:
            bp = parse(ln["subscription"]["billingPeriod"]["from"])
            key = (ln["name"], bp)
            sums[key] = sums.get(key, D(0)) + D(ln["totals"]["total"])
            parts += 1
            span = (parse(ln["period"]["from"]), parse(ln["period"]["to"]))
            end = bp + timedelta(hours=1)
            whole = (max(bp, c.active_from), min(end, c.active_to) if c.active_to else end)
            # a line of the whole period is no part (a late correction's line after the parts has that span too)
            if "(correction)" not in json.dumps(ln) and span != whole:
                spans.setdefault(key, []).append((*span,
                                                  f"{inv['id']} {inv['status']} total {ln['totals']['total']} "
                                                  f"quantity {ln.get('quantity')} pre {ln.get('preLinePeriodQuantity')}"
                                                  f" invoiceAt {ln.get('invoiceAt')}"))
    overlaps = []
    for key, all_spans in spans.items():
        # a line over the very span of an earlier one is a correction of it (late usage of a period billed whole; a
        # first bill of no usage makes its later lines no "(correction)"): its money is in the sums; parts that
        # overlap otherwise are a period cut twice
        firsts: dict[tuple[datetime, datetime], tuple[datetime, datetime, str]] = {}
        for sp in all_spans:
            firsts.setdefault(sp[:2], sp)
        ss = sorted(firsts.values())
        overlaps += [f"{key[0]} {iso(key[1])}: {iso(a[0])}..{iso(a[1])} ({a[2]}) and {iso(b[0])}..{iso(b[1])} ({b[2]})"
                     for a, b in zip(ss, ss[1:], strict=False) if b[0] < a[1]]
    return sums, overlaps, parts, sum(1 for ss in spans.values() if len({sp[:2] for sp in ss}) > 1)


# -- the clients and the kills ------------------------------------------------------------------------------------
@dataclass
class Chaos:
    servers: list[Serve]
    customers: list[Customer]
    seed: int
    tally: Tally = field(default_factory=Tally)
    up: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)
    kill_now: threading.Event = field(default_factory=threading.Event)
    unacked: list[tuple[int, list[dict[str, Any]]]] = field(default_factory=list)  # (server, batch)
    lock: threading.Lock = field(default_factory=threading.Lock)
    kills: int = 0
    invoice_nows: int = 0
    n: int = 0

    def next_id(self) -> int:
        with self.lock:
            self.n += 1
            return self.n

    def ingest(self, batch: list[dict[str, Any]], targets: list[int]) -> None:
        for i in targets:
            try:
                status, out = call(self.servers[i].url, "POST", "/api/v1/events", batch,
                                   "application/cloudevents-batch+json")
            except OSError as exc:
                self.tally.count("ingest", type(exc).__name__)
                with self.lock:
                    self.unacked.append((i, batch))
                continue
            self.tally.count("ingest", status, out)
            if status != 204:
                with self.lock:
                    self.unacked.append((i, batch))

    def invoice_now(self, c: Customer, rng: random.Random, progressive: bool | None) -> int | str:
        body: dict[str, Any] = {"customerId": c.id if rng.random() < 0.5 else c.key}
        if progressive is not None:
            body["progressiveBillingOverride"] = progressive
        if rng.random() < 0.25:  # as of an instant up to 20 s ago (a cut before one billed already bills nothing)
            body["asOf"] = iso(datetime.now(UTC) - timedelta(milliseconds=rng.randrange(20_000)))
        srv = rng.choice(self.servers)
        try:
            status, out = call(srv.url, "POST", "/api/v1/billing/invoices/invoice", body)
        except OSError as exc:
            self.tally.count("invoice-now", type(exc).__name__)
            return type(exc).__name__
        with self.lock:
            self.invoice_nows += 1
        self.tally.count("invoice-now", status, out)
        return status

    def client(self, k: int, only: Customer | None, invoice_share: float, kills: bool = True) -> None:
        rng = random.Random(self.seed * 1000 + k)
        retry: list[Customer] = []
        while not self.stop.is_set():
            if not self.up.wait(0.2):
                continue
            c = only or rng.choice(self.customers)
            if retry:  # an invoice-now that got no answer is asked again
                c = retry.pop()
            if rng.random() >= invoice_share:
                batch = [event(c, rng, self.next_id()) for _ in range(rng.randrange(1, 6))]
                self.ingest(batch, list(range(len(self.servers))))
                continue
            got = self.invoice_now(c, rng, True if rng.random() < 0.85 else None)
            if isinstance(got, str):
                retry.append(c)
            elif kills and got == 201 and rng.random() < 0.15:
                self.kill_now.set()  # SIGKILL right after an invoice-now returned

    def resend(self, server: int | None = None) -> None:
        """Every batch a server (or `server`) gave no 204 for, again to that server (same ids)."""
        with self.lock:
            todo = [(i, b) for i, b in self.unacked if server is None or i == server]
            self.unacked = [(i, b) for i, b in self.unacked if not (server is None or i == server)]
        for i, batch in todo:
            status, out = call(self.servers[i].url, "POST", "/api/v1/events", batch, "application/cloudevents-batch+json")
            assert status == 204, (status, out)


def run_chaos(ch: Chaos, until: float, *, clients: int, only: Customer | None = None, invoice_share: float = 0.5,
              kill_every: tuple[float, float] | None = (1.0, 4.0), hammered: Customer | None = None,
              hammering: int = 0) -> None:
    """`clients` clients (of `only`, else of any customer) and `hammering` more that call invoice-now for
    `hammered` nearly all the time, until `until`; the servers SIGKILLed every `kill_every` seconds (or right after
    an invoice-now returned) and restarted, unless None."""
    rng = random.Random(ch.seed)
    threads = [threading.Thread(target=ch.client, args=(k, only, invoice_share), daemon=True) for k in range(clients)]
    threads += [threading.Thread(target=ch.client, args=(clients + k, hammered, 0.9, False), daemon=True)
                for k in range(hammering)]
    ch.up.set()
    for t in threads:
        t.start()
    try:
        while time.time() < until:
            if kill_every is None:
                time.sleep(min(0.2, max(0.0, until - time.time())))
                continue
            ch.kill_now.wait(rng.uniform(*kill_every))
            ch.kill_now.clear()
            victim = rng.randrange(len(ch.servers))
            ch.up.clear()
            ch.servers[victim].kill()
            ch.kills += 1
            ch.servers[victim].start()
            # what the killed server did not acknowledge, again before clients go on (with two servers, each its own
            # usage store, the two see the same usage but for the batches in flight)
            ch.resend(victim)
            ch.up.set()
    finally:
        ch.stop.set()
        for t in threads:
            t.join(timeout=120)
    ch.resend()


def finish(ch: Chaos) -> None:
    """Cancel every subscription (its period in progress ends now), then invoice every customer until nothing is
    left (a 409: the scheduled run took the customer meanwhile; asked again)."""
    url = ch.servers[0].url
    for c in ch.customers:
        out = ok(url, "POST", f"/api/v1/subscriptions/{c.sub_id}/cancel", {"timing": "immediate"})
        c.active_to = parse(out["activeTo"])
    for c in ch.customers:
        for _ in range(20):
            status, out = call(url, "POST", "/api/v1/billing/invoices/invoice", {"customerId": c.id})
            ch.tally.count("final invoice-now", status, out)
            if status == 201 and out == []:
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"{c.key}: invoice-now never answered 201 [] ({status} {out})")


def check(ch: Chaos) -> dict[str, int]:
    url = ch.servers[0].url
    wrong, overlaps, parts, split = [], [], 0, 0
    for c in ch.customers:
        want = reference(c)
        got, ov, n, sp = billed(url, c)
        parts, split = parts + n, split + sp
        overlaps += [f"{c.key}: {o}" for o in ov]
        for key in sorted(set(want) | set(got)):
            if want.get(key, D(0)) != got.get(key, D(0)):
                wrong.append(f"{c.key} {key[0]} period {iso(key[1])}: billed {got.get(key, D(0))}, "
                             f"usage rated once {want.get(key, D(0))}")
    logs = [line for s in ch.servers for line in s.log if "Traceback" in line or "could not be billed" in line]
    counts = {"kills": ch.kills, "invoice_nows": ch.invoice_nows, "parts": parts, "split": split,
              "events": sum(len(c.events) for c in ch.customers)}
    print("seed", ch.seed, counts, ch.tally.statuses)
    assert not ch.tally.problems, ch.tally.problems[:5]
    assert not wrong, wrong
    assert not overlaps, overlaps
    assert not logs, logs[:5]
    return counts


@pytest.fixture
def seed() -> int:
    s = int(os.environ.get("BILLOW_TEST_SEED") or random.randrange(1 << 30))
    print("BILLOW_TEST_SEED", s)
    return s


@pytest.fixture(params=["sqlite", "postgres"])
def meta(request: pytest.FixtureRequest) -> Iterator[str | None]:
    if request.param == "sqlite":
        yield None
        return
    with scratch_database(os.environ.get("BILLOW_TEST_DB_PREFIX", "billow_pkill_")) as url:
        yield url


def _servers(tmp_path: Path, meta_url: str | None, n: int) -> list[Serve]:
    config = CONFIG + (f"meta_store_url: {json.dumps(meta_url)}\n" if meta_url else "")
    (tmp_path / "billow.yaml").write_text(config)
    out = []
    for i in range(n):  # one after the other: the first migrates the meta store
        out.append(Serve(tmp_path / f"data{i}", tmp_path / "billow.yaml").start())
    return out


def _close(servers: list[Serve]) -> None:
    for s in servers:
        s.stop()


def _seconds_past_the_cut(customers: list[Customer]) -> float:
    """The instant (time.time) a few seconds after every period end the anchors put in the test."""
    last = max(c.anchor for c in customers if c.anchor - datetime.now(UTC) < timedelta(minutes=5))
    return max(last.timestamp() + 3, time.time() + 12)


def test_sigkill_loop_across_invoice_now_splits_bills_each_period_once(tmp_path: Path, seed: int,
                                                                       meta: str | None) -> None:
    servers = _servers(tmp_path, meta, 2 if meta else 1)
    try:
        rng = random.Random(seed)
        customers = setup_world(servers[0].url, rng, 6)
        ch = Chaos(servers, customers, seed)
        run_chaos(ch, _seconds_past_the_cut(customers), clients=4, hammered=customers[1], hammering=4)
        finish(ch)
        counts = check(ch)
        assert counts["kills"] >= 1 and counts["invoice_nows"] >= 3
    finally:
        _close(servers)


def test_concurrent_invoice_nows_for_one_customer_bill_each_part_once(tmp_path: Path, seed: int,
                                                                       meta: str | None) -> None:
    servers = _servers(tmp_path, meta, 2 if meta else 1)
    try:
        rng = random.Random(seed)
        customers = setup_world(servers[0].url, rng, 3)
        ch = Chaos(servers, customers, seed)
        run_chaos(ch, _seconds_past_the_cut(customers), clients=10, only=customers[1], invoice_share=0.7,
                  kill_every=None)
        finish(ch)
        check(ch)
    finally:
        _close(servers)
