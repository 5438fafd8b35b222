"""Ingest when the producer breaks (issue 15, item 4b): a fatal producer error (the broker forgot our producer id
after a restart, or any other fatal error of an idempotent producer) is a 503 with Retry-After and the next
batch goes through a new producer; while the broker is down every client gets its 503 within a few seconds,
not after the flushes of every request queued before it; once the broker is back, ingest works again without
restarting the process, and what was acknowledged with 204 is on the topic exactly once per (source, id)."""

from __future__ import annotations

import http.client
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer

from billow import jsonx
from billow.adapters.kafka import KafkaBus, client_config
from billow.bootstrap import Container, Settings, build, install
from billow.bus import topic_for
from billow.local.server import BillowServer
from tests.conftest import event
from tests.kafka.conftest import PrivateBroker, wait_until

FATAL = KafkaError(KafkaError._FATAL, "Unknown Producer Id (fatal idempotent producer error)", fatal=True)
UNKNOWN_PRODUCER_ID = KafkaError(KafkaError.UNKNOWN_PRODUCER_ID, "Unknown Producer Id", fatal=True)


class StubProducer:
    """Stands in for confluent_kafka.Producer: acknowledges every record on poll/flush, or raises `error` from
    produce() or from the wait (poll/flush), or never acknowledges (`silent`: the broker is down)."""

    def __init__(self, *, raise_from: str | None = None, error: KafkaError = FATAL, silent: bool = False,
                 report: KafkaError | None = None) -> None:
        self.raise_from = raise_from
        self.error = error
        self.silent = silent
        self.report = report  # the error every delivery report carries (None: acknowledged)
        self.produced: list[tuple[bytes, bytes]] = []
        self.pending: list[Callable[[KafkaError | None, Any], None]] = []
        self.purged = False
        self.lock = threading.Lock()

    def produce(self, topic: str, value: bytes, key: bytes, on_delivery: Callable[[KafkaError | None, Any], None]) -> None:
        if self.raise_from == "produce":
            raise KafkaException(self.error)
        with self.lock:
            self.produced.append((key, value))
            self.pending.append(on_delivery)

    def _serve(self, timeout: float) -> int:
        if self.raise_from == "wait":
            raise KafkaException(self.error)
        if self.silent:  # like librdkafka: block for the whole timeout when nothing comes
            time.sleep(min(max(timeout, 0.0), 30.0))
            return 0
        with self.lock:
            served, self.pending = self.pending, []
        for cb in served:
            cb(self.report, None)
        return len(served)

    def poll(self, timeout: float = -1) -> int:
        return self._serve(timeout)

    def flush(self, timeout: float = -1) -> int:
        self._serve(timeout)
        return len(self.pending)

    def purge(self, in_queue: bool = True, in_flight: bool = True, blocking: bool = True) -> None:
        self.purged = True
        with self.lock:
            self.pending = []

    def __len__(self) -> int:
        return len(self.pending)


class StubBus(KafkaBus):
    """A KafkaBus whose producers are the given stubs, one per (re)build, in order; the topic already exists."""

    def __init__(self, stubs: list[StubProducer], topic: str, **kw: Any) -> None:
        self.stubs = list(stubs)
        self.made: list[StubProducer] = []
        self.error_callbacks: list[Callable[[KafkaError], None]] = []
        super().__init__(client_config("127.0.0.1:1"), **kw)
        self._known_topics.add(topic)

    def _new_producer(self, *args: Any, **kw: Any) -> Any:
        on_error = kw.get("on_error", args[0] if args else None)
        if on_error is not None:
            self.error_callbacks.append(on_error)
        stub = self.stubs.pop(0)
        self.made.append(stub)
        return stub


@pytest.fixture
def stub_world(tmp_path: Path, namespace: str) -> Iterator[Container]:
    c = build(Settings(namespace=namespace, usage_store="memory", data_dir=str(tmp_path)))
    install(c)
    yield c
    install(None)
    c.meta.close()


def ingest(events: list[dict[str, Any]]) -> dict[str, Any]:
    from billow.local.server import apigw_event
    from functions.ingest.handler import lambda_handler

    body = jsonx.dumps(events).encode()
    ev = apigw_event("POST", "/api/v1/events", {"content-type": "application/cloudevents-batch+json"}, body, "test")
    return lambda_handler(ev, None)  # type: ignore[arg-type]


