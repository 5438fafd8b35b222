"""A check right after usage is stored (billow serve's balance cache, the in-process sink) adds that usage to the
cached computation instead of reading the store again (issue 17: "check right after new usage" was a full read,
p50 24 ms at 10 M rows, and a client ingesting for the checked subjects cut checks to 6 % of their rate). What it
answers must be exactly what a fresh read answers, whatever arrives: usage in any segment, for other meters,
models a feature filters out, other subjects of the customer, resends, future times, usage older than the
computation's start or measureUsageFrom, and clock moves across grant expiries and resets. Each check is compared with a fresh
computation of the same instant (no cache: Lambda's path)."""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from billow.domain.usage import MeterValue
from billow.services.sink import SinkRecord, sink_batch
from billow.timeutil import format_rfc3339
from tests.conftest import t
from tests.entitlements.conftest import Billow


def _world(b: Billow) -> None:
    b.ok("POST", "/api/v1/customers", {"key": "acme", "name": "Acme",
                                       "usageAttribution": {"subjectKeys": ["customer_1", "customer_3"]}})
    b.ok("POST", "/api/v1/features", {"key": "gpt", "name": "GPT tokens", "meterSlug": "tokens",
                                      "meterGroupByFilters": {"model": "gpt"}})
    path = "/api/v1/subjects/customer_1/entitlements"
    b.ok("POST", path, {"type": "metered", "featureKey": "gpt", "issueAfterReset": 100,
                        "measureUsageFrom": "2026-01-01T00:00:00Z",
                        "usagePeriod": {"interval": "MONTH", "anchor": "2026-01-01T00:00:00Z"}})
    for amount, prio, effective, days in ((40, 1, "2026-01-03T00:00:00Z", 5), (60, 2, "2026-01-02T12:00:00Z", 40)):
        b.ok("POST", path + "/gpt/grants", {"amount": amount, "priority": prio, "effectiveAt": effective,
                                           "expiration": {"duration": "DAY", "count": days}})


def _post(b: Billow, *events: dict[str, Any]) -> None:
    status, out = b.call("POST", "/api/v1/events", list(events), content_type="application/cloudevents-batch+json")
    assert status == 204, out


def _event(eid: str, subject: str, at: str, tokens: str, model: str = "gpt") -> dict[str, Any]:
    return {"specversion": "1.0", "id": eid, "source": "test", "type": "prompt", "subject": subject, "time": at,
            "data": {"tokens": tokens, "model": model}}


def _records(namespace: str, *events: dict[str, Any]) -> list[SinkRecord]:
    """Records of the single-event shape the sink still reads."""
    return [SinkRecord(namespace, json.dumps({**e, "ingestedAt": "2026-01-01T02:00:00Z"}).encode(), f"t/0/{n}")
            for n, e in enumerate(events)]


def _counting_reads(b: Billow, monkeypatch: Any) -> list[str]:
    reads: list[str] = []
    for name in ("aggregate", "bounded_usage"):
        real = getattr(b.c.usage, name)
        monkeypatch.setattr(b.c.usage, name, lambda *a, _real=real, _name=name, **k: reads.append(_name) or _real(*a, **k))
    return reads


def test_a_check_after_usage_reads_nothing_and_counts_it(billow: Billow, monkeypatch: Any) -> None:
    b = billow
    assert b.c.balance_cache is not None
    _world(b)
    b.clock.set("2026-01-04T10:30:00Z")
    b.usage("3", "2026-01-04T09:00:00Z")
    before = b.value("customer_1", "gpt")
    reads = _counting_reads(b, monkeypatch)
    b.usage("1.5", "2026-01-04T10:29:59.999Z")  # the last segment
    b.usage("2", "2026-01-02T13:00:00Z", subject="customer_3")  # an earlier segment, the customer's other subject
    b.usage("50", "2026-01-04T10:00:00Z", model="claude")  # the feature filters it out
    b.usage("7", "2026-01-04T10:00:00Z", subject="customer_2")  # someone else
    b.usage("9", "2025-12-31T23:00:00Z")  # before measureUsageFrom: never counts
    b.clock.set("2026-01-04T10:45:00Z")
    after = b.value("customer_1", "gpt")
    assert reads == []
    assert after == b.fresh_value("customer_1", "gpt")
    assert after["usage"] == before["usage"] + 3.5


