"""Issue 17 item 1 (the vectorised ingest path): ingest hands the bus one record per partition per batch, carrying the
events and their meter values as ingest validated them; the sink stores those and still reads the per-event records a
deployed topic holds, on the in-memory twin and on chdb alike, exactly once and exactly."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import pytest

from billow import jsonx
from billow.bus import PARTITIONS
from billow.domain.usage import UsageQuery, final_value
from billow.errors import ValidationFailed
from billow.services.ingest import encode_record, ingest_events, parse_batch, partition_for
from billow.services.meters import create_meter
from billow.services.sink import SinkRecord, sink_batch
from tests.conftest import event, t

NOW = t("2026-02-01T00:00:00Z")


class Lock:
    def __call__(self) -> Any:
        import contextlib

        return contextlib.nullcontext()


class RecordingBus:
    def __init__(self) -> None:
        self.published: list[tuple[str, list[tuple[bytes, bytes]]]] = []

    def publish(self, namespace: str, records: Sequence[tuple[bytes, bytes]]) -> None:
        self.published.append((namespace, list(records)))

    def close(self) -> None:
        return None


@pytest.fixture
def world(sqlite_meta: Any, usage_store: Any, namespace: str) -> dict[str, Any]:
    m = create_meter(namespace, {"slug": "tokens", "eventType": "prompt", "aggregation": "SUM",
                                 "valueProperty": "$.tokens", "groupBy": {"model": "$.model"}},
                     meta=sqlite_meta, usage=usage_store, now=NOW, sink_lock=Lock())
    return {"usage": usage_store, "meta": sqlite_meta, "meter": m, "dead": [], "ns": namespace}


def total(w: dict[str, Any], meter: Any = None, agg: str = "SUM") -> Decimal:
    mid = (meter or w["meter"]).id
    rows = w["usage"].aggregate(UsageQuery(w["ns"], mid, agg, None, None, None, "UTC", None, [], False, None))
    return final_value(agg, rows[0]) if rows else Decimal(0)


def publish(w: dict[str, Any], raws: list[dict[str, Any]]) -> list[tuple[bytes, bytes]]:
    bus = RecordingBus()
    ingest_events(w["ns"], raws, meta=w["meta"], bus=bus, now=NOW)
    assert len(bus.published) == 1
    return bus.published[0][1]


def as_sink(w: dict[str, Any], records: list[tuple[bytes, bytes]]) -> list[SinkRecord]:
    return [SinkRecord(w["ns"], value, f"t/{partition_for(key, PARTITIONS)}/{n}") for n, (key, value) in enumerate(records)]


def run(w: dict[str, Any], recs: list[SinkRecord]) -> Any:
    return sink_batch(recs, usage=w["usage"], meta=w["meta"], dead_letter=w["dead"].extend)


def test_one_record_per_partition_per_batch_and_copies_share_a_partition(world: dict[str, Any]) -> None:
    raws = [event(i, tokens="0.1", model=f"m{i % 3}") for i in range(1000)]
    first = publish(world, raws)
    assert len(first) <= PARTITIONS
    assert len({partition_for(k, PARTITIONS) for k, _ in first}) == len(first)
    again = publish(world, [event(i, tokens="0.1", model="m0") for i in range(0, 1000, 7)])
    where = {}  # every event id -> the partition its record went to
    for key, value in first:
        for e in jsonx.loads(value)["events"]:
            where[e[0]] = partition_for(key, PARTITIONS)
    for key, value in again:
        for e in jsonx.loads(value)["events"]:
            assert where[e[0]] == partition_for(key, PARTITIONS)  # a resend lands where the first copy did


def test_batch_records_store_exact_values_once(world: dict[str, Any]) -> None:
    raws = [event(i, tokens="0.1" if i % 2 else "0.2", model="gpt") for i in range(3000)]
    recs = as_sink(world, publish(world, raws))
    result = run(world, recs)
    assert (result.stored, result.duplicates, world["dead"]) == (3000, 0, [])
    assert total(world) == Decimal("450.0")  # 1500 x 0.1 + 1500 x 0.2, exactly
    again = run(world, recs)  # redelivered
    assert (again.stored, again.duplicates) == (0, 3000)
    assert total(world) == Decimal("450.0")
    stored = world["usage"].list_events(world["ns"], subjects=None, start=None, end=None, event_id="2999", limit=5)
    assert [(s.event.id, s.event.data) for s in stored] == [("2999", {"tokens": "0.1", "model": "gpt"})]


def test_old_per_event_records_and_batch_records_mix(world: dict[str, Any]) -> None:
    """A deployed topic holds per-event records; a resend after the upgrade comes as a batch record: counted once."""
    old = [SinkRecord(world["ns"], encode_record(e, NOW), f"t/0/{i}")
           for i, e in enumerate(parse_batch([event(i, tokens="1.5", model="a") for i in range(10)], NOW))]
    new = as_sink(world, publish(world, [event(i, tokens="1.5", model="a") for i in range(5, 15)]))
    result = run(world, old + new)
    assert (result.stored, result.duplicates) == (15, 5)
    assert total(world) == Decimal("22.5")


def test_meters_that_changed_between_ingest_and_sink(world: dict[str, Any]) -> None:
    """Values carried by the record are those of the meters ingest saw; a meter created before the sink ran values the
    events from their data, as for a per-event record."""
    recs = as_sink(world, publish(world, [event(i, tokens=i, model="a") for i in range(1, 5)]))
    count = create_meter(world["ns"], {"slug": "prompts", "eventType": "prompt", "aggregation": "COUNT"},
                         meta=world["meta"], usage=world["usage"], now=NOW, sink_lock=Lock())
    run(world, recs)
    assert total(world) == 10
    assert total(world, count, "COUNT") == 4


def test_a_malformed_batch_record_is_dead_lettered_and_the_rest_kept(world: dict[str, Any]) -> None:
    good = as_sink(world, publish(world, [event(i, tokens=2, model="a") for i in range(3)]))
    bad = SinkRecord(world["ns"], b'{"billowBatch":1,"ingestedAt":"2026-02-01T00:00:00Z","events":[[1,2]]}', "t/1/9")
    result = run(world, [bad, *good])
    assert result.stored == 3 and total(world) == 6
    assert [d["where"] for d in world["dead"]] == ["t/1/9"]


def test_the_batch_is_still_refused_whole_with_every_bad_event(world: dict[str, Any]) -> None:
    raws = [event(0, tokens=1, model="a"), event(1, tokens="x", model="a"), {"id": "2"}]
    with pytest.raises(ValidationFailed) as exc:
        publish(world, raws)
    assert [(e["index"], e["field"]) for e in exc.value.errors] == [
        (1, "data ($.tokens)"), (2, "source"), (2, "type"), (2, "subject"), (2, "specversion")]


def test_a_bus_that_partitions_by_event_key_gets_one_batch_shaped_record_per_event(world: dict[str, Any]) -> None:
    """KafkaBus (murmur2 partitioner): each record keeps the event's own key, so a copy of an event a deployed topic
    holds in the older per-event shape lands on the same partition; the sink still skips validation and extraction."""
    bus = RecordingBus()
    bus.per_event_records = True  # type: ignore[attr-defined]
    ingest_events(world["ns"], [event(i, tokens="0.5", model="a") for i in range(4)], meta=world["meta"], bus=bus, now=NOW)
    records = bus.published[0][1]
    assert [k for k, _ in records] == [f"test\x1f{i}".encode() for i in range(4)]
    assert all(len(jsonx.loads(v)["events"]) == 1 for _, v in records)
    assert run(world, as_sink(world, records)).stored == 4 and total(world) == 2


def test_a_resend_after_a_crash_between_values_and_raw_events_counts_once(world: dict[str, Any],
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Batch records: the values of a write land, the process dies before its raw events; the batch comes again,
    grown by two events (and a copy of one in another record): every event counted once, every raw event stored."""
    usage = world["usage"]
    real_write = usage.write

    def crashing(ns: str, values: Any, events: Any) -> None:
        real_write(ns, values, [])  # values land, then the process dies before the raw events
        raise RuntimeError("killed")

    monkeypatch.setattr(usage, "write", crashing)
    with pytest.raises(RuntimeError):
        run(world, as_sink(world, publish(world, [event(i, tokens="1.5", model="a") for i in range(5)])))
    monkeypatch.undo()
    keys = [("test", str(i)) for i in range(7)]
    assert usage.present_keys(world["ns"], keys) == set()  # no raw event landed
    again = as_sink(world, publish(world, [event(i, tokens="1.5", model="a") for i in range(7)]))
    again += as_sink(world, publish(world, [event(3, tokens="1.5", model="a")]))
    result = run(world, again)
    assert (result.stored, result.duplicates, result.unmatched) == (7, 1, 0)
    assert total(world) == Decimal("10.5")
    assert usage.present_keys(world["ns"], keys) == set(keys)
    assert run(world, again).stored == 0 and total(world) == Decimal("10.5")


def test_a_meter_deleted_between_ingest_and_sink_gets_no_values(world: dict[str, Any]) -> None:
    """Values a record carries for a meter deleted before the sink ran are not stored; the other meters' are, and
    an event only that meter counted is stored as unmatched."""
    from billow.services.meters import delete_meter

    count = create_meter(world["ns"], {"slug": "prompts", "eventType": "prompt", "aggregation": "COUNT"},
                         meta=world["meta"], usage=world["usage"], now=NOW, sink_lock=Lock())
    other = create_meter(world["ns"], {"slug": "pings", "eventType": "ping", "aggregation": "COUNT"},
                         meta=world["meta"], usage=world["usage"], now=NOW, sink_lock=Lock())
    raws = [event(i, tokens=i, model="a") for i in range(1, 5)] + [event(9, type="ping")]
    recs = as_sink(world, publish(world, raws))
    delete_meter(world["ns"], "prompts", meta=world["meta"], now=NOW)
    delete_meter(world["ns"], "pings", meta=world["meta"], now=NOW)
    result = run(world, recs)
    assert (result.stored, result.unmatched) == (5, 1)
    assert total(world) == 10
    assert total(world, count, "COUNT") == 0 and total(world, other, "COUNT") == 0
