"""The namespace topic, made once per deploy (functions/migrate) rather than by the first ingest: explicit partitions
and retention.ms. Replays (a new consumer group, a rebuilt usage store) reach back only as far as the retention.

An existing topic keeps its partition count (adding partitions would move subjects' keys to other partitions and
break their order); its retention.ms is set to the configured one."""

from __future__ import annotations

from typing import Any

TIMEOUT_S = 30.0


def ensure_topic(conf: dict[str, Any], topic: str, *, partitions: int, retention_ms: int) -> str:
    """Create `topic` if missing; else align its retention. Returns what was done, for the migrate log."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic

    admin = AdminClient(conf)
    retention = {"retention.ms": str(retention_ms)}
    future = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=-1, config=retention)],
                                 operation_timeout=TIMEOUT_S, request_timeout=TIMEOUT_S)[topic]
    try:
        future.result(timeout=TIMEOUT_S)
        return f"created: {partitions} partitions"
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise
    have = len(admin.list_topics(topic, timeout=TIMEOUT_S).topics[topic].partitions)
    note = f"exists: {have} partitions" + (f" (setting: {partitions}, left as is)" if have != partitions else "")
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[
        ConfigEntry("retention.ms", str(retention_ms), incremental_operation=AlterConfigOpType.SET)])
    admin.incremental_alter_configs([resource])[resource].result(timeout=TIMEOUT_S)
    return note + f", retention.ms {retention_ms}"
