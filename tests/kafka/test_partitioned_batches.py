"""Ingest's records on Kafka (issue 17): one batch record per partition per batch instead of one record per event.
Each event goes to the partition Kafka's murmur2 partitioner gives its key `source\\x1fid`, so a copy of it that a
deployed topic holds in the older per-event shape (produced by librdkafka's murmur2_random partitioner) is on the same
partition, and every copy, however the batches that brought it were split, is counted once."""

from __future__ import annotations

import random
from decimal import Decimal
from typing import Any

import msgspec
from confluent_kafka import Producer

from billow.adapters.kafka import MAX_RECORD_BYTES, KafkaBus, client_config, murmur2, murmur2_partitions
from billow.adapters.kafka import partitioned_batch_records as placed_records
from billow.adapters.kafka_topics import ensure_topic
from billow.bus import BATCH_RECORD_BYTES, batch_records, decode_batch, topic_for
from billow.domain.events import parse_batch
from billow.services.ingest import encode_record, partition_key
from tests.conftest import t
from tests.kafka.conftest import Pipeline, read_topic
from tests.support.usage import tokens_events, truth

# Kafka's own test vectors for Utils.murmur2 (signed Java ints).
JAVA_MURMUR2 = {b"21": -973932308, b"foobar": -790332482, b"a-little-bit-long-string": -985981536,
                b"a-little-bit-longer-string": -1486304829,
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971, b"abc": 479470107}


def signed(h: int) -> int:
    return h - (1 << 32) if h & 0x80000000 else h


def test_murmur2_is_kafkas() -> None:
    assert {k: signed(murmur2(k)) for k in JAVA_MURMUR2} == JAVA_MURMUR2


def test_keys_hashed_side_by_side_get_the_partitions_of_keys_hashed_one_by_one() -> None:
    rng = random.Random(17)
    for _ in range(60):
        length = rng.choice([0, 1, 2, 3, 4, 5, 7, 8, 11, 36, 46, 61])
        keys = [bytes(rng.randrange(256) for _ in range(length if rng.random() < 0.8 else rng.randrange(70)))
                for _ in range(rng.choice([1, 7, 8, 9, 300, 2100]))]
        partitions = rng.choice([1, 2, 3, 4, 5, 12, 64])
        assert murmur2_partitions(keys, partitions) == [(murmur2(k) & 0x7FFFFFFF) % partitions for k in keys]


def rows(events: list[dict[str, Any]], data: bytes | None = None) -> list[tuple[bytes, list[Any]]]:
    """Events as ingest hands them to batch_records: (key, [id, source, type, subject, ms, data, values])."""
    raw = msgspec.Raw(data) if data is not None else None
    return [(f"{e['source']}\x1f{e['id']}".encode(), [e["id"], e["source"], "prompt", "acme", 0, raw, []])
            for e in events]


def hostile_keys(n: int, rng: random.Random) -> list[dict[str, Any]]:
    """Events whose keys are of every length modulo 4, many of them not ASCII (multi-byte UTF-8 in source and id)."""
    sources = ["api", "ünïcødé", "日本語のソース", "emoji-🚀", "x", "Ωmega/σ", "a\u0301"]
    alphabet = "abcXYZ0189-_ßéü中文🙂\u00a0"
    return [{"source": rng.choice(sources), "id": "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 40)))
             + f"#{i}"} for i in range(n)]


def test_a_batch_is_one_record_per_partition_split_at_the_record_limit() -> None:
    small = batch_records("2026-03-01T00:00:00Z", ["m1", "m2"], rows(hostile_keys(3000, random.Random(3))),
                          per_event=True)
    fat = batch_records("2026-03-01T00:00:00Z", ["m1", "m2"],
                        rows([{"source": "big", "id": str(i)} for i in range(8)], b'{"note":"' + b"x" * 300_000 + b'"}'),
                        per_event=True)
    for records, most in ((small, 5), (fat, 8), (small + fat, 5 + 8)):
        placed = placed_records(records, 5)
        want = dict(zip([k for k, _ in records], murmur2_partitions([k for k, _ in records], 5), strict=True))
        seen: list[bytes] = []
        for partition, key, value in placed:
            assert key == b"billow-batch-p%d" % partition and len(value) <= MAX_RECORD_BYTES
            batch = decode_batch(value)
            assert batch is not None and batch.meters == ["m1", "m2"] and batch.ingestedAt == "2026-03-01T00:00:00Z"
            keys = [f"{ev[1]}\x1f{ev[0]}".encode() for ev in batch.events]
            assert {want[k] for k in keys} == {partition}
            assert len(value) <= BATCH_RECORD_BYTES + 100 or len(keys) == 1  # split as bus.batch_records splits
            seen += keys
        assert sorted(seen) == sorted(want) and len(seen) == len(records)  # every event once
        if records is small:  # one record per partition
            assert sorted(p for p, _, _ in placed) == [0, 1, 2, 3, 4]
        if records is fat:  # 2.4 MB: split (two 300 kB events to a record at most), never over the limit
            assert len(placed) > 3 and all(len(decode_batch(v).events) <= 3 for _, _, v in placed)  # type: ignore[union-attr]
        assert len(placed) <= most


