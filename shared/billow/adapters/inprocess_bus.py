"""In-process bus for the embedded host: plays the MSK trigger. publish() hands the records to the usage
sink handler as one event of the exact `aws:kafka` shape Lambda receives, and returns after the sink stored
them, so an acknowledged ingest is already durable and queryable."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from billow.bus import PARTITIONS, BusRecord, msk_event, topic_for
from billow.services.ingest import partition_for


class InProcessBus:
    def __init__(self, deliver: Callable[[dict[str, Any]], Any],
                 lock: Callable[[], AbstractContextManager[Any]]) -> None:
        self._deliver = deliver
        self._lock = lock
        self._offsets: dict[tuple[str, int], int] = {}
        self._offset_lock = threading.Lock()

    def publish(self, namespace: str, records: Sequence[tuple[bytes, bytes]]) -> None:
        topic = topic_for(namespace)
        batch = []
        with self._offset_lock:
            for key, value in records:
                p = partition_for(key, PARTITIONS)
                off = self._offsets.get((topic, p), 0)
                self._offsets[(topic, p)] = off + 1
                batch.append(BusRecord(topic, p, off, key, value))
        with self._lock():
            self._deliver(msk_event(batch, bootstrap="inprocess"))

    def close(self) -> None:
        return None
