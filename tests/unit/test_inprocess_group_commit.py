"""The in-process bus commits concurrent batches in groups (issue 17 item 4: ingest throughput must not fall with more
clients). Batches published while a delivery is under way go to the sink together, in one invocation, so one write
stores them; each publish still returns only once its own records were delivered, or raises the error that kept
them from it."""

from __future__ import annotations

import base64
import threading
import time
from contextlib import contextmanager
from typing import Any

import pytest

import billow.adapters.inprocess_bus as bus_mod
from billow.adapters.inprocess_bus import InProcessBus


def _values(event: dict[str, Any]) -> list[bytes]:
    return [base64.b64decode(r["value"]) for recs in event["records"].values() for r in recs]


class Sink:
    """A delivery target that takes `delay` seconds per invocation and notes what each one carried; it fails an
    invocation that carries `poison`, and every invocation while `down`."""

    def __init__(self, delay: float = 0.05, poison: bytes | None = None) -> None:
        self.delay, self.poison, self.down = delay, poison, False
        self.calls: list[list[bytes]] = []
        self.offsets: list[tuple[str, int, int]] = []
        self.stored: set[bytes] = set()
        self._guard = threading.Lock()

    def __call__(self, event: dict[str, Any]) -> None:
        time.sleep(self.delay)
        with self._guard:
            values = _values(event)
            self.calls.append(values)
            self.offsets += [(r["topic"], r["partition"], r["offset"]) for recs in event["records"].values()
                             for r in recs]
            if self.down:
                raise ConnectionError("usage store unavailable")
            if self.poison in values:
                raise ValueError("the store refused this batch")
            self.stored.update(values)


def _bus(sink: Sink) -> InProcessBus:
    lock = threading.RLock()

    @contextmanager
    def turn() -> Any:
        with lock:
            yield

    return InProcessBus(sink, turn)


def _publish_all(bus: InProcessBus, sink: Sink, n: int) -> dict[int, Any]:
    """n threads publish one record each at once; each notes whether its record was stored when publish returned
    (True), or the error it raised."""
    seen: dict[int, Any] = {}
    start = threading.Barrier(n)

    def one(i: int) -> None:
        value = b"v%d" % i
        start.wait()
        try:
            bus.publish("default", [(b"k%d" % i, value)])
            seen[i] = value in sink.stored
        except Exception as exc:  # noqa: BLE001 (the test reads it)
            seen[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return seen


def test_concurrent_batches_are_delivered_in_groups_each_acknowledged_after_its_own_delivery() -> None:
    sink = Sink(delay=0.05)
    seen = _publish_all(_bus(sink), sink, 16)
    assert seen == dict.fromkeys(range(16), True)  # every publish returned after its record was stored
    assert sorted(v for call in sink.calls for v in call) == sorted(b"v%d" % i for i in range(16))  # each once
    assert len(sink.calls) <= 3, [len(c) for c in sink.calls]  # was 16: one sink invocation per publish


def test_one_publish_at_a_time_is_delivered_alone() -> None:
    sink = Sink(delay=0)
    bus = _bus(sink)
    for i in range(3):
        bus.publish("default", [(b"k%d" % i, b"v%d" % i)])
    assert sink.calls == [[b"v0"], [b"v1"], [b"v2"]]


def test_a_batch_the_sink_cannot_store_fails_alone_not_its_group() -> None:
    sink = Sink(delay=0.05, poison=b"v5")
    seen = _publish_all(_bus(sink), sink, 12)
    assert isinstance(seen[5], ValueError)
    assert all(seen[i] is True for i in seen if i != 5)  # the others of its group were stored, then acknowledged
    assert b"v5" not in sink.stored
    assert len(sink.stored) == 11


def test_an_outage_fails_every_publish_and_the_bus_goes_on() -> None:
    sink = Sink(delay=0.02)
    sink.down = True
    bus = _bus(sink)
    seen = _publish_all(bus, sink, 8)
    assert all(isinstance(s, ConnectionError) for s in seen.values()), seen
    assert not sink.stored
    sink.down = False
    bus.publish("default", [(b"again", b"again")])  # a resend after the outage goes through
    assert b"again" in sink.stored


def test_a_group_takes_at_most_delivery_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bus_mod, "DELIVERY_BYTES", 10)
    sink = Sink(delay=0.05)
    seen = _publish_all(_bus(sink), sink, 12)
    assert seen == dict.fromkeys(range(12), True)
    assert all(sum(len(v) for v in call) <= 10 or len(call) == 1 for call in sink.calls), sink.calls


def test_offsets_grow_per_partition_in_publish_order() -> None:
    sink = Sink(delay=0.01)
    _publish_all(_bus(sink), sink, 24)
    by_partition: dict[tuple[str, int], list[int]] = {}
    for topic, partition, offset in sorted(set(sink.offsets)):
        by_partition.setdefault((topic, partition), []).append(offset)
    assert all(offs == list(range(len(offs))) for offs in by_partition.values()), by_partition
