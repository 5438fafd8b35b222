"""Kafka adapter (confluent-kafka): the production bus (MSK) and, outside Lambda, a stand-in for the MSK
event source mapping that feeds the usage sink from a real broker.

Publishing is idempotent (enable.idempotence, acks=all) and publish() returns only after the broker has
acknowledged every record of the batch; anything else raises ConnectionError and the caller answers 503
(nothing of that batch counts as accepted; a resend is deduplicated downstream by (source, id)), within
the ack timeout (5 s) at most: a producer that failed fatally or was fenced is replaced, and while the broker
is known down requests are refused at once."""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from billow.bus import BATCH_PREFIX, BATCH_RECORD_BYTES, PARTITIONS, BusRecord, msk_event, topic_for
from billow.errors import Forbidden, PayloadTooLarge

log = logging.getLogger("billow.kafka")
MAX_RECORD_BYTES = 1_000_000  # Kafka's default message.max.bytes (MSK Serverless: 8 MB, but one MB is portable)
MSK_PAYLOAD_BYTES = 6_000_000  # Lambda's invocation payload limit: the MSK trigger never hands the sink more at once


# -- Kafka's key partitioner ----------------------------------------------------------------------------------------
# The partition Kafka's own partitioners give a keyed record: the Java client's toPositive(murmur2(key)) % partitions
# and librdkafka's murmur2 / murmur2_random ((rd_murmur2(key) & 0x7fffffff) % partitions), the one KafkaBus's
# producer was configured with when it sent one record per event. Written here from that definition (MurmurHash2,
# 32 bit, seed 0x9747b28c, little-endian 4-byte blocks).
_M2_SEED = 0x9747B28C
_M2_M = 0x5BD1E995
_U32 = 0xFFFFFFFF


def murmur2(key: bytes) -> int:
    """Kafka's murmur2 of `key`, as an unsigned 32-bit integer (Java's int, bit for bit)."""
    n = len(key)
    h = _M2_SEED ^ n
    end = n & ~3
    for k in struct.unpack(f"<{end >> 2}I", key[:end]):
        k = (k * _M2_M) & _U32
        k = ((k ^ (k >> 24)) * _M2_M) & _U32
        h = ((h * _M2_M) & _U32) ^ k
    tail = n & 3
    if tail:
        if tail == 3:
            h ^= key[end + 2] << 16
        if tail >= 2:
            h ^= key[end + 1] << 8
        h = ((h ^ key[end]) * _M2_M) & _U32
    h = ((h ^ (h >> 13)) * _M2_M) & _U32
    return h ^ (h >> 15)


_LANES = 2048  # keys hashed together in one Python integer (more gains nothing: the integers leave the CPU cache)


def murmur2_partitions(keys: Sequence[bytes], partitions: int) -> list[int]:
    """The partition Kafka's murmur2 partitioner gives each key. Keys of one length are hashed together, each in a
    64-bit lane of one Python integer (every step of murmur2 is a multiply, shift, xor or mask that keeps to its lane
    once masked to 32 bits): about 0.5 us a key instead of about 5 one at a time."""
    out = [0] * len(keys)
    by_length: dict[int, list[int]] = {}
    for i, key in enumerate(keys):
        by_length.setdefault(len(key), []).append(i)
    for n, all_idx in by_length.items():
        for at in range(0, len(all_idx), _LANES):
            idx = all_idx[at:at + _LANES]
            if len(idx) < 8:
                for i in idx:
                    out[i] = (murmur2(keys[i]) & 0x7FFFFFFF) % partitions
                continue
            for i, h in zip(idx, _murmur2_lanes([keys[i] for i in idx], n), strict=True):
                out[i] = (h & 0x7FFFFFFF) % partitions
    return out