def batch(prefix: str, n: int = 3) -> list[dict[str, Any]]:
    return [event(f"{prefix}-{i}", source="faults", time="2026-03-02T10:00:00Z", tokens=f"{i}.1") for i in range(n)]


@pytest.mark.parametrize("raise_from", ["produce", "wait"])
@pytest.mark.parametrize("error", [FATAL, UNKNOWN_PRODUCER_ID], ids=["fatal", "unknown_producer_id"])
def test_a_fatal_producer_error_is_a_503_and_the_next_batch_goes_through_a_new_producer(
        stub_world: Container, raise_from: str, error: KafkaError) -> None:
    broken, fresh = StubProducer(raise_from=raise_from, error=error), StubProducer()
    bus = StubBus([broken, fresh], topic_for(stub_world.namespace))
    stub_world.bus = bus

    first = ingest(batch("a"))
    assert first["statusCode"] == 503, first
    assert first["headers"]["Retry-After"] == "1"
    assert first["headers"]["Content-Type"] == "application/problem+json"
    assert jsonx.loads(first["body"])["status"] == 503
    assert broken.purged and bus.made == [broken, fresh]  # the broken producer is dropped at once

    second = ingest(batch("a"))  # the client resends the batch
    assert second["statusCode"] == 204, second
    assert len(fresh.produced) == 3 and not fresh.pending


def test_a_producer_the_broker_refuses_is_replaced(namespace: str) -> None:
    """Restarted, Tansu answers every batch of the old producer with PRODUCER_FENCED in the delivery report
    (not flagged fatal): that batch is refused and the next one goes through a new producer, not to the
    fenced one forever."""
    fenced = StubProducer(report=KafkaError(KafkaError.PRODUCER_FENCED))
    fresh = StubProducer()
    bus = StubBus([fenced, fresh], topic_for(namespace))
    with pytest.raises(ConnectionError):
        bus.publish(namespace, [(b"k", b"v")])
    bus.publish(namespace, [(b"k", b"v")])  # no cool-down: the broker is up, only our producer was refused
    assert fresh.produced == [(b"k", b"v")] and bus.made == [fenced, fresh]


def test_publish_raises_the_503_error_type_on_a_fatal_error(namespace: str) -> None:
    broken, fresh = StubProducer(raise_from="produce"), StubProducer()
    bus = StubBus([broken, fresh], topic_for(namespace))
    with pytest.raises(ConnectionError):
        bus.publish(namespace, [(b"k", b"v")])
    bus.publish(namespace, [(b"k", b"v")])
    assert fresh.produced == [(b"k", b"v")]


def test_a_fatal_error_reported_in_the_background_replaces_the_producer_before_the_next_batch(
        namespace: str) -> None:
    """librdkafka reports a fatal error through error_cb (e.g. while idle); the next batch does not go to the dead
    producer (it would only be refused) but to a new one."""
    dead, fresh = StubProducer(), StubProducer()
    bus = StubBus([dead, fresh], topic_for(namespace))
    assert bus.error_callbacks, "the producer is built with an error callback"
    bus.error_callbacks[0](FATAL)
    bus.publish(namespace, [(b"k", b"v")])
    assert dead.produced == [] and dead.purged
    assert fresh.produced == [(b"k", b"v")]


