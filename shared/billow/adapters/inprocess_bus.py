"""In-process bus for the embedded host: plays the MSK trigger. publish() hands the records to the usage
sink handler as one event of the exact `aws:kafka` shape Lambda receives, and returns after the sink stored
them, so an acknowledged ingest is already durable and queryable."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from billow.services.ingest import partition_for

PARTITIONS = 4


def topic_for(namespace: str) -> str:
    return f"billow.{namespace}.events"


def namespace_of(topic: str) -> str:
    if not (topic.startswith("billow.") and topic.endswith(".events")):
        raise ValueError(f"not a billow events topic: {topic!r}")
    return topic[len("billow."):-len(".events")]


def msk_event(topic: str, batch: Sequence[tuple[int, int, bytes, bytes]]) -> dict[str, Any]:
    """(partition, offset, key, value) records -> the MSK event source payload."""
    records: dict[str, list[dict[str, Any]]] = {}
    now_ms = int(time.time() * 1000)
    for partition, offset, key, value in batch:
        records.setdefault(f"{topic}-{partition}", []).append({
            "topic": topic, "partition": partition, "offset": offset, "timestamp": now_ms,
            "timestampType": "CREATE_TIME", "key": base64.b64encode(key).decode(),
            "value": base64.b64encode(value).decode(), "headers": [],
        })
    return {"eventSource": "aws:kafka", "eventSourceArn": "arn:aws:kafka:local:000000000000:cluster/billow/local",
            "bootstrapServers": "inprocess", "records": records}


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
                batch.append((p, off, key, value))
        with self._lock():
            self._deliver(msk_event(topic, batch))

    def close(self) -> None:
        return None
