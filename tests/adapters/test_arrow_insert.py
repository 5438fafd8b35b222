"""The in-process store's inserts as Arrow streams (ClickHouseUsageStore._insert_arrow): the parts hold what
clickhouse-connect's inserts stored for the same columns, and values of every awkward shape (multi-byte UTF-8, NUL,
quotes and braces, lengths past one and two varint bytes, empty and multi-key maps, 18-place decimals, milliseconds)
read back as written."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from billow.adapters.clickhouse import ClickHouseUsageStore, _key_hash
from billow.domain.events import CloudEvent
from billow.domain.usage import MeterValue, StoredEvent

AWKWARD = ["plain", "", "é€😀", "a\x00b", "\n\t\\'\"{}%", "x" * 127, "y" * 128, "z" * 16_384]
WHEN = datetime(2026, 12, 7, 1, 2, 3, 456000, tzinfo=UTC)
TABLES = {  # every column each insert writes, in a stable order
    "event_keys": "source, id, state",
    "meter_values": "meter_id, subject, time, toString(value), value_str, group_by, source, id",
    "events": "source, id, type, subject, time, data, ingested_at, validation_error",
}


def _batch(tag: str) -> tuple[list[MeterValue], list[StoredEvent]]:
    values, events = [], []
    for i, text in enumerate(AWKWARD):
        source, id_ = f"src-{text[:40]}", f"{tag}-{i}"
        groups = [{}, {"model": text}, {"a": "1", "b": text, "": ""}][i % 3]
        values.append(MeterValue(f"m{i % 2}", f"c-{text}", WHEN.replace(microsecond=i * 1000), Decimal(f"{i}.{i:018d}"),
                                 text, groups, source, id_))
        events.append(StoredEvent(CloudEvent(id_, source, f"t-{text}", f"c-{text}", WHEN, {"v": text}), WHEN, text,
                                  '{"v":' + repr(text) + "}"))
    return values, events


def _stored(store: ClickHouseUsageStore, ns: str, tag: str) -> dict[str, list[tuple[Any, ...]]]:
    out = {}
    for table, columns in TABLES.items():
        rows = store._query(f"SELECT {columns} FROM {table} WHERE namespace = {{ns:String}} ORDER BY {columns}",  # noqa: S608
                            {"ns": ns})
        out[table] = sorted((tuple(v.replace(f"{tag}-", "") if isinstance(v, str) else v for v in r) for r in rows),
                            key=repr)
    return out


def test_arrow_inserts_store_what_clickhouse_connects_inserts_stored(chdb_store: ClickHouseUsageStore) -> None:
    assert chdb_store._in_process
    chdb_store.write("by-arrow", *_batch("TAG1"))
    real = ClickHouseUsageStore._insert_arrow
    try:  # the same write through clickhouse-connect's column-oriented insert, as the store made it before
        ClickHouseUsageStore._insert_arrow = ClickHouseUsageStore._insert_columns  # type: ignore[method-assign]
        chdb_store.write("by-columns", *_batch("TAG2"))
    finally:
        ClickHouseUsageStore._insert_arrow = real  # type: ignore[method-assign]
    arrow, columns = _stored(chdb_store, "by-arrow", "TAG1"), _stored(chdb_store, "by-columns", "TAG2")
    assert arrow == columns
    assert len(arrow["meter_values"]) == len(AWKWARD) and len(arrow["events"]) == len(AWKWARD)
    values, events = _batch("TAG1")
    got = chdb_store._query("SELECT toString(value), group_by, time, value_str FROM meter_values "
                            "WHERE namespace = 'by-arrow' ORDER BY id", {})
    want = sorted(values, key=lambda v: v.event_id)
    assert [(Decimal(r[0]), dict(r[1]), r[2].replace(tzinfo=UTC), r[3]) for r in got] == \
        [(v.value, v.group_by, v.time, v.value_str) for v in want]  # exact decimals, maps, milliseconds
    hashes = chdb_store._query("SELECT source, id, key_hash FROM event_keys WHERE namespace = 'by-arrow'", {})
    assert {(r[0], r[1]): r[2] for r in hashes} == {e.event.key: _key_hash(e.event.key) for e in events}  # full 64 bits
    stored, _ = chdb_store.written_keys("by-arrow", [e.event.key for e in events])
    assert stored == {e.event.key for e in events}  # the ledger's hashes find every key