def test_concurrent_batches_while_the_broker_is_down_each_get_their_refusal_within_the_ack_timeout(
        namespace: str) -> None:
    """No serialisation of waits across requests: with the broker silent, N concurrent publishes each fail
    after about one ack timeout, not after the waits of every publish queued before them; while the broker is
    known down, further publishes fail at once without queueing anything (a circuit), and one probe after the
    cool-down finds the broker back."""
    ack = 0.5
    stubs = [StubProducer(silent=True) for _ in range(8)]  # however often it is rebuilt, the broker is silent
    bus = StubBus(stubs, topic_for(namespace), ack_timeout_s=ack)
    took: list[float] = []
    errors: list[BaseException] = []

    def one(i: int) -> None:
        start = time.monotonic()
        try:
            bus.publish(namespace, [(f"k{i}".encode(), b"v")])
        except ConnectionError as exc:
            errors.append(exc)
        took.append(time.monotonic() - start)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=30)
    assert len(errors) == 4
    assert max(took) < ack + 0.5, took  # serialised, the last one would wait 4 x (ack + 1) s

    produced = sum(len(s.produced) for s in bus.made)
    start = time.monotonic()
    with pytest.raises(ConnectionError):  # the circuit is open: refused at once, nothing queued
        bus.publish(namespace, [(b"late", b"v")])
    assert time.monotonic() - start < 0.1
    assert sum(len(s.produced) for s in bus.made) == produced

    for s in stubs:  # the broker is back: after the cool-down a probe gets through
        s.silent = False

    def probe() -> bool:
        try:
            bus.publish(namespace, [(b"probe", b"v")])
            return True
        except ConnectionError:
            return False

    assert wait_until(probe, 10)


# --- the real thing: billow serve on a broker of its own, restarted under concurrent clients ---

CLIENTS = 4
BATCHES = 30
PER_BATCH = 20
ACK_TIMEOUT_S = 5.0  # KafkaBus's default, what billow serve and the ingest Lambda run with
# Every answer, 204 or 503, arrives within this: the ack timeout and the host's own time. 1.5 s of that was too
# little on a CI run whose other worker ran four SIGKILLed servers at once (2026-12-08: 6.63 s, the 503 of a
# request that waited its 5 s for an ack); a producer that hangs waits the client's 60 s.
BOUND_S = ACK_TIMEOUT_S + 2.5


