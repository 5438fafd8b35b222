"""The bus contract shared by every host: topic names and the `aws:kafka` event the usage sink receives.

Production: ingest publishes to MSK and Lambda's MSK event source mapping hands batches to the usage
sink. Elsewhere a stand-in (the in-process bus, or the Kafka poller for a real broker) builds the very
same event, so the sink handler cannot tell the hosts apart."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterable
from typing import Any, NamedTuple

PARTITIONS = 4


class BusRecord(NamedTuple):
    topic: str
    partition: int
    offset: int
    key: bytes
    value: bytes
    timestamp_ms: int = 0


def topic_for(namespace: str) -> str:
    return f"billow.{namespace}.events"


def namespace_of(topic: str) -> str:
    if not (topic.startswith("billow.") and topic.endswith(".events")) or len(topic) <= len("billow..events"):
        raise ValueError(f"not a billow events topic: {topic!r}")
    return topic[len("billow."):-len(".events")]


def msk_event(batch: Iterable[BusRecord], bootstrap: str = "local",
              source_arn: str = "arn:aws:kafka:local:000000000000:cluster/billow/local") -> dict[str, Any]:
    """Records -> the payload Lambda's MSK trigger delivers (records grouped by "topic-partition")."""
    records: dict[str, list[dict[str, Any]]] = {}
    now_ms = int(time.time() * 1000)
    for r in batch:
        records.setdefault(f"{r.topic}-{r.partition}", []).append({
            "topic": r.topic, "partition": r.partition, "offset": r.offset,
            "timestamp": r.timestamp_ms or now_ms, "timestampType": "CREATE_TIME",
            "key": base64.b64encode(r.key).decode(), "value": base64.b64encode(r.value).decode(), "headers": [],
        })
    return {"eventSource": "aws:kafka", "eventSourceArn": source_arn, "bootstrapServers": bootstrap,
            "records": records}
