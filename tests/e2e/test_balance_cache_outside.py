"""billow serve's balance cache probed from outside: a seeded random walk of writes over HTTP against a real
`billow serve` (chdb + SQLite + the in-process bus), and after each step, for entitlement checks picked at random,
the served value (GET .../value: the balance cache) compared with the uncached computation at the same instant
(the same request with `?time=`, which never uses the cache: balances.value).

The server's clock is real and cannot be frozen, so each comparison brackets the served request: t0 just before it
is sent, t1 just after it returned. Every instant the walk writes (usage times, grant and reset times, periods) is
a whole second or minute, so a value is constant between whole seconds: when no whole second lies in [t0, t1] the
served value must equal the uncached value at t0; when one does, it must equal the value at t0 or at t1.

The walk: usage now, minutes back, hours back (late, also before a reset's snapshot), up to two minutes ahead of
the clock (counted once the clock passes it), resends and conflicting resends, other meters' and other group
values' usage the features filter out, usage of a customer's other subject and of unknown subjects; grants of
several priorities, expiries and recurrences, some effective in the past of the current period or a minute ahead;
voiding (now and at a past minute); resets (now and back in the period, with and without retainAnchor and
preserveOverage); override, delete and recreate; a customer's usageAttribution changed; a subject deleted and
created again; a UNIQUE_COUNT and a LATEST meter created mid-walk (backfilled) with features and entitlements on
them. Checks through v1 subject routes (by feature key and by id, through each subject of the customer), v1 customer
and v2 customer routes. Events often share an instant (a LATEST tie: the largest value, whichever tier reads it).

The probe catches the cache bugs it was checked against (each one made in a copy of the code, run under
PYTHONPATH): grant writes not counted as writes (e1560b6's bug), told usage not added to cached values, usage
timed at or after the check's instant added to it; each fails within the first few steps.

Found:
- a race in the balance cache: usage the sink wrote before a check's store read, and told the cache of after that
  check kept its value, was counted twice (found by a burst, seed 21: usage 16.625 where the store holds 16.5).
  Pinned deterministically by tests/entitlements/test_cached_check_during_write.py; fixed in 13bcca4 (the sink
  tells the cache before it writes). Bursts are on by default since;
- LATEST ties: two readings at one instant (two subjects of a customer) answered 10 through one range and 2.5
  through another (the usage store's tiers), so two checks at one instant differed (seed 2, before events got
  instants of their own: served usage 10, uncached 2.5). Fixed by migration 4 (the rollups' argMax orders by
  (time, value): at one instant the largest value); pinned by test_a_latest_tie_answers_one_value_whatever_range_reads_it
  below."""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Drained
from tests.e2e.test_billing_outside import api, cloudevent, iso, ok, send

SEED = int(os.environ.get("BILLOW_CACHE_PROBE_SEED", "20261206"))  # another seed explores further
STEPS = int(os.environ.get("BILLOW_CACHE_PROBE_STEPS", "120"))
# Bursts of concurrent usage, checks and grants (Walk.burst): on unless BILLOW_CACHE_PROBE_BURSTS=0. They found the
# race tests/entitlements/test_cached_check_during_write.py pins (fixed in 13bcca4), in about 1 burst of 18.
BURSTS = os.environ.get("BILLOW_CACHE_PROBE_BURSTS", "1") == "1"
CHECKS_PER_STEP = 5
CONFIG = """namespace: default
meters:
  - slug: pc_tok
    eventType: pc_tok
    aggregation: SUM
    valueProperty: $.v
    groupBy:
      model: $.model
  - slug: pc_calls
    eventType: pc_tok
    aggregation: COUNT
    groupBy:
      model: $.model
"""
# feature key -> (meter slug, filters); pc_users and pc_gauge are created mid-walk
FEATURES: dict[str, tuple[str, dict[str, Any]]] = {
    "f_a": ("pc_tok", {"meterGroupByFilters": {"model": "a"}}),
    "f_like": ("pc_tok", {"advancedMeterGroupByFilters": {"model": {"$ilike": "A%"}}}),
    "f_all": ("pc_tok", {}),
    "f_calls": ("pc_calls", {"advancedMeterGroupByFilters": {"model": {"$nin": ["b"]}}}),
    "f_one": ("pc_tok", {"advancedMeterGroupByFilters": {"model": {"$like": "_"}}}),
    "f_uni": ("pc_tok", {"advancedMeterGroupByFilters": {"model": {"$ilike": "É%"}}}),
    "f_cmp": ("pc_calls", {"advancedMeterGroupByFilters": {"model": {"$gte": "a", "$lt": "b"}}}),
    "f_users": ("pc_users", {}),
    "f_gauge": ("pc_gauge", {}),
}
LATER_METERS = {
    "pc_users": {"slug": "pc_users", "eventType": "pc_tok", "aggregation": "UNIQUE_COUNT", "valueProperty": "$.user"},
    "pc_gauge": {"slug": "pc_gauge", "eventType": "pc_tok", "aggregation": "LATEST", "valueProperty": "$.v"},
}
SUBJECTS = ("s1", "s2", "s3", "s4")
CUSTOMERS = {"c1": ["s1", "s2"], "c2": ["s3"]}
MINUTE = timedelta(minutes=1)
MODELS = ("a", "b", "A", "ab", "Ab", "", None, "é", "É", "éa", "e", "_", "%")