def test_checks_amid_random_usage_and_time_match_fresh_reads(billow: Billow, monkeypatch: Any) -> None:
    b = billow
    _world(b)
    rng = random.Random(17)
    now = t("2026-01-02T06:00:00Z")
    b.clock.set(format_rfc3339(now))
    sent: list[dict[str, Any]] = []
    reads = _counting_reads(b, monkeypatch)
    checks = 0
    for step in range(240):
        action = rng.random()
        if action < 0.45:
            events = []
            for _ in range(rng.randint(1, 3)):
                kind = rng.random()
                if kind < 0.1 and sent:
                    events.append(rng.choice(sent))  # a resend: stored once, counted once
                    continue
                if kind < 0.15:
                    at = now + timedelta(minutes=rng.randint(1, 90))  # ahead of the clock
                elif kind < 0.2:
                    start = t("2026-01-01T00:00:00Z")  # anywhere since measureUsageFrom
                    at = start + (now - start) * rng.random()
                elif kind < 0.23:
                    at = t("2025-12-31T23:59:59.999Z") - timedelta(hours=rng.randint(0, 48))  # never counts
                else:
                    at = now - timedelta(seconds=rng.randint(0, 3 * 3600), milliseconds=rng.randint(0, 999))
                ev = _event(f"r{step}-{len(events)}", rng.choice(["customer_1", "customer_1", "customer_3", "customer_2"]),
                            format_rfc3339(at), str(rng.choice([1, 2, "0.5", "0.001", 13])),
                            rng.choice(["gpt", "gpt", "gpt", "claude"]))
                sent.append(ev)
                events.append(ev)
            _post(b, *events)
        elif action < 0.7:
            now += timedelta(minutes=rng.choice([0, 1, 7, 55, 240, 1440, 4320]), seconds=rng.randint(0, 59))
            b.clock.set(format_rfc3339(now))
        else:
            checks += 1
            got = b.value("customer_1", "gpt")
            assert got == b.fresh_value("customer_1", "gpt"), (step, format_rfc3339(now))
    assert checks > 40
    print(f"{reads.count('bounded_usage')} reads for {checks} checks and as many fresh reads")
    # Usage inside the cached computations was added, not read: far fewer reads than checks (each fresh read
    # above is one read).
    assert reads.count("bounded_usage") - checks < checks // 2, (reads.count("bounded_usage"), checks)
    assert now > t("2026-02-01T00:00:00Z")  # the walk crossed the grant expiry and a reset


def test_usage_stored_while_a_value_is_computed_is_not_lost(billow: Billow, monkeypatch: Any) -> None:
    """The read may or may not have seen usage stored during the computation: such a value is not kept."""
    b = billow
    _world(b)
    b.clock.set("2026-01-04T10:30:00Z")
    real = b.c.usage.bounded_usage
    raced: list[bool] = []

    def read_then_store(*a: Any, **k: Any) -> Any:
        out = real(*a, **k)
        if not raced:
            raced.append(True)
            b.usage("5", "2026-01-04T10:00:00Z")  # lands after the read: not in `out`
        return out

    monkeypatch.setattr(b.c.usage, "bounded_usage", read_then_store)
    first = b.value("customer_1", "gpt")
    assert first["usage"] == 0
    b.usage("1", "2026-01-04T10:10:00Z")  # usage told after the computation: a value kept from it would take this in
    assert b.value("customer_1", "gpt")["usage"] == 6
    assert b.value("customer_1", "gpt") == b.fresh_value("customer_1", "gpt")


