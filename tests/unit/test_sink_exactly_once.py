"""The usage sink under redelivery, crashes between its two writes, poison records and late events, on the
in-memory twin and on the real engine (chdb) alike."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from billow.domain.usage import UsageQuery, final_value
from billow.services.ingest import encode_record, parse_batch
from billow.services.meters import create_meter
from billow.services.sink import SinkRecord, sink_batch
from tests.conftest import event, t

NOW = t("2026-02-01T00:00:00Z")


class Lock:
    def __call__(self) -> Any:
        import contextlib

        return contextlib.nullcontext()


@pytest.fixture
def world(sqlite_meta: Any, usage_store: Any, namespace: str) -> dict[str, Any]:
    m = create_meter(namespace, {"slug": "tokens", "eventType": "prompt", "aggregation": "SUM",
                                 "valueProperty": "$.tokens"},
                     meta=sqlite_meta, usage=usage_store, now=NOW, sink_lock=Lock())
    return {"usage": usage_store, "meta": sqlite_meta, "meter": m, "dead": [], "ns": namespace}


def records(w: dict[str, Any], raws: list[dict[str, Any]]) -> list[SinkRecord]:
    return [SinkRecord(w["ns"], encode_record(e, NOW), f"t/0/{i}") for i, e in enumerate(parse_batch(raws, NOW))]


def total(w: dict[str, Any]) -> Decimal:
    rows = w["usage"].aggregate(UsageQuery(w["ns"], w["meter"].id, "SUM", None, None, None, "UTC", None, [], False,
                                           None))
    return final_value("SUM", rows[0]) if rows else Decimal(0)


def run(w: dict[str, Any], recs: list[SinkRecord]) -> Any:
    return sink_batch(recs, usage=w["usage"], meta=w["meta"], dead_letter=w["dead"].extend)


def test_same_batch_twice_counts_once(world: dict[str, Any]) -> None:
    recs = records(world, [event(i, tokens="1.5") for i in range(10)])
    assert run(world, recs).stored == 10
    again = run(world, recs)
    assert (again.stored, again.duplicates) == (0, 10)
    assert total(world) == Decimal("15")


def test_duplicates_inside_one_batch(world: dict[str, Any]) -> None:
    recs = records(world, [event(1, tokens=2), event(1, tokens=2), event(2, tokens=3)])
    assert run(world, recs).stored == 2
    assert total(world) == 5


def test_crash_between_value_write_and_event_write(world: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    usage = world["usage"]
    real_write = usage.write

    def crashing(ns: str, values: Any, events: Any) -> None:
        real_write(ns, values, [])  # values land, then the process dies before the raw events
        raise RuntimeError("killed")

    monkeypatch.setattr(usage, "write", crashing)
    recs = records(world, [event(i, tokens=1) for i in range(5)])
    with pytest.raises(RuntimeError):
        run(world, recs)
    monkeypatch.undo()
    assert usage.present_keys(world["ns"], [("test", str(i)) for i in range(5)]) == set()  # no raw event landed
    # Redelivered with a different batch shape: a superset with two new events.
    more = records(world, [event(i, tokens=1) for i in range(7)])
    assert run(world, more).stored == 7
    assert total(world) == 7
    assert usage.present_keys(world["ns"], [("test", str(i)) for i in range(7)]) == {("test", str(i)) for i in range(7)}


def test_poison_record_goes_to_dead_letters_and_the_rest_is_kept(world: dict[str, Any]) -> None:
    recs = records(world, [event(1, tokens=1)]) + [SinkRecord(world["ns"], b"{not json", "t/0/99"),
                                             SinkRecord(world["ns"], b'{"id": "x"}', "t/0/100")] + records(world, [event(2, tokens=2)])
    result = run(world, recs)
    assert result.stored == 2 and len(result.dead_letters) == 2
    assert [d["where"] for d in world["dead"]] == ["t/0/99", "t/0/100"]
    assert total(world) == 3


def test_late_and_out_of_order_events_land_in_their_window(world: dict[str, Any]) -> None:
    run(world, records(world, [event(2, tokens=1, time="2026-01-31T23:00:00Z")]))
    run(world, records(world, [event(1, tokens=5, time="2026-01-20T10:00:00Z")]))  # eleven days late
    rows = world["usage"].aggregate(UsageQuery(world["ns"], world["meter"].id, "SUM", None, None, "DAY", "UTC", None, [], False, None))
    assert [(r.window_start, r.sum) for r in rows] == [(t("2026-01-20T00:00:00Z"), 5), (t("2026-01-31T00:00:00Z"), 1)]


def test_new_meter_backfills_stored_events_once(world: dict[str, Any]) -> None:
    run(world, records(world, [event(i, tokens=i) for i in range(1, 5)]))
    m2 = create_meter(world["ns"], {"slug": "prompts", "eventType": "prompt", "aggregation": "COUNT"},
                      meta=world["meta"], usage=world["usage"], now=NOW, sink_lock=Lock())
    rows = world["usage"].aggregate(UsageQuery(world["ns"], m2.id, "COUNT", None, None, None, "UTC", None, [], False, None))
    assert rows[0].count == 4
