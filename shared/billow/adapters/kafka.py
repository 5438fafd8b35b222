"""Kafka adapter (confluent-kafka): the production bus (MSK) and, outside Lambda, a stand-in for the MSK
event source mapping that feeds the usage sink from a real broker.

Publishing is idempotent (enable.idempotence, acks=all) and publish() returns only after the broker has
acknowledged every record of the batch; anything else raises ConnectionError and the caller answers 503
(nothing of that batch counts as accepted; a resend is deduplicated downstream by (source, id))."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from billow.bus import PARTITIONS, BusRecord, msk_event, topic_for
from billow.errors import Forbidden, PayloadTooLarge

log = logging.getLogger("billow.kafka")
MAX_RECORD_BYTES = 1_000_000  # Kafka's default message.max.bytes (MSK Serverless: 8 MB, but one MB is portable)


def client_config(bootstrap: str, auth: str = "none", region: str | None = None) -> dict[str, Any]:
    """Connection settings shared by producer, consumer and admin. auth="iam" is MSK Serverless IAM auth
    (SASL/OAUTHBEARER with a SigV4 token from aws-msk-iam-sasl-signer)."""
    conf: dict[str, Any] = {"bootstrap.servers": bootstrap, "client.id": "billow",
                            "logger": logging.getLogger("billow.kafka.client")}  # librdkafka logs via logging
    if auth == "iam":
        from aws_msk_iam_sasl_signer import MSKAuthTokenProvider

        def token(_config: str) -> tuple[str, float]:
            tok, expiry_ms = MSKAuthTokenProvider.generate_auth_token(region)
            return tok, expiry_ms / 1000

        conf.update({"security.protocol": "SASL_SSL", "sasl.mechanisms": "OAUTHBEARER", "oauth_cb": token})
    elif auth != "none":
        raise ValueError(f"unknown kafka auth {auth!r} (none or iam)")
    return conf


class KafkaBus:
    """EventBus on Kafka: topic per namespace (`billow.<namespace>.events`, created on first use), key
    `source\\x1fid` so every copy of one event lands on one partition."""

    def __init__(self, conf: dict[str, Any], *, partitions: int = PARTITIONS, ack_timeout_s: float = 10.0,
                 replication: int = -1, namespaces: set[str] | None = None) -> None:
        self._conf = conf
        # The namespaces whose topics a usage sink consumes (one MSK trigger per topic); None: any. A record
        # for any other namespace would be acknowledged and never stored, so it is refused instead.
        self._namespaces = namespaces
        self._partitions = partitions
        self._replication = replication  # -1: the broker's default (MSK Serverless allows no other)
        self._ack_timeout_s = ack_timeout_s
        self._known_topics: set[str] = set()
        self._lock = threading.Lock()  # one batch in flight per process keeps acks per batch simple
        self._admin = AdminClient(dict(conf))
        self._producer = self._new_producer()

    def _new_producer(self) -> Producer:
        return Producer({
            **self._conf,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 2,
            "partitioner": "murmur2_random",  # what Java clients use: same key, same partition
            "message.timeout.ms": int(self._ack_timeout_s * 1000),
            "reconnect.backoff.max.ms": 1000,
        })

    def ensure_topic(self, topic: str) -> None:
        if topic in self._known_topics:
            return
        futures = self._admin.create_topics(
            [NewTopic(topic, num_partitions=self._partitions, replication_factor=self._replication)],
            operation_timeout=self._ack_timeout_s, request_timeout=self._ack_timeout_s)
        try:
            futures[topic].result(timeout=self._ack_timeout_s)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if not (isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS):
                raise ConnectionError(f"cannot create topic {topic}: {exc}") from exc
        except Exception as exc:  # timeout: the broker is not reachable
            raise ConnectionError(f"cannot create topic {topic}: {exc!r}") from exc
        self._known_topics.add(topic)

    def publish(self, namespace: str, records: Sequence[tuple[bytes, bytes]]) -> None:
        if self._namespaces is not None and namespace not in self._namespaces:
            raise Forbidden(f"namespace {namespace!r} has no usage sink on this deployment's event stream "
                            f"(served: {', '.join(sorted(self._namespaces))}); nothing was ingested")
        topic = topic_for(namespace)
        for key, value in records:  # refuse before producing anything: a batch is all or nothing
            if len(key) + len(value) > MAX_RECORD_BYTES:
                raise PayloadTooLarge(f"an event of {len(value)} bytes is over the {MAX_RECORD_BYTES}-byte limit "
                                      "of one Kafka record; nothing of this batch was ingested")
        with self._lock:
            self.ensure_topic(topic)
            failures: list[KafkaError] = []

            def on_delivery(err: KafkaError | None, _msg: Any) -> None:
                if err is not None:
                    failures.append(err)

            producer = self._producer
            for key, value in records:
                while True:
                    try:
                        producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
                        break
                    except BufferError:  # local queue full: let deliveries drain
                        producer.poll(0.05)
            left = producer.flush(self._ack_timeout_s + 1)
            if left or failures:
                # Whatever went wrong (broker gone, our producer id lost or fenced after a broker restart),
                # this batch is refused and the next one starts on a fresh producer: a new idempotent
                # session costs milliseconds, and a resent batch is deduplicated downstream.
                producer.purge(in_queue=True, in_flight=True)
                producer.poll(0)
                self._producer = self._new_producer()
                reason = failures[0].str() if failures else f"{left} records not acknowledged in time"
                raise ConnectionError(f"kafka did not acknowledge the batch: {reason}")

    def ping(self) -> None:
        try:
            self._admin.list_topics(timeout=2)
        except KafkaException as exc:
            raise ConnectionError(str(exc)) from exc

    def close(self) -> None:
        self._producer.flush(self._ack_timeout_s)


class SinkCrash(Exception):
    """Raised by a test hook to play a sink that dies between its store write and the offset commit."""


class KafkaSinkPoller:
    """The MSK event source mapping, played against a real broker: poll a batch, hand it to the usage
    sink handler in the `aws:kafka` event shape, commit the offsets only after the handler returned.
    A handler error commits nothing and rewinds, so the batch comes again (at-least-once, as in Lambda).
    Like the deployed trigger (infra/stack.py: MaximumRetryAttempts -1, no on-failure destination) it never
    gives up on a batch: while the usage store is down the partition waits, retried with exponential
    backoff between `retry_backoff_s` (first, longest), and no later offset is committed past it."""

    def __init__(self, conf: dict[str, Any], topics: Sequence[str], deliver: Callable[[dict[str, Any]], Any], *,
                 group: str = "billow-usage-sink", batch_size: int = 1000, batch_window_s: float = 0.2,
                 lock: Callable[[], AbstractContextManager[Any]] | None = None,
                 before_commit: Callable[[dict[str, Any]], None] | None = None,
                 session_timeout_ms: int = 6000, retry_backoff_s: tuple[float, float] = (0.2, 5.0)) -> None:
        self._deliver = deliver
        self.retry_backoff_s = retry_backoff_s
        self._lock = lock or nullcontext
        self._before_commit = before_commit
        self.batch_size = batch_size
        self.batch_window_s = batch_window_s
        self.bootstrap = str(conf.get("bootstrap.servers", ""))
        self.delivered = 0
        self.failures = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._consumer = Consumer({
            **conf,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": session_timeout_ms,
            "heartbeat.interval.ms": min(500, session_timeout_ms // 3),
            "topic.metadata.refresh.interval.ms": 2000,
        })
        self._topics = list(topics)
        self._consumer.subscribe(self._topics)

    def poll_once(self) -> int:
        """One batch: deliver and commit. Returns the number of records delivered (0 if none came)."""
        msgs = self._consumer.consume(self.batch_size, self.batch_window_s)
        batch: list[BusRecord] = []
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("kafka consume error: %s", err)
                continue
            batch.append(BusRecord(m.topic() or "", m.partition() or 0, m.offset() or 0, m.key() or b"",
                                   m.value() or b"", m.timestamp()[1]))
        if not batch:
            return 0
        first: dict[tuple[str, int], int] = {}
        last: dict[tuple[str, int], int] = {}
        for r in batch:
            first.setdefault((r.topic, r.partition), r.offset)
            last[(r.topic, r.partition)] = r.offset
        event = msk_event(batch, bootstrap=self.bootstrap)
        try:
            with self._lock():
                self._deliver(event)
            if self._before_commit is not None:
                self._before_commit(event)
        except SinkCrash:
            raise
        except Exception:
            self.failures += 1
            self._rewind(first)
            raise
        self._consumer.commit(offsets=[TopicPartition(t, p, o + 1) for (t, p), o in last.items()],
                              asynchronous=False)
        self.delivered += len(batch)
        return len(batch)

    def _rewind(self, first: dict[tuple[str, int], int]) -> None:
        """Deliver the same batch again: back to its first offset on every partition it came from. If any
        partition cannot be rewound, rejoin the group instead: every partition then restarts from its
        committed offset, which is never past a batch the sink did not store."""
        try:
            for (topic, partition), offset in first.items():
                self._consumer.seek(TopicPartition(topic, partition, offset))
        except KafkaException as exc:
            log.warning("cannot rewind the failed batch (%s); rejoining at the committed offsets", exc)
            self._consumer.unsubscribe()
            self._consumer.subscribe(self._topics)

    def run(self) -> None:
        first, longest = self.retry_backoff_s
        backoff = first
        while not self._stop.is_set():
            try:
                self.poll_once()
                backoff = first
            except Exception:
                log.exception("usage sink batch failed; it will be delivered again")
                self._stop.wait(backoff)
                backoff = min(backoff * 2, longest)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="billow-kafka-sink", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._consumer.close()