class _Told:
    """A sink.UsageListener that records what it hears, in order."""

    def __init__(self) -> None:
        self.heard: list[tuple[str, Any]] = []

    def usage_writing(self, namespace: str, subjects: set[str]) -> None:
        self.heard.append(("writing", set(subjects)))

    def usage_added(self, namespace: str, values: Sequence[MeterValue], changed: set[str]) -> None:
        self.heard.append(("added", (sorted((v.subject, v.value) for v in values), set(changed))))

    def usage_written(self, namespace: str, subjects: set[str]) -> None:
        self.heard.append(("written", set(subjects)))


def test_the_sink_tells_what_it_writes_before_and_after_and_a_failed_write_s_subjects(billow: Billow) -> None:
    b = billow
    ns = b.c.namespace
    told = _Told()
    events = [_event("s1", "customer_1", "2026-01-01T01:00:00Z", "2"), _event("s2", "customer_2", "2026-01-01T01:00:00Z", "3")]
    records = _records(ns, *events)
    sink_batch(records, usage=b.c.usage, meta=b.c.meta, dead_letter=lambda items: None, listener=told)
    both = {"customer_1", "customer_2"}
    assert told.heard == [("writing", both), ("added", ([("customer_1", 2), ("customer_2", 3)], set())),
                          ("added", ([], set())), ("written", both)]
    told.heard.clear()
    sink_batch(records, usage=b.c.usage, meta=b.c.meta, dead_letter=lambda items: None, listener=told)
    assert told.heard == []  # resent: stored once, told once

    def broken(*a: Any, **k: Any) -> None:
        raise ConnectionError("store went away")

    b.c.usage.write = broken  # type: ignore[method-assign]
    late = _records(ns, _event("s3", "customer_3", "2026-01-01T01:00:00Z", "1"))
    try:
        sink_batch(late, usage=b.c.usage, meta=b.c.meta, dead_letter=lambda items: None, listener=told)
    except ConnectionError:
        pass
    else:
        raise AssertionError("the write's failure must reach the caller")
    finally:
        del b.c.usage.write
    assert told.heard == [("writing", {"customer_3"}), ("added", ([], {"customer_3"})), ("written", {"customer_3"})]