def _murmur2_lanes(keys: list[bytes], n: int) -> tuple[int, ...]:
    """murmur2 of keys that are all `n` bytes long, computed side by side in 64-bit lanes."""
    count = len(keys)
    width = 8 * count
    data = b"".join(keys)
    mask = int.from_bytes(b"\xff\xff\xff\xff\0\0\0\0" * count, "little")
    h = int.from_bytes(struct.pack("<II", _M2_SEED ^ n, 0) * count, "little")
    lane = bytearray(width)
    end = n & ~3
    for b in range(0, end, 4):  # block b of every key, its 4 bytes into the low half of the key's lane
        lane[0::8] = data[b::n]
        lane[1::8] = data[b + 1::n]
        lane[2::8] = data[b + 2::n]
        lane[3::8] = data[b + 3::n]
        k = (int.from_bytes(lane, "little") * _M2_M) & mask
        k = ((k ^ ((k >> 24) & mask)) * _M2_M) & mask
        h = ((h * _M2_M) & mask) ^ k
    tail = n & 3
    if tail:
        last = bytearray(width)
        for j in range(tail):
            last[j::8] = data[end + j::n]
        h = ((h ^ int.from_bytes(last, "little")) * _M2_M) & mask
    h = ((h ^ ((h >> 13) & mask)) * _M2_M) & mask
    h = (h ^ (h >> 15)) & mask
    return struct.unpack(f"<{count}Q", h.to_bytes(width, "little"))


_EVENTS_AT = b',"events":['


def partitioned_batch_records(records: Sequence[tuple[bytes, bytes]], partitions: int
                              ) -> list[tuple[int, bytes, bytes]]:
    """(partition, key, value) for ingest's per-event records (bus.batch_records(per_event=True): the batch record
    head, one event, `]}`, keyed `source\x1fid`): each event goes to the partition Kafka's murmur2 partitioner gives
    its key, the events of one partition in one batch record (split as bus.batch_records splits, at
    BATCH_RECORD_BYTES of events), keyed `billow-batch-p<partition>`. So every copy of an event, whichever batch
    brought it and in whichever shape (a deployed topic holds per-event records produced with that partitioner), is
    on one partition. A record of any other shape goes alone, to its key's partition."""
    parts = murmur2_partitions([key for key, _ in records], partitions)
    head = b""
    first = records[0][1] if records else b""
    if first.startswith(BATCH_PREFIX) and (at := first.find(_EVENTS_AT)) > 0:
        head = first[:at + len(_EVENTS_AT)]  # no JSON string holds a bare `"`: the first match is the head's own
    cut = len(head)
    limit = min(BATCH_RECORD_BYTES, MAX_RECORD_BYTES - cut - 64)  # a head of thousands of meter ids still fits
    groups: dict[int, list[list[bytes]]] = {}
    sizes: dict[int, int] = {}
    out: list[tuple[int, bytes, bytes]] = []
    for (key, value), p in zip(records, parts, strict=True):
        if not head or not value.startswith(head) or not value.endswith(b"]}") or len(value) < cut + 3:
            out.append((p, key, value))
            continue
        body = value[cut:-2]
        chunks = groups.setdefault(p, [[]])
        if chunks[-1] and sizes[p] + len(body) > limit:
            chunks.append([])
            sizes[p] = 0
        chunks[-1].append(body)
        sizes[p] = sizes.get(p, 0) + len(body) + 1
    out.extend((p, b"billow-batch-p%d" % p, head + b",".join(chunk) + b"]}") for p in sorted(groups)
               for chunk in groups[p])
    return out


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
    """EventBus on Kafka: topic per namespace (`billow.<namespace>.events`, created on first use); one batch record
    per partition per batch, on the partition Kafka's murmur2 partitioner gives each of its events' key
    `source\\x1fid` (partitioned_batch_records), so every copy of one event lands on one partition.

    A request waits at most `ack_timeout_s` for its own batch (concurrent requests share the producer and
    never queue behind each other's waits). A fatal producer error (e.g. the broker forgot our producer id
    after a restart) replaces the producer at once. After a batch was not acknowledged the bus fails fast
    for `cooldown_s` (the broker is known down), then lets one request through as a probe."""

    # Ingest hands this bus one record per event (in the batch record shape: no second validation in the sink), keyed
    # `source\x1fid`; publish() puts each event on the partition Kafka's murmur2 partitioner gives that key (where
    # every copy of it, also one a deployed topic already holds in the per-event shape, is) and sends one batch record
    # per partition (issue 17).
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
        self._partition_counts: dict[str, int] = {}  # topic -> its partitions, as the broker has them
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
        """Create the topic if it is missing, and learn its partition count (a topic made at deploy, or by an
        older version, keeps the count it has)."""
        if topic in self._known_topics:
            return
        futures = self._admin.create_topics(
            [NewTopic(topic, num_partitions=self._partitions, replication_factor=self._replication)],
            operation_timeout=self._ack_timeout_s, request_timeout=self._ack_timeout_s)
        try:
            futures[topic].result(timeout=self._ack_timeout_s)
            count = self._partitions
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if not (isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS):
                raise ConnectionError(f"cannot create topic {topic}: {exc}") from exc
            count = self._partitions_of(topic)
        except Exception as exc:  # timeout: the broker is not reachable
            raise ConnectionError(f"cannot create topic {topic}: {exc!r}") from exc
        self._partition_counts[topic] = count
        self._known_topics.add(topic)

    def _partitions_of(self, topic: str) -> int:
        try:
            found = self._admin.list_topics(topic, timeout=self._ack_timeout_s).topics.get(topic)
        except KafkaException as exc:
            raise ConnectionError(f"cannot read the partitions of topic {topic}: {exc}") from exc
        if found is None or found.error is not None or not found.partitions:
            raise ConnectionError(f"cannot read the partitions of topic {topic}: "
                                  f"{found.error if found is not None else 'not found'}")
        return len(found.partitions)

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
        partitions = self._partition_counts.get(topic)
        # Each event on its key's murmur2 partition, one record per partition (partitioned_batch_records); a topic
        # whose partition count this bus did not learn (marked known from outside) gets the records as they are, keyed,
        # and the producer's own murmur2 partitioner places them.
        placed: Sequence[tuple[int, bytes, bytes]] = (
            partitioned_batch_records(records, partitions) if partitions else [(-1, k, v) for k, v in records])
        batch = _Batch(len(placed))
        try:
            for partition, key, value in placed:
                while True:
                    try:
                        if partition < 0:
                            producer.produce(topic, value=value, key=key, on_delivery=batch.on_delivery)
                        else:
                            producer.produce(topic, value=value, key=key, partition=partition,
                                             on_delivery=batch.on_delivery)
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


