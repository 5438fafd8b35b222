"""Issue 17 items 1+2 (sink and store side): what storing a batch costs the embedded engine, in statements.

`billow serve` pays a fixed cost per chdb statement, so a write is its three inserts (ledger, values, raw events)
and nothing else; a repair of rollups that are whole (the retry after a write whose raw events insert failed) only
reads, and a torn rollup is rebuilt alone, not the four whole ones beside it. Counted on the real engine."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest

from billow.adapters.clickhouse import _ROLLUPS
from billow.adapters.memory import InMemoryUsageStore
from billow.domain.events import CloudEvent
from billow.domain.usage import MeterValue, StoredEvent, UsageQuery, final_value
from tests.conftest import t

T0 = t("2026-04-02T09:00:00Z")


class Counting:
    """The chdb connection under the store's client, noting every statement it runs."""

    def __init__(self, real: Any) -> None:
        self.real, self.sql = real, []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def query(self, sql: Any, *a: Any, **k: Any) -> Any:
        self.sql.append(sql.decode() if isinstance(sql, bytes) else sql)
        return self.real.query(sql, *a, **k)

    def send_query(self, sql: Any, *a: Any, **k: Any) -> Any:
        self.sql.append(sql.decode() if isinstance(sql, bytes) else sql)
        return self.real.send_query(sql, *a, **k)


class counted:  # noqa: N801 (a context manager read as a phrase)
    def __init__(self, store: Any) -> None:
        self.handle = store._client._backend._handle

    def __enter__(self) -> list[str]:
        self.real = self.handle.conn
        self.handle.conn = Counting(self.real)
        return self.handle.conn.sql  # type: ignore[no-any-return]

    def __exit__(self, *exc: object) -> None:
        self.handle.conn = self.real


def values(n: int, source: str = "cost", meter: str = "M1") -> list[MeterValue]:
    return [MeterValue(meter, f"s{i % 3}", T0 + timedelta(minutes=i * 7, milliseconds=i), Decimal(f"{i}.25"), "",
                       {"model": f"m{i % 2}"}, source, f"e{i}") for i in range(n)]


def raw(vals: list[MeterValue]) -> list[StoredEvent]:
    return [StoredEvent(CloudEvent(v.event_id, v.source, "prompt", v.subject, v.time, None), T0, "", '{"n":1}')
            for v in vals]


def answers(store: Any, ns: str, meter: str = "M1") -> list[Any]:
    out = []
    for agg in ("SUM", "COUNT", "MIN", "MAX", "LATEST"):
        for size in (None, "MINUTE", "HOUR"):
            for by_subject in (False, True):
                q = UsageQuery(namespace=ns, meter_id=meter, aggregation=agg, start=None, end=None, window_size=size,
                               window_tz="UTC", subjects=["s1"] if by_subject else None, group_by=["model"],
                               by_subject=by_subject, subject_customers=None)
                out.append(sorted((str(r.window_start), r.subject, str(r.groups), final_value(agg, r))
                                  for r in store.aggregate(q)))
    return out


def test_a_write_is_three_statements(chdb_store: Any, namespace: str) -> None:
    """The ledger, the values and the raw events: one INSERT each, no DESCRIBE TABLE before each insert."""
    vals = values(50)
    with counted(chdb_store) as sql:
        chdb_store.write(namespace, vals, raw(vals))
    assert [s.split()[0] + " " + s.split()[2].strip("`") for s in sql] == [
        "INSERT event_keys", "INSERT meter_values", "INSERT events"], sql
    assert chdb_store.present_keys(namespace, [(v.source, v.event_id) for v in vals]) == {
        (v.source, v.event_id) for v in vals}


def test_the_values_insert_runs_its_views_side_by_side(chdb_store: Any, namespace: str) -> None:
    """meter_values feeds five rollup views: its insert asks the engine to run them in parallel (the same CPU, less
    wall time per batch on two cores); the other inserts, with one view or none, do not; the answers are those of the
    values written."""
    vals = values(60)
    with counted(chdb_store) as sql:
        chdb_store.write(namespace, vals, raw(vals))
    by_table = {s.split()[2].strip("`"): s for s in sql}
    assert "parallel_view_processing" in by_table["meter_values"], by_table["meter_values"]
    assert "parallel_view_processing" not in by_table["events"]
    mem = InMemoryUsageStore()
    mem.write(namespace, vals, raw(vals))
    assert answers(chdb_store, namespace) == answers(mem, namespace)


