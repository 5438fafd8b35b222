"""The production usage path against a real Kafka-protocol broker (Tansu), the ClickHouse engine (chdb via
clickhouse-connect) and SQS (LocalStack), under the faults at-least-once delivery brings. After each one the
meter totals equal the ground truth exactly: nothing lost, nothing counted twice."""

from __future__ import annotations

import base64
import random
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from billow import jsonx
from billow.adapters.kafka import SinkCrash, client_config
from billow.bootstrap import install
from billow.bus import decode_batch
from billow.domain.events import parse_batch
from billow.services.ingest import encode_record, partition_key
from tests.conftest import event, t
from tests.kafka.conftest import Pipeline, PrivateBroker, make_pipeline, receive_all, wait_until
from tests.support.usage import tokens_events, truth


def committed_lag(bootstrap: str, group: str, topic: str, partition: int) -> int:
    """Records of the partition past the group's committed offset, both read from the broker (not the
    poller). The partition's end is found by reading it to EOF: Tansu's ListOffsets answers the last batch's
    base offset, not the high watermark."""
    probe = Consumer({**client_config(bootstrap), "group.id": group, "enable.auto.commit": False})
    reader = Consumer({**client_config(bootstrap), "group.id": f"{group}-reader", "enable.auto.commit": False,
                       "enable.partition.eof": True})
    try:
        [committed] = probe.committed([TopicPartition(topic, partition)], timeout=10)
        reader.assign([TopicPartition(topic, partition, 0)])
        end: list[int] = []

        def at_eof() -> bool:
            for m in reader.consume(500, 0.5):
                err = m.error()
                if err is not None and err.code() == KafkaError._PARTITION_EOF:
                    end.append(m.offset() or 0)
            return bool(end)

        assert wait_until(at_eof, 20), f"never reached the end of {topic}/{partition}"
    finally:
        probe.close()
        reader.close()
    assert committed.offset >= 0, f"group {group} committed nothing on {topic}/{partition}"
    return end[-1] - committed.offset


def events_in(msk_event: dict[str, Any]) -> int:
    """The events the records of an `aws:kafka` event carry (a batch record many, a record of the older shape one)."""
    values = [base64.b64decode(r["value"]) for rs in msk_event["records"].values() for r in rs]
    return sum(len(batch.events) if (batch := decode_batch(v)) is not None else 1 for v in values)


def test_ingest_acks_after_the_broker_and_resent_batches_count_once(pipeline: Pipeline) -> None:
    batches = [tokens_events(range(i * 200, (i + 1) * 200)) for i in range(3)]
    for b in batches:
        assert pipeline.ingest(b)["statusCode"] == 204
    assert pipeline.ingest(batches[1])["statusCode"] == 204  # the client did not see the ack and resends
    poller = pipeline.poller()
    pipeline.drain(poller, 800)
    sent = [e for b in batches for e in b]
    assert pipeline.total() == truth(sent) == Decimal("1855.0")  # 85 cycles of 0..6, then 0..4, plus 600 x 0.1
    counts = pipeline.container.metrics.snapshot()
    assert counts["sink_stored"] == 600 and counts["sink_duplicates"] == 200


def test_the_same_msk_batch_delivered_twice(pipeline: Pipeline) -> None:
    from functions.usage_sink.handler import lambda_handler

    events = tokens_events(range(300))
    assert pipeline.ingest(events)["statusCode"] == 204
    delivered: list[dict[str, Any]] = []
    poller = pipeline.poller(before_commit=delivered.append)
    pipeline.drain(poller, 300)
    for msk_event in delivered:  # Lambda retries a batch whose response it lost
        again = lambda_handler(msk_event, None)  # type: ignore[arg-type]
        assert again["stored"] == 0 and again["duplicates"] > 0
    assert pipeline.total() == truth(events)


