"""`billow serve` pointed by config at a real broker (Tansu, started by scripts/services.sh): ingest answers
after the broker acked, the in-process MSK-trigger stand-in feeds the usage sink, totals are exact, and a
restart resumes from the committed offsets without counting anything twice."""

from __future__ import annotations

import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

from billow.bus import topic_for
from tests.e2e.conftest import Server

BATCH = "application/cloudevents-batch+json"


def total(srv: Server) -> Decimal:
    status, _, body = srv.request("GET", "/api/v1/meters/tokens/query")
    assert status == 200, body
    return sum((Decimal(str(r["value"])) for r in body["data"]), Decimal(0))


def wait_total(srv: Server, expected: Decimal, timeout_s: float = 30) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if total(srv) == expected:
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"total {total(srv)} != {expected} after {timeout_s}s")


def events(ids: range) -> list[dict[str, Any]]:
    return [{"specversion": "1.0", "id": f"k{i}", "source": "e2e", "type": "prompt", "subject": "acme",
             "time": "2026-04-01T12:00:00Z", "data": {"tokens": "0.1"}} for i in ids]


def test_serve_with_kafka_bus(tmp_path: Path, kafka_bootstrap: str) -> None:
    bootstrap = kafka_bootstrap
    ns = "k" + uuid.uuid4().hex[:10]
    config = tmp_path / "billow.yaml"
    config.write_text(f"""namespace: {ns}
bus: kafka
kafka_bootstrap: {bootstrap}
kafka_group: sink-{ns}
meters:
  - slug: tokens
    eventType: prompt
    aggregation: SUM
    valueProperty: $.tokens
""")
    srv = Server(tmp_path / "data", config).start()
    try:
        assert srv.request("POST", "/api/v1/events", events(range(100)), BATCH)[0] == 204
        assert srv.request("POST", "/api/v1/events", events(range(50, 150)), BATCH)[0] == 204  # 50 resent
        wait_total(srv, Decimal("15.0"))
    finally:
        assert srv.stop() == 0
    srv = Server(tmp_path / "data", config).start()
    try:
        assert total(srv) == Decimal("15.0")
        assert srv.request("POST", "/api/v1/events", events(range(140, 200)), BATCH)[0] == 204
        wait_total(srv, Decimal("20.0"))
        assert total(srv) == Decimal("20.0")
    finally:
        assert srv.stop() == 0
    # Nothing is left to come again: the group's committed offset is every partition's end (read from the
    # broker, not waited for).
    assert uncommitted(bootstrap, f"sink-{ns}", topic_for(ns)) == {}


def uncommitted(bootstrap: str, group: str, topic: str) -> dict[int, tuple[int, int]]:
    """Partitions whose end (found by reading to EOF) is past the group's committed offset: {p: (committed, end)}."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    from billow.adapters.kafka import client_config

    probe = Consumer({**client_config(bootstrap), "group.id": group, "enable.auto.commit": False})
    reader = Consumer({**client_config(bootstrap), "group.id": f"{group}-reader", "enable.auto.commit": False,
                       "enable.partition.eof": True})
    try:
        partitions = sorted(probe.list_topics(topic, timeout=10).topics[topic].partitions)
        committed = {tp.partition: tp.offset for tp in probe.committed([TopicPartition(topic, p) for p in partitions],
                                                                        timeout=10)}
        reader.assign([TopicPartition(topic, p, 0) for p in partitions])
        ends: dict[int, int] = {}
        deadline = time.monotonic() + 30
        while len(ends) < len(partitions) and time.monotonic() < deadline:
            for m in reader.consume(500, 0.5):
                err = m.error()
                if err is not None and err.code() == KafkaError._PARTITION_EOF:
                    ends[m.partition() or 0] = m.offset() or 0
        assert len(ends) == len(partitions), f"never reached the end of {topic}: {ends}"
    finally:
        probe.close()
        reader.close()
    return {p: (committed[p], end) for p, end in ends.items() if end > 0 and committed[p] != end}