def test_checks_racing_ingest_end_where_a_fresh_read_does(billow: Billow) -> None:
    """Two threads ingest usage for the customer's two subjects (and a stranger) while two threads check: once the
    ingest is done, the cached value is the fresh one (no value lost or counted twice in a race between the sink
    telling the cache and checks computing, advancing or keeping values)."""
    import threading

    from billow.services import balances
    from billow.services.ingest import ingest_events

    b = billow
    _world(b)
    b.clock.set("2026-01-04T10:30:00Z")
    c, now = b.c, b.clock.now()
    errors: list[BaseException] = []
    done = threading.Event()

    def ingest(who: int) -> None:
        try:
            for n in range(40):
                at = format_rfc3339(now - timedelta(minutes=n % 50, seconds=who + 1))
                ingest_events(c.namespace, [_event(f"w{who}-{n}-{k}", subject, at, str(1 + n % 3))
                                            for k, subject in enumerate(("customer_1", "customer_3", "customer_2"))],
                              meta=c.meta, bus=c.bus, now=now)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def check() -> None:
        try:
            while not done.is_set():
                balances.value(c.namespace, ["customer_1"], "gpt", None, store=c.entitlements, meta=c.meta,
                               usage=c.usage, now=now, cache=c.balance_cache)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    checkers = [threading.Thread(target=check) for _ in range(2)]
    writers = [threading.Thread(target=ingest, args=(w,)) for w in range(2)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # threads interleave inside a check's computation, not between checks
    try:
        for th in checkers + writers:
            th.start()
        for th in writers:
            th.join()
        done.set()
        for th in checkers:
            th.join()
    finally:
        sys.setswitchinterval(interval)
    assert errors == []
    got = b.value("customer_1", "gpt")
    assert got == b.fresh_value("customer_1", "gpt")
    assert got["usage"] == 2 * 2 * sum(1 + n % 3 for n in range(40))  # two writers, two of the customer's subjects


def test_usage_before_the_period_start_a_cached_run_passed_moves_what_it_carried(billow: Billow,
                                                                                 monkeypatch: Any) -> None:
    """Within the hour after a reset no snapshot is taken there yet: the cached computation runs from
    measureUsageFrom through the reset (the period start) to now, and a check after new usage resumes the run at
    the reset only when no new usage precedes it. Late usage from the period before changes what rolled over."""
    b = billow
    b.ok("POST", "/api/v1/features", {"key": "gpt", "name": "GPT tokens", "meterSlug": "tokens"})
    path = "/api/v1/subjects/customer_1/entitlements"
    b.ok("POST", path, {"type": "metered", "featureKey": "gpt", "measureUsageFrom": "2026-01-01T00:00:00Z",
                        "usagePeriod": {"interval": "MONTH", "anchor": "2026-01-01T00:00:00Z"}})
    b.ok("POST", path + "/gpt/grants", {"amount": 100, "effectiveAt": "2026-01-01T00:00:00Z", "maxRolloverAmount": 100,
                                        "expiration": {"duration": "YEAR", "count": 1}})
    b.clock.set("2026-01-20T00:00:00Z")
    b.usage("10", "2026-01-10T00:00:00Z")
    b.clock.set("2026-02-01T00:20:00Z")  # 20 minutes after the reset: inside the snapshot grace
    assert b.value("customer_1", "gpt")["balance"] == 90
    reads = _counting_reads(b, monkeypatch)
    b.usage("2", "2026-02-01T00:10:00Z")  # after the reset: the run may resume there
    assert b.value("customer_1", "gpt")["balance"] == 88
    b.usage("5", "2026-01-25T00:00:00Z")  # before it: what the reset carried over changes
    b.clock.set("2026-02-01T00:30:00Z")
    got = b.value("customer_1", "gpt")
    assert reads == []  # both were added to the cached computation, not read
    assert got == b.fresh_value("customer_1", "gpt")
    assert (got["balance"], got["usage"]) == (83, 2)


def test_checks_computed_at_a_change_then_moved_on_with_usage_match_fresh_reads(billow: Billow, monkeypatch: Any) -> None:
    """A cached computation made exactly where the balance changes (a grant enters, a grant expires, the period
    resets) is brought forward with usage in its last segment as the clock moves on: the segment the change starts
    is not merged into the one before it (the cache resumes at the last segment's start and, while nothing changes,
    stretches that segment to the new instant without the engine's dry run)."""
    b = billow
    _world(b)
    reads = _counting_reads(b, monkeypatch)
    # 60 enters 2026-01-02T12:00, 40 enters 2026-01-03 and expires 2026-01-08, the period resets on 2026-02-01.
    for n, change in enumerate(("2026-01-02T12:00:00Z", "2026-01-03T00:00:00Z", "2026-01-08T00:00:00Z",
                                "2026-02-01T00:00:00Z")):
        at = t(change)
        b.clock.set(change)
        b.usage("30", format_rfc3339(at - timedelta(hours=1)))
        assert b.value("customer_1", "gpt") == b.fresh_value("customer_1", "gpt"), change
        before = len(reads)
        for k, (ahead, used_at) in enumerate(((timedelta(0), timedelta(0)), (timedelta(minutes=1), timedelta(0)),
                                              (timedelta(minutes=30), timedelta(minutes=10)),
                                              (timedelta(hours=2), timedelta(hours=1, minutes=59)))):
            b.usage("7", format_rfc3339(at + used_at), subject=("customer_1", "customer_3")[k % 2])
            b.clock.set(format_rfc3339(at + ahead + timedelta(seconds=1)))
            got = b.value("customer_1", "gpt")
            assert reads[before:] == [], (change, k)  # the usage added to the cached run: nothing read
            assert got == b.fresh_value("customer_1", "gpt"), (change, k)
            before = len(reads)
        assert n < 3 or b.value("customer_1", "gpt")["usage"] == 28  # the reset: 4 x 7 since