def utcnow() -> datetime:
    return datetime.now(UTC)


def whole_second(t: datetime) -> datetime:
    return t.replace(microsecond=0)


def whole_minute(t: datetime) -> datetime:
    return t.replace(second=0, microsecond=0)


@dataclass
class Ent:
    """An entitlement of the walk: owned by a subject (v1 routes) or a customer (v2 routes)."""

    feature: str
    owner: str  # a subject key or a customer key
    v2: bool
    id: str | None = None
    grants: list[str] = field(default_factory=list)

    @property
    def base(self) -> str:
        if self.v2:
            return f"/api/v2/customers/{self.owner}/entitlements"
        return f"/api/v1/subjects/{self.owner}/entitlements"


@dataclass
class Walk:
    s: Drained
    rng: random.Random
    ents: list[Ent] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)
    attribution: dict[str, list[str]] = field(default_factory=lambda: {k: list(v) for k, v in CUSTOMERS.items()})
    customer_ids: dict[str, str] = field(default_factory=dict)
    features: set[str] = field(default_factory=set)
    log: list[str] = field(default_factory=list)
    times: set[datetime] = field(default_factory=set)  # the instants of the events sent
    compared: int = 0
    served_ok: int = 0
    n: int = 0

    # -- writes ----------------------------------------------------------------------------------------------
    def note(self, what: str) -> None:
        self.log.append(f"{utcnow().isoformat(timespec='milliseconds')} {what}")

    def event(self, subject: str, at: datetime) -> dict[str, Any]:
        self.n += 1
        r = self.rng
        data: dict[str, Any] = {"v": r.choice(["1", "2.5", "0.125", "10", "3", "-1", "7.75"]),
                                "user": r.choice(["u1", "u2", "u3", "u4"])}
        model = r.choice(MODELS)
        if model is not None:
            data["model"] = model
        return cloudevent(f"pc{self.n}", r.choice(["pc_tok", "pc_tok", "pc_tok", "pc_other"]), subject, iso(at), data)

    def ingest(self) -> None:
        r = self.rng
        now = whole_second(utcnow())
        events = []
        for _ in range(r.randint(1, 4)):
            subject = r.choice([*SUBJECTS, "s1", "s2", "s5"])
            kind = r.choice(["now", "now", "minutes", "hours", "ahead", "minute", "resend", "conflict"])
            if kind in ("resend", "conflict") and self.sent:
                old = dict(r.choice(self.sent))
                if kind == "conflict":  # the same id again with another value: the first one stays
                    old["data"] = {**old["data"], "v": "1000"}
                events.append(old)
                continue
            at = {"now": now - timedelta(seconds=r.randint(1, 20)),
                  "minutes": now - timedelta(seconds=r.randint(60, 900)),
                  "hours": now - timedelta(seconds=r.randint(3600, 5 * 3600)),
                  "ahead": now + timedelta(seconds=r.randint(2, 120)),
                  # on a whole minute: where grants start, resets, voids and PT2M periods fall
                  "minute": whole_minute(now) - timedelta(minutes=r.choice([0, 1, 2, 5, 10, 30]))
                  }.get(kind, now - timedelta(seconds=2))
            if r.random() < 0.3 and self.times:  # an instant an event was sent at: a tie (LATEST: the largest)
                at = r.choice(sorted(self.times))
            self.times.add(at)
            ev = self.event(subject, at)
            self.sent.append(ev)
            events.append(ev)
        receipt = r.random() < 0.2  # the receipt path (Prefer: return=representation) publishes as well
        self.note(f"ingest{' (receipt)' if receipt else ''} "
                  f"{[(e['id'], e['type'], e['subject'], e['time'], e['data']) for e in events]}")
        if receipt:
            status, _, out = self.s.request("POST", "/api/v1/events", raw=json.dumps(events).encode(),
                                            content_type="application/cloudevents-batch+json",
                                            headers={"Prefer": "return=representation"})
            assert status == 200, out
        else:
            send(self.s, events)

    def ent_body(self, feature: str, v2: bool) -> dict[str, Any]:
        r = self.rng
        now = utcnow()
        interval = r.choice(["DAY", "DAY", "PT1H", "PT2M"])  # a PT2M period resets during the walk
        anchor = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=r.randint(0, 5))
        if interval != "DAY":
            anchor -= timedelta(minutes=r.choice([0, 21, 45]))
        measure = anchor - timedelta(hours=r.choice([0, 1, 3]))
        if interval == "PT2M":  # a check runs the engine over every period since measureUsageFrom: keep them few
            anchor = measure = whole_minute(now) - timedelta(minutes=r.choice([1, 7, 20]))
        body: dict[str, Any] = {"type": "metered", "featureKey": feature,
                                "usagePeriod": {"interval": interval, "anchor": iso(anchor)},
                                "measureUsageFrom": iso(measure)}
        if r.random() < 0.5:
            amount = r.choice([5, 10, "2.5"])
            if v2:
                body["issue"] = {"amount": amount, "priority": r.randint(1, 5)}
            else:
                body["issueAfterReset"] = amount
        if r.random() < 0.25:
            body["isSoftLimit"] = True
        return body

    def create_ent(self, e: Ent) -> None:
        body = self.ent_body(e.feature, e.v2)
        status, out = api(self.s, "POST", e.base, body)
        self.note(f"create {e.feature} of {e.owner} {body} -> {status}")
        e.id, e.grants = (out["id"], []) if status == 201 else (None, [])

    def grant(self, e: Ent) -> None:
        r = self.rng
        now = utcnow()
        eff = whole_minute(now) - timedelta(minutes=r.choice([0, 0, 1, 5, 30, 90, 200]))
        if r.random() < 0.15:
            eff = whole_minute(now) + timedelta(minutes=1)  # comes due during the walk
        body: dict[str, Any] = {"amount": r.choice([3, 10, "0.5", "7.25", 100]), "priority": r.randint(1, 5),
                                "effectiveAt": iso(eff)}
        if not e.v2 or r.random() < 0.6:
            body["expiration"] = r.choice([{"duration": "HOUR", "count": 1}, {"duration": "HOUR", "count": 2},
                                           {"duration": "DAY", "count": 1}])
        if r.random() < 0.2:
            body["recurrence"] = {"interval": r.choice(["PT1H", "PT3M"]), "anchor": iso(eff)}
        if r.random() < 0.2:
            body["maxRolloverAmount"] = r.choice([0, 1])
        status, out = api(self.s, "POST", f"{e.base}/{e.feature}/grants", body)
        self.note(f"grant {e.feature} of {e.owner} {body} -> {status}")
        if status == 201:
            e.grants.append(out["id"])

    def void(self, e: Ent) -> None:
        if not e.grants:
            return self.grant(e)
        gid = self.rng.choice(e.grants)
        path = f"/api/v1/grants/{gid}"
        if self.rng.random() < 0.4:
            path += "?at=" + iso(whole_minute(utcnow()) - timedelta(minutes=self.rng.choice([1, 10, 40])))
        status, _ = api(self.s, "DELETE", path)
        self.note(f"void {e.feature} of {e.owner} {path} -> {status}")

    def reset(self, e: Ent) -> None:
        r = self.rng
        body: dict[str, Any] = {}
        if r.random() < 0.5:
            body["effectiveAt"] = iso(whole_minute(utcnow()) - timedelta(minutes=r.choice([1, 10, 59, 70, 150])))
        if r.random() < 0.5:
            body["retainAnchor"] = r.random() < 0.5
        if r.random() < 0.3:
            body["preserveOverage"] = r.random() < 0.5
        status, _ = api(self.s, "POST", f"{e.base}/{e.id or e.feature}/reset", body)
        self.note(f"reset {e.feature} of {e.owner} {body} -> {status}")

    def override(self, e: Ent) -> None:
        body = self.ent_body(e.feature, e.v2)
        status, out = api(self.s, "PUT", f"{e.base}/{e.id or e.feature}/override", body)
        self.note(f"override {e.feature} of {e.owner} {body} -> {status}")
        if status == 201:
            e.id, e.grants = out["id"], []

    def delete(self, e: Ent) -> None:
        status, _ = api(self.s, "DELETE", f"{e.base}/{e.id or e.feature}")
        self.note(f"delete {e.feature} of {e.owner} -> {status}")
        if status == 204:
            e.id, e.grants = None, []

    def attribute(self) -> None:
        r = self.rng
        cust = r.choice(list(self.attribution))
        options = {"c1": [["s1", "s2"], ["s1"], ["s2", "s1"], ["s1", "s2", "s5"], ["s2"]],
                   "c2": [["s3"], ["s3", "s5"], ["s3", "s4"]]}[cust]
        keys = r.choice(options)
        status, _ = api(self.s, "PUT", f"/api/v1/customers/{self.customer_ids[cust]}",
                        {"name": cust, "key": cust, "usageAttribution": {"subjectKeys": keys}})
        self.note(f"attribute {cust} {keys} -> {status}")
        if status == 200:
            self.attribution[cust] = keys

    def resubject(self) -> None:
        subject = self.rng.choice([*SUBJECTS, "s5"])
        status, _ = api(self.s, "DELETE", f"/api/v1/subjects/{subject}")
        again, _ = api(self.s, "POST", "/api/v1/subjects", [{"key": subject}])
        self.note(f"delete subject {subject} -> {status}, create again -> {again}")

    def later_meter(self) -> None:
        """A UNIQUE_COUNT or LATEST meter on the events already stored (backfilled), a feature and entitlements."""
        slug = next(s for s in LATER_METERS if s not in self.features)
        self.features.add(slug)
        ok(self.s, "POST", "/api/v1/meters", LATER_METERS[slug])
        feature = "f_users" if slug == "pc_users" else "f_gauge"
        ok(self.s, "POST", "/api/v1/features", {"key": feature, "name": feature, "meterSlug": slug})
        self.note(f"meter {slug}, feature {feature}")
        for e in (Ent(feature, "s4", False), Ent(feature, "c1", True)):
            self.ents.append(e)
            self.create_ent(e)

    # -- checks -----------------------------------------------------------------------------------------------
    def paths(self) -> list[str]:
        out = []
        for f in FEATURES:
            out += [f"/api/v1/subjects/{s}/entitlements/{f}/value" for s in (*SUBJECTS, "s5")]
            out += [f"/api/v1/customers/{c}/entitlements/{f}/value" for c in CUSTOMERS]
            out += [f"/api/v2/customers/{c}/entitlements/{f}/value" for c in CUSTOMERS]
        for e in self.ents:
            if e.id is not None:
                out.append(f"{e.base}/{e.id}/value")
        return out

    def live_paths(self) -> list[str]:
        """The checks that answer a value: each entitlement through its owner, and through the owner's fellows."""
        out = []
        for e in self.ents:
            if e.id is None:
                continue
            out.append(f"{e.base}/{e.feature}/value")
            if e.v2:
                out.append(f"/api/v1/customers/{e.owner}/entitlements/{e.feature}/value")
                out += [f"/api/v1/subjects/{s}/entitlements/{e.feature}/value" for s in self.attribution[e.owner][:1]]
            else:
                fellows = next((ks for ks in self.attribution.values() if e.owner in ks), [])
                out += [f"/api/v1/subjects/{s}/entitlements/{e.id}/value" for s in fellows if s != e.owner]
        return out

    def compare(self, path: str) -> None:
        frac = utcnow().microsecond
        if frac > 850_000:  # keep the served request clear of a whole second
            time.sleep((1_000_000 - frac) / 1e6 + 0.005)
        t0 = utcnow()
        served = api(self.s, "GET", path)
        t1 = utcnow()
        lo = t0.replace(microsecond=t0.microsecond // 1000 * 1000)
        hi = t1.replace(microsecond=t1.microsecond // 1000 * 1000) + timedelta(milliseconds=1)
        instants = [lo] + ([hi] if lo.microsecond == 0 or whole_second(hi) > whole_second(lo) else [])
        uncached = [api(self.s, "GET", f"{path}?time={iso(t)}") for t in instants]
        self.compared += 1
        if served[0] == 200:
            self.served_ok += 1
        same = [u for u in uncached if u[0] == served[0] and (served[0] != 200 or u[1] == served[1])]
        if not same:
            history = "\n".join(self.log[-40:])
            raise AssertionError(f"{path} at [{iso(lo)}, {iso(hi)}]: served {served}, uncached "
                                 f"{list(zip([iso(t) for t in instants], uncached, strict=True))}\nlast steps:\n{history}")

    def burst(self, seconds: float = 1.0) -> None:
        """Usage stored while checks of the same entitlements run and grants are written (2 senders, 3 checkers,
        1 granter, `seconds`); once all is quiet, every check answers what the store does (a race must not leave a
        wrong value cached)."""
        paths = self.live_paths()
        now = whole_second(utcnow())
        times = [t for k in range(1, 90) if (t := now - timedelta(seconds=k)) not in self.times]
        self.times.update(times)
        errors: list[BaseException] = []
        stop = time.monotonic() + seconds

        def sender(i: int) -> None:
            rr = random.Random(SEED * 10 + i)
            mine = times[i::2]
            k = 0
            while time.monotonic() < stop and k < len(mine):
                batch = []
                for _ in range(rr.randint(1, 3)):
                    if k < len(mine):
                        batch.append(cloudevent(f"b{self.n}-{i}-{k}", "pc_tok", rr.choice([*SUBJECTS, "s5"]),
                                                iso(mine[k]), {"v": rr.choice(["1", "2.5", "0.125"]),
                                                               "user": rr.choice(["u1", "u5"]),
                                                               "model": rr.choice(MODELS[:6])}))
                        k += 1
                send(self.s, batch)

        def checker(i: int) -> None:
            rr = random.Random(SEED * 20 + i)
            while time.monotonic() < stop:
                api(self.s, "GET", rr.choice(paths))

        def granter(i: int) -> None:  # every grant makes cached values stale: checks compute again meanwhile
            rr = random.Random(SEED * 30 + i)
            ents = [e for e in self.ents if e.id is not None]
            while time.monotonic() < stop and ents:
                e = rr.choice(ents)
                api(self.s, "POST", f"{e.base}/{e.feature}/grants", {
                    "amount": "0.001", "priority": 9, "effectiveAt": iso(whole_minute(utcnow())),
                    "expiration": {"duration": "DAY", "count": 1}})
                time.sleep(0.05)

        def run(f: Any, i: int) -> None:
            try:
                f(i)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(f, i)) for f, n in ((sender, 2), (checker, 3), (granter, 1))
                   for i in range(n)]
        self.n += 1
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert not errors, errors
        self.note(f"burst of usage and checks ({seconds} s)")
        for path in paths:
            self.compare(path)

    def check(self, focus: list[str]) -> None:
        live = self.live_paths()
        picked = focus + self.rng.sample(live, min(len(live), CHECKS_PER_STEP - 1)) + [self.rng.choice(self.paths())]
        for path in dict.fromkeys(picked):
            self.compare(path)