def test_repairing_whole_rollups_only_reads(chdb_store: Any, namespace: str) -> None:
    """Values stored, raw events not, rollups whole (the raw events insert failed, the values insert had returned
    with its views): the retry's repair checks the cells and rewrites nothing."""
    vals = values(40)
    chdb_store.write(namespace, vals, [])
    before = answers(chdb_store, namespace)
    keys = [(v.source, v.event_id) for v in vals]
    with counted(chdb_store) as sql:
        chdb_store.repair(namespace, keys)
    assert [s for s in sql if not s.lstrip().upper().startswith("SELECT")] == []
    assert len(sql) <= 2, sql
    assert answers(chdb_store, namespace) == before


def test_a_rollup_torn_alone_is_rebuilt_alone(chdb_store: Any, namespace: str) -> None:
    """One view missed the values insert: repair rebuilds that rollup's cells and leaves the other four alone, and
    every answer is exact again."""
    whole = values(30, source="whole")
    chdb_store.write(namespace, whole, raw(whole))
    torn = values(30, source="torn")
    client = chdb_store._client
    client.command("DETACH TABLE meter_rollup_1h_mv")
    try:
        chdb_store.write(namespace, torn, [])
    finally:
        client.command("ATTACH TABLE meter_rollup_1h_mv")
    reference = values(30, source="whole") + values(30, source="torn")
    with counted(chdb_store) as sql:
        chdb_store.repair(namespace, [(v.source, v.event_id) for v in torn])
    writes = [s for s in sql if not s.lstrip().upper().startswith("SELECT")]
    assert {s.split()[2].strip("`") for s in writes} == {"meter_rollup_1h"}, writes
    assert {r[0] for r in _ROLLUPS} > {"meter_rollup_1h"}
    twin = InMemoryUsageStore()
    twin.write(namespace, reference, [])
    assert answers(chdb_store, namespace) == answers(twin, namespace)


