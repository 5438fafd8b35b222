"""Kafka adapter (confluent-kafka): the production bus (MSK) and, outside Lambda, a stand-in for the MSK
event source mapping that feeds the usage sink from a real broker.

Publishing is idempotent (enable.idempotence, acks=all) and publish() returns only after the broker has
acknowledged every record of the batch; anything else raises ConnectionError and the caller answers 503
(nothing of that batch counts as accepted; a resend is deduplicated downstream by (source, id)), within
the ack timeout (5 s) at most: a producer that failed fatally or was fenced is replaced, and while the broker
is known down requests are refused at once."""

from __future__ import annotations

import logging
import threading
import time
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


class _ProducerFailed(ConnectionError):
    """The producer itself is broken (a fatal error): it was replaced; the broker may well be up."""


# Errors after which an idempotent producer cannot go on (librdkafka raises most of them as _FATAL; a delivery
# report may carry the broker's own code): the broker forgot or fenced our producer id, or the sequence broke.
# Tansu, restarted, answers the old producer PRODUCER_FENCED on every batch until it is replaced.
_FATAL_CODES = frozenset({KafkaError._FATAL, KafkaError.UNKNOWN_PRODUCER_ID, KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER,
                          KafkaError.INVALID_PRODUCER_EPOCH, KafkaError.INVALID_PRODUCER_ID_MAPPING,
                          KafkaError.PRODUCER_FENCED, KafkaError._FENCED})


def _is_fatal(err: KafkaError | None) -> bool:
    return err is not None and (err.fatal() or err.code() in _FATAL_CODES)


def _needs_new_producer(err: KafkaError) -> bool:
    """A delivery report the producer may not recover from: fatal, or any refusal by the broker itself (codes
    >= 0, after librdkafka's own retries). Local errors (timed out, transport, purged: codes < 0) are the
    broker being away; the producer reconnects by itself."""
    return _is_fatal(err) or err.code() >= 0


class _Session:
    """One producer and the fatal error librdkafka reported for it, if any (error_cb, served by poll)."""

    def __init__(self) -> None:
        self.producer: Any = None
        self.fatal: KafkaError | None = None

    def on_error(self, err: KafkaError) -> None:
        if _is_fatal(err):
            log.error("kafka producer failed fatally, it will be replaced: %s", err.str())
            self.fatal = err