def test_sink_crash_after_the_clickhouse_insert_before_the_offset_commit(pipeline: Pipeline) -> None:
    events = tokens_events(range(500))
    assert pipeline.ingest(events)["statusCode"] == 204
    group = f"crash-{pipeline.namespace}"
    crashed: list[int] = []

    def die(msk_event: dict[str, Any]) -> None:
        crashed.append(events_in(msk_event))  # a record carries a partition's share of a batch (issue 17)
        raise SinkCrash("killed after the store write")

    first = pipeline.poller(group, before_commit=die, batch_size=5000)
    with pytest.raises(SinkCrash):
        wait_until(lambda: False, 20, first.poll_once)
    assert crashed and crashed[0] > 0
    pipeline.pollers.remove(first)
    first.close()  # no commit happened: the group's next member gets the same records again
    second = pipeline.poller(group, batch_size=5000)
    pipeline.drain(second, 500)
    counts = pipeline.container.metrics.snapshot()
    assert counts["sink_duplicates"] == crashed[0], "the crashed batch was not delivered again"
    assert counts["sink_stored"] == 500
    assert pipeline.total() == truth(events)


def test_poison_records_go_to_the_sqs_dlq_and_never_block_the_partition(pipeline: Pipeline, sqs: Any, dlq: str) -> None:
    good = tokens_events(range(50))
    unmatched = [event("u1", type="page_view", time="2026-03-02T10:00:00Z", path="/")]
    parsed = parse_batch(good + unmatched, t("2026-03-03T00:00:00Z"))
    producer = Producer({**client_config(pipeline.bootstrap), "enable.idempotence": True})
    assert pipeline.ingest(good[:1])["statusCode"] == 204  # creates the topic
    records = [(partition_key(e), encode_record(e, t("2026-03-03T00:00:00Z"))) for e in parsed]
    poison = [(b"p1", b"\x00\xffnot json at all"),
              (b"p2", jsonx.dumps({"id": "x", "ingestedAt": "2026-03-03T00:00:00Z"}).encode()),
              (b"p3", b"[1, 2, 3]")]
    mixed = records[:20] + poison + records[20:]
    for key, value in mixed:
        producer.produce(pipeline.topic, value=value, key=key, partition=0)  # one partition: poison in the middle
    assert producer.flush(10) == 0
    group = f"poison-{pipeline.namespace}"
    poller = pipeline.poller(group, batch_size=25)
    pipeline.drain(poller, len(mixed) + 1)
    assert pipeline.total() == truth(good)
    letters = receive_all(sqs, dlq, 3)
    assert len(letters) == 3
    bodies = [jsonx.loads(m["Body"]) for m in letters]
    assert all(b["where"].startswith(pipeline.topic + "/0/") and b["reason"] for b in bodies)
    assert any("not a CloudEvent" in b["reason"] for b in bodies)
    assert {m["MessageAttributes"]["reason"]["StringValue"][:10] for m in letters}
    counts = pipeline.container.metrics.snapshot()
    assert counts["sink_deadLettered"] == 3 and counts["sink_unmatched"] == 1
    # The raw unmatched event is kept: it is listed with the rest.
    listed = pipeline.container.usage.list_events(pipeline.namespace, subjects=None, start=None, end=None,
                                                  event_id="u1", limit=10)
    assert [s.event.type for s in listed] == ["page_view"]
    # Offsets were committed past the poison: the group's committed offset is the partition's end, so a new
    # member would start after the last record; and no batch ever failed and came again.
    assert committed_lag(pipeline.bootstrap, group, pipeline.topic, 0) == 0
    assert poller.failures == 0


