"""Ingest CPU per event (issue 17): work done once per event, not twice. Counted calls, not timings, so these hold
on a loaded machine; behaviour (times, values, refusals) is asserted beside each count."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

import billow.adapters.clickhouse as ch
import billow.domain.events as events_mod
from billow.domain.events import parse_each
from billow.domain.usage import StoredEvent
from billow.exact import parse_decimal

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def _raw(i: int, **extra: Any) -> dict[str, Any]:
    return {"specversion": "1.0", "id": f"e{i}", "source": "s", "type": "t", "subject": "c",
            "time": "2026-11-30T10:15:00.123456Z", "data": {"v": i}, **extra}


def test_an_event_time_is_truncated_to_milliseconds_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = 0
    real = events_mod.to_millis

    def counting(dt: datetime) -> datetime:
        nonlocal calls
        calls += 1
        return real(dt)

    monkeypatch.setattr(events_mod, "to_millis", counting)
    errors: list[dict[str, Any]] = []
    out = parse_each([_raw(i) for i in range(10)], NOW, errors)
    assert errors == []
    assert [ev.time for _, ev in out] == [datetime(2026, 11, 30, 10, 15, 0, 123000, tzinfo=UTC)] * 10
    assert calls == 10
    # An event without a time takes the ingest time, truncated too; bad events are still all listed.
    no_time = _raw(0)
    del no_time["time"]
    out = parse_each([no_time, _raw(1, time="nope"), _raw(2, id="")], datetime(2026, 12, 6, 0, 0, 0, 999999, tzinfo=UTC),
                     errors)
    assert out[0][1].time == datetime(2026, 12, 6, 0, 0, 0, 999000, tzinfo=UTC)
    assert [(e["index"], e["field"]) for e in errors] == [(1, "time"), (2, "id")]


@pytest.mark.parametrize("raw,want", [(0, "0"), (-0, "0"), (7, "7"), (-12, "-12"), (10**20 - 1, str(10**20 - 1)),
                                      (-(10**20) + 1, str(-(10**20) + 1))])
def test_integer_values_are_exact(raw: int, want: str) -> None:
    got = parse_decimal(raw, int_digits=20, scale=18)
    assert isinstance(got, Decimal) and str(got) == want


@pytest.mark.parametrize("raw", [10**20, -(10**20), 10**40, True, False])
def test_integer_values_out_of_range_or_bool_are_refused(raw: int) -> None:
    with pytest.raises(ValueError):
        parse_decimal(raw, int_digits=20, scale=18)


def test_a_write_hashes_each_key_once(chdb_store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = 0
    real = ch._key_hash

    def counting(key: tuple[str, str]) -> int:
        nonlocal calls
        calls += 1
        return real(key)

    ns = "hash-once"
    chdb_store.written_keys(ns, [("s", "x")])  # builds the in-memory filter, so write() feeds it too
    from billow.domain.events import CloudEvent

    evs = [StoredEvent(CloudEvent(f"k{i}", "s", "t", "c", NOW, None), NOW, "", '{"v":1}') for i in range(50)]
    monkeypatch.setattr(ch, "_key_hash", counting)
    chdb_store.write(ns, [], evs)
    assert calls == 50
    monkeypatch.setattr(ch, "_key_hash", real)
    stored, _ = chdb_store.written_keys(ns, [e.event.key for e in evs] + [("s", "new")])
    assert stored == {e.event.key for e in evs}


def test_settle_freezes_the_start_up_heap_and_widens_young_collections() -> None:
    import gc

    from billow import heap

    before = gc.get_threshold()
    try:
        heap.settle()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[0] >= heap.YOUNG_THRESHOLD
        assert gc.get_threshold()[1:] == before[1:]
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_the_collector_is_paused_while_any_batch_runs_and_restored_after_the_last() -> None:
    import gc
    import threading

    from billow import heap

    assert gc.isenabled()
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, bool] = {}

    def first() -> None:
        with heap.paused():
            first_in.set()
            second_in.wait(5)
        first_out.set()

    t = threading.Thread(target=first)
    t.start()
    first_in.wait(5)
    with heap.paused():
        second_in.set()
        first_out.wait(5)
        seen["after the first ended, the second still running"] = gc.isenabled()
    t.join()
    assert seen == {"after the first ended, the second still running": False}
    assert gc.isenabled()
    gc.disable()
    try:  # off before: left off
        with heap.paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_cycles_are_collected_while_batches_never_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    """A busy server may always have a batch in flight, so the collector is never re-enabled: a batch that ends more
    than COLLECT_EVERY_S after the last collection runs one, and cyclic garbage does not pile up."""
    import gc
    import threading
    import weakref

    from billow import heap

    clock = [1000.0]
    monkeypatch.setattr(heap.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(heap, "_collected", [clock[0], clock[0]])
    holding, release = threading.Event(), threading.Event()

    def long_batch() -> None:  # another thread's batch, in flight the whole time
        with heap.paused():
            holding.set()
            release.wait(10)

    t = threading.Thread(target=long_batch)
    t.start()
    holding.wait(5)
    try:

        class Node:
            pass

        a, b = Node(), Node()
        a.other, b.other = b, a  # type: ignore[attr-defined]
        gone = weakref.ref(a)
        del a, b
        with heap.paused():
            pass
        assert gone() is not None and not gc.isenabled()  # too soon: nothing collected, still paused
        clock[0] += heap.COLLECT_EVERY_S + 0.1
        with heap.paused():
            pass
        assert gone() is None  # collected although a batch was in flight throughout
        assert not gc.isenabled()
    finally:
        release.set()
        t.join()
    assert gc.isenabled()


def test_ingest_and_the_sink_store_a_batch_with_the_collector_paused(sqlite_meta: Any) -> None:
    """The batch's objects are not scanned by the collector on the way (billow.heap.paused): publish (ingest) and
    write (the sink) both run with automatic collection off, and it is on again once the batch is stored."""
    import gc

    from billow.adapters.memory import InMemoryUsageStore
    from billow.bus import decode_batch
    from billow.services.ingest import ingest_events
    from billow.services.sink import SinkRecord, sink_batch

    on: dict[str, bool] = {}
    usage = InMemoryUsageStore()

    class Store(InMemoryUsageStore):
        def write(self, *a: Any, **k: Any) -> None:
            on["write"] = gc.isenabled()
            usage.write(*a, **k)

    store = Store()

    class Bus:
        def publish(self, namespace: str, records: list[tuple[bytes, bytes]]) -> None:
            on["publish"] = gc.isenabled()
            assert all(decode_batch(v) is not None for _, v in records)
            sink_batch([SinkRecord(namespace, v, "t/0/0") for _, v in records], usage=store, meta=sqlite_meta,
                       dead_letter=lambda bad: None)

    assert ingest_events("default", [_raw(i) for i in range(20)], meta=sqlite_meta, bus=Bus(), now=NOW).accepted == 20
    assert on == {"publish": False, "write": False}
    assert gc.isenabled()
    assert len(usage.present_keys("default", [("s", f"e{i}") for i in range(20)])) == 20


def test_billow_serve_settles_the_heap_before_serving(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    import argparse
    import signal
    from types import SimpleNamespace

    import billow.local.server as server_mod
    from billow import cli, heap

    order: list[str] = []

    class FakeServer:
        address = ("127.0.0.1", 1)
        httpd = SimpleNamespace(server_close=lambda: None, shutdown=lambda: None)

        def __init__(self, *a: Any) -> None:
            order.append("built")

        def serve_forever(self) -> None:
            order.append("serving")

        def close(self) -> None:
            pass

    monkeypatch.setattr(server_mod, "BillowServer", FakeServer)
    monkeypatch.setattr(heap, "settle", lambda: order.append("settled"))
    monkeypatch.setattr(signal, "signal", lambda *a: None)
    args = argparse.Namespace(config=None, data_dir=str(tmp_path), host="127.0.0.1", port=1)
    assert cli.serve(args) == 0
    assert order == ["built", "settled", "serving"]


class _CountingPattern:
    def __init__(self, real: Any) -> None:
        self.real, self.calls = real, 0

    def search(self, text: str) -> Any:
        self.calls += 1
        return self.real.search(text)


def test_a_body_without_escapes_or_surrogates_is_not_scanned_by_regex(monkeypatch: pytest.MonkeyPatch) -> None:
    from billow import jsonx

    esc, char = _CountingPattern(jsonx._SURROGATE_ESCAPE), _CountingPattern(jsonx._SURROGATE)
    monkeypatch.setattr(jsonx, "_SURROGATE_ESCAPE", esc)
    monkeypatch.setattr(jsonx, "_SURROGATE", char)
    for text in ('[{"id":"a","data":{"m":"plain"}}]', '[{"id":"a","data":{"m":"caf\u00e9 \U0001f600"}}]'):
        assert jsonx.lone_surrogates(text, jsonx.loads(text)) == []
    assert esc.calls == 0 and char.calls == 0
    # Still found: an escaped lone surrogate, a raw one (non-ASCII text), in a key too; a pair is fine.
    for text, want in (('[{"id":"\\ud800"}]', ["[0].id"]), ('[{"id":"\ud800"}]', ["[0].id"]),
                       ('{"k\\udc00":1}', ["k\\udc00"]), ('["\\ud83d\\ude00"]', [])):
        assert jsonx.lone_surrogates(text, jsonx.loads(text)) == want, text


def test_late_usage_of_many_subjects_is_two_statements(sqlite_meta: Any) -> None:
    """The sink reports late usage per batch, a subject each: the stale snapshots of all of them go in one
    statement (executemany), not one round trip per subject."""
    import sqlalchemy as sa

    from billow.adapters.sql_entitlements import SqlEntitlementStore

    store = SqlEntitlementStore(sqlite_meta.engine)
    store.migrate()
    day = [datetime(2026, 2, d, tzinfo=UTC) for d in range(1, 4)]
    for s in range(20):
        for d in day:
            assert store.save_snapshot("ns", f"E{s}", f"s{s}", d, {"s": s}, computed_from=NOW)
    statements: list[str] = []
    sa.event.listen(sqlite_meta.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    # s0..s9 late from Feb 2 (snapshots after it go), s10..s18 late from Jan (all go); s19 has no late usage.
    late = {f"s{s}": day[1] if s < 10 else datetime(2026, 1, 15, tzinfo=UTC) for s in range(19)}
    store.usage_arrived_late("ns", late, now=NOW)
    assert len([q for q in statements if q.lstrip().upper().startswith(("INSERT", "DELETE"))]) == 2
    far = datetime(2026, 3, 1, tzinfo=UTC)
    for s in range(20):
        want = {"s": s} if s < 10 or s == 19 else None
        assert store.latest_snapshot("ns", f"E{s}", far) == want, s
    assert store.latest_snapshot("ns", "E0", day[2]) == {"s": 0}  # day 2 itself kept (at > earliest goes)
    assert store.latest_snapshot("ns", "E19", far) == {"s": 19}