def setup(w: Walk) -> None:
    for f in ("f_a", "f_like", "f_all", "f_calls", "f_one", "f_uni", "f_cmp"):
        meter, filters = FEATURES[f]
        ok(w.s, "POST", "/api/v1/features", {"key": f, "name": f, "meterSlug": meter, **filters})
    ok(w.s, "POST", "/api/v1/subjects", [{"key": s} for s in SUBJECTS])
    for key, subjects in CUSTOMERS.items():
        w.customer_ids[key] = ok(w.s, "POST", "/api/v1/customers", {
            "name": key, "key": key, "usageAttribution": {"subjectKeys": subjects}})["id"]
    w.ents = [Ent("f_a", "s1", False), Ent("f_calls", "s1", False), Ent("f_all", "s4", False),
              Ent("f_like", "c2", True), Ent("f_all", "c1", True), Ent("f_calls", "c2", True),
              Ent("f_one", "s4", False), Ent("f_uni", "c1", True), Ent("f_cmp", "c2", True)]
    for e in w.ents:
        w.create_ent(e)
        w.grant(e)


@pytest.fixture
def walk(tmp_path: Path) -> Iterator[Walk]:
    (tmp_path / "billow.yaml").write_text(CONFIG)
    s = Drained(tmp_path / "data", tmp_path / "billow.yaml").start()
    try:
        w = Walk(s, random.Random(SEED))
        setup(w)
        yield w
    finally:
        if s.proc is not None:
            s.stop()


