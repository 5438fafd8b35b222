"""Issue 15 item 3: a crash after the `meter_values` part is committed but before its materialized-view parts
(`meter_rollup_1m`, `meter_rollup_1h`) leaves "values present, rollups missing, raw event missing". The store
repairs it on the resend that finds those half-done events, and at open without any resend; afterwards every
query (whole hours and minutes from the rollups, partial minutes from the raw values) equals the ground truth.

The torn state is made on the real engine: the views are detached around the values insert, and the write
dies before the raw events insert (in the open test, by SIGKILL of the process that owns the chdb path)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from billow import jsonx
from billow.adapters.clickhouse import _ROLLUPS, ClickHouseUsageStore
from billow.domain.usage import UsageQuery, final_value
from billow.services.meters import build_meter
from billow.services.sink import SinkRecord, sink_batch
from billow.timeutil import window_start, zone
from tests.conftest import t

METER = {"slug": "tokens", "eventType": "prompt", "aggregation": "SUM", "valueProperty": "$.tokens",
         "groupBy": {"model": "$.model"}}
BASE = t("2026-05-01T10:00:00Z")
VIEWS = [f"{rollup[0]}_mv" for rollup in _ROLLUPS]  # every rollup's view (a crash can miss them all)
AGGS = ["SUM", "COUNT", "MIN", "MAX", "LATEST"]  # (a SUM meter keeps no text values to count uniquely)
# (label, from, to (inclusive), window): whole hours, whole minutes, partial minutes at both edges, raw only.
QUERIES: list[tuple[str, datetime | None, datetime | None, str | None]] = [
    ("all", None, None, None),
    ("day", t("2026-05-01T00:00:00Z"), t("2026-05-01T23:59:59.999Z"), "DAY"),
    ("hours", t("2026-05-01T10:00:00Z"), t("2026-05-01T12:59:59.999Z"), "HOUR"),
    ("minutes", None, None, "MINUTE"),
    ("edges", t("2026-05-01T10:17:30.500Z"), t("2026-05-01T12:03:12.250Z"), None),
    ("edges-hourly", t("2026-05-01T10:17:30.500Z"), t("2026-05-01T12:03:12.250Z"), "HOUR"),
    ("raw", t("2026-05-01T10:59:59.500Z"), t("2026-05-01T11:00:40.400Z"), None),
]


def events(n: int = 400) -> list[dict[str, Any]]:
    """n events over ~3 hours, several per minute and hour, on two models and three subjects."""
    return [{"specversion": "1.0", "id": f"e{i}", "source": "torn", "type": "prompt", "subject": f"c{i % 3}",
             "time": (BASE + timedelta(seconds=i * 27, milliseconds=i * 7)).isoformat().replace("+00:00", "Z"),
             "data": {"tokens": f"{i % 17}.{i % 10}", "model": f"m{i % 2}"}} for i in range(n)]


def records(ns: str, evs: list[dict[str, Any]]) -> list[SinkRecord]:
    return [SinkRecord(ns, jsonx.dumps({**e, "ingestedAt": "2026-05-01T13:00:00Z"}).encode(), f"t/0/{n}")
            for n, e in enumerate(evs)]


def truth(evs: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """What each query must answer, from the events themselves."""
    out: dict[str, dict[str, str]] = {}
    for label, lo, hi, window in QUERIES:
        for agg in AGGS:
            cells: dict[str, list[tuple[datetime, Decimal]]] = {}
            for e in evs:
                when = t(e["time"])
                if (lo is None or when >= lo) and (hi is None or when <= hi):
                    w = window_start(when, window, zone("UTC")) if window else None
                    cells.setdefault(str(w), []).append((when, Decimal(e["data"]["tokens"])))
            for w, vals in cells.items():
                v = [x for _, x in vals]
                out.setdefault(f"{label} {agg}", {})[w] = format({
                    "SUM": sum(v, Decimal(0)), "COUNT": Decimal(len(v)), "MIN": min(v), "MAX": max(v),
                    "LATEST": max(vals)[1]}[agg].normalize(), "f")
    return out


def answers(store: Any, ns: str, meter_id: str) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for label, lo, hi, window in QUERIES:
        for agg in AGGS:
            rows = store.aggregate(UsageQuery(namespace=ns, meter_id=meter_id, aggregation=agg, start=lo, end=hi,
                                              window_size=window, window_tz="UTC", subjects=None, group_by=[],
                                              by_subject=False, subject_customers=None))
            for r in rows:
                out.setdefault(f"{label} {agg}", {})[str(r.window_start)] = format(final_value(agg, r).normalize(), "f")
    return out


class Killed(Exception):
    pass


class TornClient:
    """The engine's client, except that the materialized views miss the values insert (their parts are never
    written) and the process dies before the raw events insert."""

    def __init__(self, real: Any, die: Any) -> None:
        self.real, self.die = real, die

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def insert(self, table: str, *args: Any, **kwargs: Any) -> Any:
        return self._torn(self.real.insert, table, *args, **kwargs)

    def raw_insert(self, table: str, *args: Any, **kwargs: Any) -> Any:  # the in-process store's inserts
        return self._torn(self.real.raw_insert, table, *args, **kwargs)

    def _torn(self, insert: Any, table: str, *args: Any, **kwargs: Any) -> Any:
        if table == "events":
            self.die()
        if table != "meter_values":
            return insert(table, *args, **kwargs)
        for mv in VIEWS:
            self.real.command(f"DETACH TABLE {mv}")
        try:
            return insert(table, *args, **kwargs)
        finally:
            for mv in VIEWS:
                self.real.command(f"ATTACH TABLE {mv}")


def raise_killed() -> None:
    raise Killed


def _no_dead_letters(items: list[dict[str, Any]]) -> None:
    raise AssertionError(items)


@pytest.fixture
def meter_ns(sqlite_meta: Any, namespace: str) -> Iterator[tuple[Any, str, str]]:
    meter = build_meter(METER, BASE)
    sqlite_meta.put_meter(namespace, meter)
    yield sqlite_meta, namespace, meter.id


def tear(store: Any, meta: Any, ns: str, evs: list[dict[str, Any]], die: Any) -> None:
    real = store._client
    store._client = TornClient(real, die)
    try:
        sink_batch(records(ns, evs), usage=store, meta=meta, dead_letter=_no_dead_letters)
    finally:
        store._client = real


def test_resend_repairs_torn_rollups(chdb_store: Any, meter_ns: tuple[Any, str, str]) -> None:
    meta, ns, mid = meter_ns
    evs = events()
    done, torn = evs[0::2], evs[1::2]  # both halves share every minute and hour
    sink_batch(records(ns, done), usage=chdb_store, meta=meta, dead_letter=_no_dead_letters)
    with pytest.raises(Killed):
        tear(chdb_store, meta, ns, torn, raise_killed)
    keys = [("torn", e["id"]) for e in torn]
    # The torn state: values stored, raw events not, rollups without the torn half.
    assert chdb_store.present_keys(ns, keys) == set()
    assert chdb_store.valued_keys(ns, [mid], BASE, BASE + timedelta(days=1), keys) == set(keys)
    assert answers(chdb_store, ns, mid)["all SUM"] == truth(done)["all SUM"]

    result = sink_batch(records(ns, torn), usage=chdb_store, meta=meta, dead_letter=_no_dead_letters)
    assert (result.stored, result.duplicates) == (len(torn), 0)
    assert chdb_store.present_keys(ns, keys) == set(keys)
    assert answers(chdb_store, ns, mid) == truth(evs)
    # A second resend changes nothing: everything is a duplicate now.
    result = sink_batch(records(ns, torn), usage=chdb_store, meta=meta, dead_letter=_no_dead_letters)
    assert (result.stored, result.duplicates) == (0, len(torn))
    assert answers(chdb_store, ns, mid) == truth(evs)


def test_a_resend_at_another_time_after_a_torn_write_counts_each_event_once(
        chdb_store: Any, meter_ns: tuple[Any, str, str]) -> None:
    """A client that got no answer resends its events with the same ids, stamped again: a day later here. The dead
    write stored their values at the first copy's times; the resend found them only within its own times, missed
    them, and stored the values again (every event counted twice; found by the Stripe kill loop: usage 110.45 where
    89.15 was sent). Each event counts once, at the time its values were first stored."""
    meta, ns, mid = meter_ns
    torn = events(60)
    with pytest.raises(Killed):
        tear(chdb_store, meta, ns, torn, raise_killed)
    later = [{**e, "time": (t(e["time"]) + timedelta(days=1)).isoformat().replace("+00:00", "Z")} for e in torn]
    result = sink_batch(records(ns, later), usage=chdb_store, meta=meta, dead_letter=_no_dead_letters)
    assert (result.stored, result.duplicates) == (len(torn), 0)
    keys = [("torn", e["id"]) for e in torn]
    assert chdb_store.present_keys(ns, keys) == set(keys)
    assert answers(chdb_store, ns, mid) == truth(torn)  # once, at the first copy's times, rollups repaired
    result = sink_batch(records(ns, later), usage=chdb_store, meta=meta, dead_letter=_no_dead_letters)
    assert (result.stored, result.duplicates) == (0, len(torn))
    assert answers(chdb_store, ns, mid) == truth(torn)


def test_backfill_rerun_repairs_torn_rollups(chdb_store: Any, meter_ns: tuple[Any, str, str]) -> None:
    """A meter backfill that died between its values part and the view parts is made whole by its re-run."""
    from billow.services.sink import backfill_meter

    meta, ns, mid = meter_ns
    evs = events(120)
    other = build_meter({**METER, "slug": "tokens2"}, BASE)
    sink_batch(records(ns, evs), usage=chdb_store, meta=meta, dead_letter=_no_dead_letters)
    real = chdb_store._client
    chdb_store._client = TornClient(real, raise_killed)
    try:
        assert backfill_meter(ns, other, chdb_store) == len(evs)  # values written, the views missed them
    finally:
        chdb_store._client = real
    assert answers(chdb_store, ns, other.id).get("all SUM") is None
    assert backfill_meter(ns, other, chdb_store) == 0  # nothing new to write: the values are all there
    assert answers(chdb_store, ns, other.id) == truth(evs)


# -- repaired at store open, without any resend (a process of its own: chdb opens one path per process) -----
def _phase(phase: str, data_dir: str) -> None:
    from billow.bootstrap import Settings, build

    c = build(Settings(data_dir=data_dir))
    ns = c.namespace
    evs = events()
    if phase == "tear":
        meter = build_meter(METER, BASE)
        c.meta.put_meter(ns, meter)
        sink_batch(records(ns, evs[0::2]), usage=c.usage, meta=c.meta, dead_letter=_no_dead_letters)
        store = c.usage._real()  # type: ignore[attr-defined]
        tear(store, c.meta, ns, evs[1::2], lambda: os.kill(os.getpid(), signal.SIGKILL))
        raise AssertionError("not killed")
    meter = c.meta.get_meter(ns, "tokens")
    assert meter is not None
    keys = [("torn", e["id"]) for e in evs[1::2]]
    print(json.dumps({"answers": answers(c.usage, ns, meter.id), "present": len(c.usage.present_keys(ns, keys))}))
    c.close()


def test_store_open_repairs_torn_rollups(tmp_path: Path) -> None:
    def run(phase: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", f"from tests.adapters.test_torn_rollups import _phase; "
                               f"_phase({phase!r}, {str(tmp_path)!r})"], capture_output=True, text=True,
                              cwd=Path(__file__).parents[2], timeout=120)

    torn = run("tear")
    assert torn.returncode == -signal.SIGKILL, torn.stderr
    journal = tmp_path / "usage-journal"
    assert journal.read_text().startswith("1")  # the write in progress when the process died
    opened = run("query")
    assert opened.returncode == 0, opened.stderr
    assert journal.read_text().startswith("0")  # repaired and cleared at open
    got = json.loads(opened.stdout.strip().splitlines()[-1])
    assert got["present"] == 0  # no resend: the torn half's raw events are still missing
    evs = events()
    assert got["answers"] == truth(evs)  # yet every query counts its values, from rollups and raw alike


def test_a_server_store_never_rebuilds_rollups_on_resend() -> None:
    """On a ClickHouse server an INSERT writes its views server-side; a delete-and-rebuild there could race another
    sink's insert into the same cells, so `repair` must issue no statement at all."""

    class ServerClient:  # the HTTP client's surface the store touches; any statement fails the test
        def query(self, *a: object, **k: object) -> None:
            raise AssertionError("repair queried a server store")

        def command(self, *a: object, **k: object) -> None:
            raise AssertionError("repair rebuilt rollups on a server store")

    ClickHouseUsageStore(ServerClient()).repair("ns", [("src", "1"), ("src", "2")])