def test_a_batch_is_hashed_once_from_look_up_to_write(chdb_store: Any, namespace: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The sink looks a batch's keys up (written_keys), then writes them: each key's ledger hash is computed once."""
    import billow.adapters.clickhouse as ch

    calls = 0
    real = ch._key_hash

    def counting(key: tuple[str, str]) -> int:
        nonlocal calls
        calls += 1
        return real(key)

    vals = values(40, source="hash")
    keys = [(v.source, v.event_id) for v in vals]
    monkeypatch.setattr(ch, "_key_hash", counting)
    assert chdb_store.written_keys(namespace, keys) == (set(), set())
    chdb_store.write(namespace, vals, raw(vals))
    assert calls == len(keys)
    monkeypatch.setattr(ch, "_key_hash", real)
    assert chdb_store.written_keys(namespace, keys)[0] == set(keys)


def test_a_write_hands_the_encoder_integer_times(chdb_store: Any, namespace: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Times reach clickhouse-connect as epoch milliseconds (its per-value datetime conversion is a float
    timestamp, a floor and a multiply per value); what is stored is the same instant, to the millisecond."""
    from clickhouse_connect.datatypes.temporal import DateTime64

    converted = 0
    real = DateTime64._datetime64_ticks

    def counting(self: Any, *a: Any) -> int:
        nonlocal converted
        converted += 1
        return real(self, *a)  # type: ignore[no-any-return]

    vals = values(20, source="ticks")
    monkeypatch.setattr(DateTime64, "_datetime64_ticks", counting)
    chdb_store.write(namespace, vals, raw(vals))
    assert converted == 0
    stored = chdb_store._query("SELECT id, time, ingested_at FROM events WHERE namespace = {ns:String} "
                               "AND source = 'ticks' ORDER BY time", {"ns": namespace})
    assert [(r[0], r[1].replace(tzinfo=None), r[2].replace(tzinfo=None)) for r in stored] == [
        (v.event_id, v.time.replace(tzinfo=None), T0.replace(tzinfo=None)) for v in vals]
    got = chdb_store._query("SELECT id, time, toString(value) FROM meter_values WHERE namespace = {ns:String} "
                            "AND source = 'ticks' ORDER BY time", {"ns": namespace})
    assert [(r[0], r[1].replace(tzinfo=None), Decimal(r[2])) for r in got] == [
        (v.event_id, v.time.replace(tzinfo=None), v.value) for v in vals]


def test_a_records_times_stay_epoch_milliseconds_from_record_to_insert() -> None:
    """The sink reads a batch record's events into columns, times as the epoch milliseconds the record carries (no
    datetime made per event or value: the insert takes them as they are); a time out of range is still refused."""
    import msgspec

    from billow.bus import batch_records, decode_batch
    from billow.services.sink import decode_batch_events

    ms = int(T0.timestamp() * 1000)
    rows = [(b"one-partition", [f"e{i}", "src", "prompt", "s", ms + (i // 3), msgspec.Raw(b'{"n":1}'),
                          [["M1", "1.5", "", {}]]]) for i in range(6)]
    ((_, value),) = batch_records("2026-04-02T10:00:00Z", ["M1"], rows)
    record = decode_batch(value)
    assert record is not None and len(record.events) == 6
    decoded = decode_batch_events(record)
    assert decoded.events.ms == decoded.values.ms == [ms, ms, ms, ms + 1, ms + 1, ms + 1]
    assert decoded.values.values == [Decimal("1.5")] * 6 and decoded.events.data == ['{"n":1}'] * 6
    assert [s.event.time for s in decoded.events][::3] == [T0, T0 + timedelta(milliseconds=1)]
    assert [v.time for v in decoded.values][::3] == [T0, T0 + timedelta(milliseconds=1)]
    bad = decode_batch(value.replace(b'"s",%d,' % ms, b'"s",%d,' % (7 * 10**12), 1))
    assert bad is not None
    with pytest.raises(ValueError, match="not a valid event"):
        decode_batch_events(bad)


def test_a_look_up_binds_its_hashes_as_one_parameter(chdb_store: Any, namespace: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The ledger look-up (every batch on a ClickHouse server; in process when the key filter may hold a key) hands
    its key hashes over as one array literal, not one clickhouse-connect parameter formatting per hash."""
    from clickhouse_connect.driver import binding

    vals = values(300, source="bind")
    keys = [(v.source, v.event_id) for v in vals]
    chdb_store.write(namespace, vals, raw(vals))  # in the key filter now: the look-up queries the ledger
    formatted = 0
    real = binding.format_bind_value

    def counting(*a: Any, **k: Any) -> Any:
        nonlocal formatted
        formatted += 1
        return real(*a, **k)

    monkeypatch.setattr(binding, "format_bind_value", counting)
    stored, begun = chdb_store.written_keys(namespace, keys + [("bind", "never")])
    assert (stored, begun) == (set(keys), set())
    assert formatted < 10, formatted


def test_an_open_after_a_write_whose_views_landed_rewrites_nothing(chdb_store: Any, namespace: str,
                                                                   tmp_path: Any) -> None:
    """The journal names the cells of the write a crash interrupted; at open, the cells every rollup holds whole
    (the process died after the values insert returned) are checked, not deleted and re-derived. A journalled cell
    a rollup lacks is still rebuilt (test_torn_rollups.test_store_open_repairs_torn_rollups)."""
    import os

    from billow import jsonx
    from billow.adapters.clickhouse import ClickHouseUsageStore, _hour_cells

    journal = tmp_path / "usage-journal"
    store = ClickHouseUsageStore(chdb_store._client, journal)  # the session's engine (one chdb path per process)
    try:
        vals = values(25, source="landed")
        store.write(namespace, vals, [])  # values and their views in; the raw events never came (the process died)
        before = answers(store, namespace)
        journal.write_bytes(b"1" + jsonx.dumps({"namespace": namespace, "cells": _hour_cells(vals)}).encode())
        with counted(store) as sql:
            assert store.recover()
        assert [s for s in sql if not s.lstrip().upper().startswith("SELECT")] == []
        assert journal.read_bytes().startswith(b"0")
        assert answers(store, namespace) == before
    finally:
        assert store._journal is not None
        os.close(store._journal)


def test_a_server_store_sends_the_declared_column_types() -> None:
    """Only the in-process engine (chdb 26.9, tested here) gets LowCardinality columns as String; a ClickHouse server,
    whose version is the operator's, gets every column with its declared type, and never a DESCRIBE."""
    from billow.adapters.clickhouse import ClickHouseUsageStore

    class ServerClient:  # the HTTP client's insert; every other call fails the test
        def __init__(self) -> None:
            self.inserts: dict[str, list[str]] = {}

        def insert(self, table: str, data: Any, *, column_names: list[str], column_type_names: list[str],
                   column_oriented: bool, settings: dict[str, Any] | None = None) -> None:
            assert column_oriented and len(data) == len(column_names) == len(column_type_names)
            self.inserts[table] = column_type_names

    client = ServerClient()
    vals = values(3, source="server")
    ClickHouseUsageStore(client).write("ns", vals, raw(vals))
    assert client.inserts["event_keys"][0] == "LowCardinality(String)"
    assert client.inserts["meter_values"][:2] == ["LowCardinality(String)"] * 2
    assert [client.inserts["events"][i] for i in (0, 3)] == ["LowCardinality(String)"] * 2