def run_walk(w: Walk, steps: int, bursts_at: frozenset[int] = frozenset()) -> None:
    r = w.rng
    started = time.monotonic()
    meters_at = {steps // 5, steps // 2}
    for step in range(steps):
        if step in meters_at:
            w.later_meter()
            w.check([])
            continue
        if step in bursts_at:
            w.burst()
            continue
        e = r.choice(w.ents)
        op = r.choices(["ingest", "grant", "void", "reset", "override", "delete", "attribute", "resubject"],
                       [10, 3, 2, 2, 1, 1, 1, 1])[0]
        if op == "ingest":
            w.ingest()
        elif e.id is None:
            w.create_ent(e)
        else:
            getattr(w, op)(*(() if op in ("attribute", "resubject") else (e,)))
        w.check([f"{e.base}/{e.feature}/value"])
    elapsed = time.monotonic() - started
    print(f"{steps} steps, {w.compared} comparisons ({w.served_ok} answered a value) in {elapsed:.1f} s")
    assert w.served_ok > w.compared // 2


def test_cached_checks_equal_uncached_ones_over_a_random_walk(walk: Walk) -> None:
    run_walk(walk, STEPS, frozenset(range(STEPS // 4, STEPS, STEPS // 4)) if BURSTS else frozenset())


def test_a_latest_tie_answers_one_value_whatever_range_reads_it(tmp_path: Path) -> None:
    """Two gauge readings at one instant (two subjects of one customer): the meter's LATEST value over any range
    holding that instant as its last readings is one value, whichever range (and so whichever usage-store tier: raw
    values, minute or hour rollups) is read. Found by the walk above (seed 2, when events could share an instant):
    a cached check answered usage 10, the uncached one at the same instant 2.5. Before migration 4 the answer
    depended on the range, and differed from run to run: in three runs of two ties, every run had a tie read as 10
    through one range and 2.5 through another. Ten ties here, so that at least one would show it. At one instant
    the largest value is the latest: 10, whichever reading came first."""
    (tmp_path / "billow.yaml").write_text("namespace: default\nmeters:\n  - slug: gauge\n    eventType: gauge\n"
                                          "    aggregation: LATEST\n    valueProperty: $.v\n")
    s = Drained(tmp_path / "data", tmp_path / "billow.yaml").start()
    try:
        now = whole_second(utcnow())
        start = now - timedelta(hours=1)
        answers: dict[str, set[Any]] = {}
        for i in range(10):
            tie = whole_minute(now) - timedelta(minutes=2 + i, seconds=-30)
            first, second = ("b", "a") if i % 2 else ("a", "b")
            send(s, [cloudevent(f"t{i}-1", "gauge", first, iso(tie), {"v": "10"})])
            send(s, [cloudevent(f"t{i}-2", "gauge", second, iso(tie), {"v": "2.5"})])
            m = whole_minute(tie)
            ranges = ((tie, tie + timedelta(seconds=1)), (m, m + timedelta(seconds=59)), (m, m + MINUTE),
                      (m - MINUTE, m + 2 * MINUTE - timedelta(milliseconds=1)), (tie - timedelta(minutes=20), tie))
            answers[iso(tie)] = {ok(s, "GET", f"/api/v1/meters/gauge/query?from={iso(a)}&to={iso(b)}")["data"][0]
                                 ["value"] for a, b in ranges}
        answers["all"] = {ok(s, "GET", f"/api/v1/meters/gauge/query?from={iso(start)}&to={iso(now)}")["data"][0]
                          ["value"]}
        assert all(len(v) == 1 and Decimal(str(*v)) == 10 for v in answers.values()), answers  # before: {10, 2.5}
    finally:
        s.stop()