def _invocations(batch: list[BusRecord]) -> list[list[BusRecord]]:
    """The records in consecutive runs whose `aws:kafka` event stays within MSK_PAYLOAD_BYTES (base64 makes 4 bytes of
    3; a record alone over it still goes, alone)."""
    out: list[list[BusRecord]] = []
    size = MSK_PAYLOAD_BYTES
    for r in batch:
        need = (len(r.key) + len(r.value) + 2) // 3 * 4 + 300  # the record's JSON around its key and value
        if size + need > MSK_PAYLOAD_BYTES - 1000:
            out.append([])
            size = 0
        out[-1].append(r)
        size += need
    return out


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
        self.delivered = 0  # records
        self.events = 0  # events the handler reported handled (stored, duplicates, dead-lettered), if it reports them
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
            # A fetch the broker holds until data comes: Tansu answers it only when the wait runs out (librdkafka's
            # default 500 ms was ~250 ms of every ack -> queryable lag); one partition's fetch may bring an
            # invocation's worth of batch records (librdkafka's default 1 MB is one record of 900 kB).
            "fetch.wait.max.ms": 50,
            "max.partition.fetch.bytes": MSK_PAYLOAD_BYTES,
        })
        self._topics = list(topics)
        self._consumer.subscribe(self._topics)

    def poll_once(self) -> int:
        """One poll: deliver and commit, in invocations of at most MSK_PAYLOAD_BYTES (a record of ingest's carries a
        partition's share of a batch: a poll of many can be far over Lambda's limit). Returns the number of records
        delivered (0 if none came). A failed invocation commits nothing of its own and rewinds to its first offsets:
        the invocations before it are committed, it and those after it come again."""
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
        done = 0
        for chunk in _invocations(batch):
            try:
                self._deliver_chunk(chunk)
            except SinkCrash:
                raise
            except Exception:
                self.failures += 1
                first: dict[tuple[str, int], int] = {}
                for r in batch[done:]:
                    first.setdefault((r.topic, r.partition), r.offset)
                self._rewind(first)
                raise
            done += len(chunk)
        return len(batch)

    def _deliver_chunk(self, chunk: list[BusRecord]) -> None:
        last: dict[tuple[str, int], int] = {}
        for r in chunk:
            last[(r.topic, r.partition)] = r.offset
        event = msk_event(chunk, bootstrap=self.bootstrap)
        with self._lock():
            counts = self._deliver(event)
        if self._before_commit is not None:
            self._before_commit(event)
        self._consumer.commit(offsets=[TopicPartition(t, p, o + 1) for (t, p), o in last.items()],
                              asynchronous=False)
        self.delivered += len(chunk)
        if isinstance(counts, dict):  # the usage sink handler's answer: a record may carry many events
            self.events += sum(int(counts.get(k, 0)) for k in ("stored", "duplicates", "deadLettered"))

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