def test_records_of_another_shape_go_alone_to_their_keys_partition() -> None:
    placed = placed_records([(b"k1", b"v1"), (b"k2", b"v2")], 7)
    assert placed == [((murmur2(b"k1") & 0x7FFFFFFF) % 7, b"k1", b"v1"), ((murmur2(b"k2") & 0x7FFFFFFF) % 7, b"k2", b"v2")]


def old_shape_partitions(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> dict[bytes, int]:
    """Produce per-event records as ingest did before (librdkafka's murmur2_random partitioner, keyed source\\x1fid);
    the partition the producer chose for each key."""
    producer = Producer({**client_config(bootstrap), "partitioner": "murmur2_random", "enable.idempotence": True})
    where: dict[bytes, int] = {}
    failed: list[Any] = []

    def report(err: Any, msg: Any) -> None:
        if err is not None:
            failed.append(err)
        else:
            where[msg.key()] = msg.partition()

    for key, value in records:
        producer.produce(topic, value=value, key=key, on_delivery=report)
        producer.poll(0)
    assert producer.flush(30) == 0 and failed == [], failed
    return where


def test_each_event_lands_where_librdkafkas_murmur2_random_puts_its_key(kafka_bootstrap: str, namespace: str) -> None:
    topic = topic_for(namespace)
    conf = client_config(kafka_bootstrap)
    # Made at deploy with 5 partitions; the bus's own default (4) must not be what it hashes with.
    ensure_topic(conf, topic, partitions=5, retention_ms=3_600_000)
    events = hostile_keys(1500, random.Random(11))
    per_event = batch_records("2026-03-01T00:00:00Z", ["m1"], rows(events), per_event=True)
    librdkafka = old_shape_partitions(kafka_bootstrap, topic, per_event)
    assert len(set(librdkafka.values())) == 5
    bus = KafkaBus(conf)
    try:
        bus.publish(namespace, per_event)
        # and a resend of a third of them, split into batches of other sizes
        shuffled = random.Random(5).sample(events, 500)
        for at in range(0, 500, 137):
            bus.publish(namespace, batch_records("2026-03-01T00:00:01Z", ["m1"], rows(shuffled[at:at + 137]),
                                                 per_event=True))
    finally:
        bus.close()
    # the bus's records (the per-event ones the test produced itself are keyed source\x1fid)
    batches = [(p, decode_batch(v)) for p, k, v in read_topic(kafka_bootstrap, topic, 5) if k not in librdkafka]
    landed: dict[bytes, set[int]] = {}
    events_per_record = []
    for partition, batch in batches:
        assert batch is not None
        events_per_record.append(len(batch.events))
        for ev in batch.events:
            landed.setdefault(f"{ev[1]}\x1f{ev[0]}".encode(), set()).add(partition)
    assert set(landed) == set(librdkafka)
    moved = {k.decode(): (sorted(p), librdkafka[k]) for k, p in landed.items() if p != {librdkafka[k]}}
    assert moved == {}
    # one record per partition per batch (1 + 4 batches), not one per event
    assert len(batches) <= 5 * 5 and sum(events_per_record) == 2000, (len(batches), sum(events_per_record))


def test_resends_split_differently_and_old_shape_copies_count_once(pipeline: Pipeline) -> None:
    events = tokens_events(range(600)) + tokens_events(range(600, 900), source="sørce-ünï 日本")
    assert pipeline.ingest(events)["statusCode"] == 204
    rng = random.Random(9)
    again = rng.sample(events, 450)
    sizes = [1, 2, 7, 40, 113, 287]
    at = 0
    for size in sizes:  # resent in batches cut elsewhere, in another order
        assert pipeline.ingest(again[at:at + size])["statusCode"] == 204
        at += size
    parsed = parse_batch(rng.sample(events, 120), t("2026-03-03T00:00:00Z"))
    old = [(partition_key(e), encode_record(e, t("2026-03-03T00:00:00Z"))) for e in parsed]
    old_shape_partitions(pipeline.bootstrap, pipeline.topic, old)  # copies in the shape a deployed topic holds
    sent = len(events) + at + len(old)
    poller = pipeline.poller(batch_size=5000)
    pipeline.drain(poller, sent)
    assert pipeline.total() == truth(events) == sum((Decimal(e["data"]["tokens"]) for e in events), Decimal(0))
    counts = pipeline.container.metrics.snapshot()
    assert counts["sink_stored"] == 900 and counts["sink_duplicates"] == sent - 900
    # 7 batches of at most 4 records each (the topic's partitions), then the 120 old-shape records
    assert poller.delivered <= 7 * 4 + len(old), poller.delivered
