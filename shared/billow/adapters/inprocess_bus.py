"""In-process bus for the embedded host: plays the MSK trigger. publish() hands the records to the usage
sink handler as one event of the exact `aws:kafka` shape Lambda receives, and returns after the sink stored
them, so an acknowledged ingest is already durable and queryable.

Group commit: batches published while a delivery is under way wait for it to end, and the first of them to get the
sink's turn delivers them all in one event (up to DELIVERY_BYTES of record values, as Lambda's 6 MB payload limit
bounds an MSK invocation), so the sink stores them in one write: three inserts (and the views' parts) however many
requests they came from. With one request at a time nothing changes; with many, the engine's fixed cost per insert
(~30 ms for the values insert and its five views' parts) is paid once per group instead of once per request. Each
publish() still returns only after its own records were stored (or raises the error that kept them from it); a
group whose delivery fails is delivered again batch by batch, so a batch the sink cannot store fails alone."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from billow.bus import PARTITIONS, BusRecord, msk_event, topic_for
from billow.services.ingest import partition_for

DELIVERY_BYTES = 6_000_000  # the record values one delivery takes at most (one batch over it goes alone)


class _Pending:
    __slots__ = ("topic", "records", "size", "done", "error")

    def __init__(self, topic: str, records: Sequence[tuple[bytes, bytes]]) -> None:
        self.topic, self.records = topic, records
        self.size = sum(len(v) for _, v in records)
        self.done = threading.Event()
        self.error: BaseException | None = None


class InProcessBus:
    def __init__(self, deliver: Callable[[dict[str, Any]], Any],
                 lock: Callable[[], AbstractContextManager[Any]]) -> None:
        self._deliver = deliver
        self._lock = lock
        self._offsets: dict[tuple[str, int], int] = {}
        self._queue: list[_Pending] = []  # published, not yet taken by a delivery
        self._queue_lock = threading.Lock()

    def publish(self, namespace: str, records: Sequence[tuple[bytes, bytes]]) -> None:
        mine = _Pending(topic_for(namespace), records)
        with self._queue_lock:
            self._queue.append(mine)
        while not mine.done.is_set():
            with self._lock():  # the sink's turn: deliver what is waiting, this publish's records first or among them
                if not mine.done.is_set():
                    self._deliver_group(self._take())
        if mine.error is not None:
            raise mine.error

    def _take(self) -> list[_Pending]:
        """The oldest waiting batches, up to DELIVERY_BYTES (at least one)."""
        with self._queue_lock:
            size, n = 0, 0
            for p in self._queue:
                if n and size + p.size > DELIVERY_BYTES:
                    break
                size += p.size
                n += 1
            group, self._queue = self._queue[:n], self._queue[n:]
        return group

    def _deliver_group(self, group: list[_Pending]) -> None:
        """One sink invocation for the group (offsets in the order published); every publish in it is told how it
        ended. If it fails, each batch of the group goes again alone, so one batch's failure is its own: the sink
        stores an event once however often it comes (a store outage fails them all, one by one). Called with the
        sink's lock held."""
        own: list[list[BusRecord]] = []
        for pending in group:
            records = []
            for key, value in pending.records:
                p = partition_for(key, PARTITIONS)
                off = self._offsets.get((pending.topic, p), 0)
                self._offsets[(pending.topic, p)] = off + 1
                records.append(BusRecord(pending.topic, p, off, key, value))
            own.append(records)
        try:
            try:
                self._deliver(msk_event([r for records in own for r in records], bootstrap="inprocess"))
            except Exception:
                if len(group) == 1:
                    raise
                for pending, records in zip(group, own, strict=True):
                    try:
                        self._deliver(msk_event(records, bootstrap="inprocess"))
                    except Exception as alone:  # noqa: BLE001 (its publish raises it)
                        pending.error = alone
        except BaseException as exc:  # noqa: BLE001 (each publish of the group raises it)
            for pending in group:
                pending.error = exc
        finally:
            for pending in group:
                pending.done.set()

    def close(self) -> None:
        return None
