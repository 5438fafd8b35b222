"""The Kafka topic is made at deploy by the migrate function (issue 18 item 4), with explicit partitions and
retention.ms, against the shared Tansu broker (a fresh topic name per test)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from billow.adapters.kafka import client_config
from billow.bootstrap import Settings

SEVEN_DAYS_MS = 7 * 24 * 3600 * 1000


def partitions_of(bootstrap: str, topic: str) -> int:
    from confluent_kafka.admin import AdminClient

    meta = AdminClient(client_config(bootstrap)).list_topics(topic, timeout=10)
    found = meta.topics[topic]
    assert found.error is None, found.error
    return len(found.partitions)


def retention_of(bootstrap: str, topic: str) -> int:
    from confluent_kafka.admin import AdminClient, ConfigResource

    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    admin = AdminClient(client_config(bootstrap))  # kept alive until the answer is in
    found = admin.describe_configs([resource])[resource].result(timeout=10)
    return int(found["retention.ms"].value)


def test_retention_is_a_setting_of_seven_days_by_default() -> None:
    assert Settings().kafka_retention_ms == SEVEN_DAYS_MS
    assert Settings.parse({"kafka_retention_ms": "3600000"}).kafka_retention_ms == 3_600_000
    with pytest.raises(ValueError, match="kafka_retention_ms: must be between"):
        Settings.parse({"kafka_retention_ms": "10"})


def test_the_topic_is_created_with_its_partitions_and_retention_then_left_alone(kafka_bootstrap: str) -> None:
    from billow.adapters.kafka_topics import ensure_topic

    topic = f"billow.t{uuid.uuid4().hex[:10]}.events"
    conf = client_config(kafka_bootstrap)
    assert ensure_topic(conf, topic, partitions=3, retention_ms=SEVEN_DAYS_MS) == "created: 3 partitions"
    assert partitions_of(kafka_bootstrap, topic) == 3 and retention_of(kafka_bootstrap, topic) == SEVEN_DAYS_MS
    # the next deploy finds it: no new topic, partitions never changed (that would move keys between partitions)
    again = ensure_topic(conf, topic, partitions=5, retention_ms=2 * SEVEN_DAYS_MS)
    assert again.startswith("exists: 3 partitions") and "5" in again
    assert partitions_of(kafka_bootstrap, topic) == 3
    assert retention_of(kafka_bootstrap, topic) == 2 * SEVEN_DAYS_MS  # the retention setting follows the deploy


def test_the_migrate_function_creates_the_namespace_topic(kafka_bootstrap: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from billow.bus import topic_for
    from functions.migrate.handler import lambda_handler

    namespace = f"t{uuid.uuid4().hex[:10]}"
    for key, value in {"BILLOW_NAMESPACE": namespace, "BILLOW_DATA_DIR": str(tmp_path), "BILLOW_USAGE_STORE": "memory",
                       "BILLOW_KAFKA_BOOTSTRAP": kafka_bootstrap, "BILLOW_KAFKA_PARTITIONS": "2"}.items():
        monkeypatch.setenv(key, value)
    done = lambda_handler({}, None)
    assert done["topic"] == f"{topic_for(namespace)} created: 2 partitions"
    assert partitions_of(kafka_bootstrap, topic_for(namespace)) == 2
    assert retention_of(kafka_bootstrap, topic_for(namespace)) == SEVEN_DAYS_MS