class _Batch:
    """Delivery reports of one publish() call (any thread polling the producer may serve them)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.reports: list[KafkaError | None] = []  # list.append is atomic: no lock needed

    def on_delivery(self, err: KafkaError | None, _msg: Any) -> None:
        self.reports.append(err)

    def done(self) -> bool:
        return len(self.reports) >= self.size


class KafkaBus:
    """EventBus on Kafka: topic per namespace (`billow.<namespace>.events`, created on first use), key
    `source\\x1fid` so every copy of one event lands on one partition.

    A request waits at most `ack_timeout_s` for its own batch (concurrent requests share the producer and
    never queue behind each other's waits). A fatal producer error (e.g. the broker forgot our producer id
    after a restart) replaces the producer at once. After a batch was not acknowledged the bus fails fast
    for `cooldown_s` (the broker is known down), then lets one request through as a probe."""

    # Ingest's records here carry one event each (in the batch record shape: no second validation in the sink), keyed
    # `source\x1fid` as before: Kafka's partitioner (murmur2) then sends every copy of an event, also one a deployed
    # topic already holds in the per-event shape, to one partition. One record per partition per batch would need
    # that partition computed per event here; left to do (issue 17).
    per_event_records = True

    def __init__(self, conf: dict[str, Any], *, partitions: int = PARTITIONS, ack_timeout_s: float = 5.0,
                 replication: int = -1, namespaces: set[str] | None = None, cooldown_s: float = 1.0) -> None:
        self._conf = conf
        # The namespaces whose topics a usage sink consumes (one MSK trigger per topic); None: any. A record
        # for any other namespace would be acknowledged and never stored, so it is refused instead.
        self._namespaces = namespaces
        self._partitions = partitions
        self._replication = replication  # -1: the broker's default (MSK Serverless allows no other)
        self._ack_timeout_s = ack_timeout_s
        self._cooldown_s = cooldown_s
        self._known_topics: set[str] = set()
        self._state = threading.Lock()  # guards the fields below; never held while waiting on the broker
        self._open_until = 0.0  # circuit: 0 closed; else refuse until then (monotonic), then one probe
        self._probing = False
        self.producers_replaced = 0
        self._admin = AdminClient(dict(conf))
        self._session = self._new_session()

    def _new_producer(self, on_error: Callable[[KafkaError], None] | None = None) -> Producer:
        conf: dict[str, Any] = {
            **self._conf,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 2,
            "partitioner": "murmur2_random",  # what Java clients use: same key, same partition
            "message.timeout.ms": int(self._ack_timeout_s * 1000),
            "reconnect.backoff.max.ms": 1000,
        }
        if on_error is not None:
            conf["error_cb"] = on_error
        return Producer(conf)

    def _new_session(self) -> _Session:
        session = _Session()
        session.producer = self._new_producer(session.on_error)
        return session

    def _replace(self, broken: _Session, error: KafkaError | None, reason: str = "fatal error") -> None:
        """Drop a producer that failed fatally (once, however many requests saw it fail) and start a new one."""
        with self._state:
            if self._session is not broken:
                return
            self._session = self._new_session()
            self.producers_replaced += 1
        log.warning("kafka producer replaced (%d so far): %s", self.producers_replaced,
                    error.str() if error is not None else reason)
        try:  # whatever it still holds fails its batches now (each gets its 503) instead of lingering
            broken.producer.purge(in_queue=True, in_flight=True)
            broken.producer.poll(0)
        except Exception:  # noqa: BLE001 - a fatal producer may refuse even that; it is dropped anyway
            log.debug("purging a failed kafka producer", exc_info=True)

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
        probe = self._admit()
        ok = trip = False
        try:
            self.ensure_topic(topic)
            self._send(topic, records)
            ok = True
        except _ProducerFailed:
            raise
        except BaseException:
            trip = True
            raise
        finally:
            with self._state:
                if probe:
                    self._probing = False
                if ok:
                    self._open_until = 0.0
                elif trip:
                    self._open_until = time.monotonic() + self._cooldown_s

    def _admit(self) -> bool:
        """Whether this call may reach the broker (and is the probe after a cool-down); refused at once while
        the broker is known down. A refusal means nothing was produced: the client resends."""
        with self._state:
            if not self._open_until:
                return False
            if self._probing or time.monotonic() < self._open_until:
                raise ConnectionError("kafka broker unreachable: a recent batch was not acknowledged; "
                                      "retrying it shortly")
            self._probing = True
            return True

    def _send(self, topic: str, records: Sequence[tuple[bytes, bytes]]) -> None:
        """Produce the batch and wait for its own delivery reports (not the whole producer queue's), until the
        ack timeout. Anything short of every record acknowledged raises ConnectionError: the batch is
        refused; records of it that reach the broker later are deduplicated downstream on the resend."""
        session = self._session
        if session.fatal is not None:  # reported in the background: never hand a batch to a dead producer
            self._replace(session, session.fatal)
            session = self._session
        producer = session.producer
        deadline = time.monotonic() + self._ack_timeout_s
        batch = _Batch(len(records))
        try:
            for key, value in records:
                while True:
                    try:
                        producer.produce(topic, value=value, key=key, on_delivery=batch.on_delivery)
                        break
                    except BufferError:  # local queue full: let deliveries drain, within the deadline
                        if time.monotonic() >= deadline:
                            raise ConnectionError("kafka producer queue full; the broker is not keeping up") \
                                from None
                        producer.poll(0.05)
            while not batch.done() and session.fatal is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                producer.poll(min(0.02, left))
        except KafkaException as exc:  # produce() or poll() on a producer in a fatal state
            err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
            session.fatal = session.fatal or err or KafkaError(KafkaError._FATAL, str(exc), fatal=True)
        failures = [e for e in batch.reports if e is not None]
        fatal = session.fatal or next((e for e in failures if _needs_new_producer(e)), None)
        if fatal is not None:
            self._replace(session, fatal)
            raise _ProducerFailed(f"kafka producer failed ({fatal.str()}); replaced, nothing of this batch "
                                  "counts as accepted")
        if failures or not batch.done():
            # The broker is away, or up but not answering this producer (a restarted Tansu can leave one
            # connection's requests hanging): the next probe starts on a new producer and a new connection.
            reason = failures[0].str() if failures else (f"{batch.size - len(batch.reports)} of {batch.size} records "
                                                         f"not acknowledged within {self._ack_timeout_s:g} s")
            self._replace(session, failures[0] if failures else None, reason)
            raise ConnectionError(f"kafka did not acknowledge the batch: {reason}")

    def ping(self) -> None:
        try:
            self._admin.list_topics(timeout=2)
        except KafkaException as exc:
            raise ConnectionError(str(exc)) from exc

    def close(self) -> None:
        self._session.producer.flush(self._ack_timeout_s)


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