def consume_all(bootstrap: str, topic: str, want: set[tuple[str, str]],
                timeout_s: float = 60) -> dict[tuple[str, str], Decimal]:
    """The records on the topic (until every one of `want` was seen), deduplicated by (source, id) as the usage
    sink does; the test's own broker probes left out."""
    consumer = Consumer({**client_config(bootstrap), "group.id": f"check-{uuid.uuid4().hex[:8]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    seen: dict[tuple[str, str], Decimal] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while not want <= seen.keys() and time.monotonic() < deadline:
            for m in consumer.consume(500, 0.5):
                if m.error() is not None:
                    continue
                doc = jsonx.loads(m.value() or b"")
                # Ingest's records carry events in the batch record shape (bus.batch_records, issue 17)
                for ev in ([{"id": r[0], "source": r[1], "data": r[5]} for r in doc["events"]]
                           if "billowBatch" in doc else [doc]):
                    if ev["source"] == "probe":
                        continue
                    seen[(ev["source"], ev["id"])] = Decimal(ev["data"]["tokens"])
    finally:
        consumer.close()
    return seen


def broker_takes_writes(bootstrap: str, topic: str, partitions: int) -> bool:
    """Whether the broker itself stores a record on every partition, for a client of its own (not idempotent, no
    state shared with Billow's producer)."""
    producer = Producer({**client_config(bootstrap), "acks": "all", "message.timeout.ms": 5000})
    reports: list[KafkaError | None] = []
    for p in range(partitions):
        producer.produce(topic, jsonx.dumps({"source": "probe", "id": str(uuid.uuid4())}).encode(), partition=p,
                         on_delivery=lambda err, _msg: reports.append(err))
    producer.flush(8)
    return len(reports) == partitions and not any(reports)


def test_billow_serve_through_broker_restarts_never_answers_500_and_refuses_fast(
        private_broker: PrivateBroker, tmp_path: Path, namespace: str) -> None:
    server = BillowServer(Settings.parse({
        "namespace": namespace, "usage_store": "memory", "data_dir": str(tmp_path / "data"), "bus": "kafka",
        "kafka_bootstrap": private_broker.bootstrap, "kafka_partitions": 2, "billing_every_s": 0,
        "kafka_group": f"sink-{namespace}"}), port=0)
    server.start_background()
    host, port = server.address
    lock = threading.Lock()
    answers: list[tuple[int, str | None, float, float]] = []  # status, Retry-After, took, finished at
    details: list[str] = []  # the last refusals' reasons, for a failure message
    acked: dict[tuple[str, str], Decimal] = {}
    sent: dict[tuple[str, str], Decimal] = {}
    broken: list[str] = []
    stop = threading.Event()

    def client(c: int) -> None:
        conn = http.client.HTTPConnection(host, port, timeout=60)
        try:
            for b in range(BATCHES):
                if stop.is_set():
                    return
                events = [event(f"c{c}-b{b}-{i}", source=f"client{c}", time="2026-03-02T10:00:00Z",
                                tokens=f"{i % 7}.1") for i in range(PER_BATCH)]
                with lock:
                    sent.update({(e["source"], e["id"]): Decimal(e["data"]["tokens"]) for e in events})
                body = jsonx.dumps(events).encode()
                while True:
                    start = time.monotonic()
                    conn.request("POST", "/api/v1/events", body, {"Content-Type": "application/cloudevents-batch+json"})
                    resp = conn.getresponse()
                    text = resp.read()
                    took = time.monotonic() - start
                    with lock:
                        answers.append((resp.status, resp.getheader("Retry-After"), took, time.monotonic()))
                    if resp.status == 204:
                        with lock:
                            acked.update({(e["source"], e["id"]): Decimal(e["data"]["tokens"]) for e in events})
                        break
                    details.append(f"{time.monotonic():.2f} {resp.status} {took:.2f}s {text[:300]!r}")
                    if resp.status != 503:
                        broken.append(f"{resp.status}")
                        return
                    if stop.is_set():
                        return
                    time.sleep(0.2)  # pacing; a real client waits Retry-After
        except Exception as exc:  # noqa: BLE001 - reported by the assertions below
            broken.append(repr(exc))
        finally:
            conn.close()

    def answered_since(t0: float, status: int, at_least: int = 1) -> Callable[[], bool]:
        def check() -> bool:
            with lock:
                return bool(broken) or sum(1 for s, _, _, at in answers if at > t0 and s == status) >= at_least
        return check

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(CLIENTS)]
    try:
        for th in threads:
            th.start()
        assert wait_until(lambda: len(acked) >= 200, 60), "ingest never got going"
        restarts = 3
        wedged = ""
        for _ in range(restarts):
            private_broker.stop()
            # down long enough for every client to be refused twice on average
            assert wait_until(answered_since(time.monotonic(), 503, 2 * CLIENTS), 30), details[-5:]
            private_broker.start()
            if not wait_until(answered_since(time.monotonic(), 204), 30):
                # Tansu 0.6 (S3 storage), killed, now and then comes back with a partition that takes no writes
                # from anyone; then a 503 for every batch is the right answer and nothing else is ours to test.
                assert not broker_takes_writes(private_broker.bootstrap, topic_for(namespace), 2), \
                    "no recovery once the broker was back:\n" + "\n".join(details[-20:])
                wedged = "the restarted broker takes no writes on some partition, from any client"
                stop.set()
                break
        for th in threads:
            th.join(timeout=180)
        assert not any(th.is_alive() for th in threads)
        assert not broken, broken
        statuses = [s for s, *_ in answers]
        assert set(statuses) <= {204, 503}
        assert statuses.count(503) >= restarts
        assert all(retry for s, retry, *_ in answers if s == 503)
        slowest = max(took for *_, took, _ in answers)
        assert slowest < BOUND_S, f"slowest answer {slowest:.2f} s"
        bus = server.container.bus
        print(f"answers: {statuses.count(204)} x 204, {statuses.count(503)} x 503, slowest {slowest:.2f} s; "
              f"producers replaced: {getattr(bus, 'producers_replaced', '?')}")
        if wedged:  # it does not serve reads either: what is on the topic cannot be checked
            pytest.xfail(wedged)
        assert len(acked) == CLIENTS * BATCHES * PER_BATCH and acked == sent  # every batch went through in the end
        on_topic = consume_all(private_broker.bootstrap, topic_for(namespace), set(acked))
        assert on_topic == acked  # every acknowledged event is there, once after dedup, and nothing else
        assert sum(on_topic.values(), Decimal(0)) == sum(acked.values(), Decimal(0))
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()
        server.close(drain_timeout_s=5)