def test_out_of_order_and_days_late_events_land_in_their_windows(pipeline: Pipeline) -> None:
    days = ["2026-03-01", "2026-03-02", "2026-03-03", "2026-03-04"]
    events = [e for n, d in enumerate(days) for e in tokens_events(range(n * 100, n * 100 + 100), day=d)]
    random.Random(7).shuffle(events)
    on_time, late = events[:300], events[300:]
    poller = pipeline.poller()
    assert pipeline.ingest(on_time)["statusCode"] == 204
    pipeline.drain(poller, 300)
    before = {r["windowStart"]: r["value"] for r in pipeline.query(windowSize="DAY")}
    assert pipeline.ingest(late)["statusCode"] == 204  # days late, in random order
    pipeline.drain(poller, 400)
    after = {r["windowStart"].date().isoformat(): r["value"] for r in pipeline.query(windowSize="DAY")}
    expected = {d: truth([e for e in events if e["time"].startswith(d)]) for d in days}
    assert after == expected
    assert sum(before.values()) == truth(on_time)


def test_broker_restart_mid_stream(private_broker: PrivateBroker, namespace: str, dlq: str, chdb_store: Any,
                                   tmp_path: Path) -> None:
    """Ingest keeps going through a broker outage: while it is down every batch is refused with 503 and
    Retry-After (nothing of it acknowledged); the client resends; producer and consumer recover by
    themselves once the broker is back; every acknowledged event is counted exactly once."""
    p = make_pipeline(namespace, private_broker.bootstrap, dlq, chdb_store, tmp_path / "meta.db", ack_timeout_s=2.0)
    install(p.container)
    poller = p.poller()
    stop = threading.Event()
    statuses: list[int] = []
    acked: list[dict[str, Any]] = []
    batches = [tokens_events(range(i * 100, (i + 1) * 100), day="2026-03-05") for i in range(30)]

    def client() -> None:
        for b in batches:
            while True:
                resp = p.ingest(b)
                statuses.append(resp["statusCode"])
                if resp["statusCode"] == 204:
                    acked.extend(b)
                    break
                assert resp["statusCode"] == 503 and resp["headers"]["Retry-After"]
                time.sleep(0.3)
            time.sleep(0.05)

    swallowed: list[BaseException] = []

    def sink_loop() -> None:
        while not stop.is_set():
            try:
                poller.poll_once()
            except Exception as exc:  # kept, and checked below: only the outage may fail a poll
                swallowed.append(exc)
                time.sleep(0.2)

    sink_thread = threading.Thread(target=sink_loop, daemon=True)
    sink_thread.start()
    sender = threading.Thread(target=client, daemon=True)
    sender.start()
    try:
        assert wait_until(lambda: len(acked) >= 500, 30)
        private_broker.stop()
        assert wait_until(lambda: 503 in statuses, 20), "ingest never refused while the broker was down"
        # The outage lasts until the client has been refused and has resent at least once more.
        assert wait_until(lambda: statuses.count(503) >= 2, 20)
        private_broker.start()
        sender.join(timeout=120)
        assert not sender.is_alive()
        assert wait_until(lambda: p.total() == truth(acked), 60), (p.total(), truth(acked))
        assert len(acked) == 3000 and p.total() == truth([e for b in batches for e in b])
        # The sink itself never failed a batch (its store is up throughout); what the loop caught is the
        # broker being away (an offset commit refused), nothing else.
        assert poller.failures == 0, swallowed
        assert all(isinstance(e, KafkaException) for e in swallowed), swallowed
    finally:
        stop.set()
        sink_thread.join(timeout=10)
        install(None)
        for poller_ in p.pollers:
            poller_.close()
        assert p.container.bus is not None
        p.container.bus.close()


def test_an_event_over_the_record_limit_refuses_the_whole_batch(pipeline: Pipeline) -> None:
    batch = tokens_events(range(3))
    batch[1]["data"]["note"] = "x" * 1_100_000
    resp = pipeline.ingest(batch)
    assert resp["statusCode"] == 413 and "nothing of this batch" in jsonx.loads(resp["body"])["detail"]
    assert pipeline.ingest(tokens_events(range(10, 12)))["statusCode"] == 204
    poller = pipeline.poller()
    pipeline.drain(poller, 2)
    wait_until(lambda: False, 1.0, poller.poll_once)
    assert poller.delivered == 2 and pipeline.total() == truth(tokens_events(range(10, 12)))
