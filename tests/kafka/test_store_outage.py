"""Issue 15 item 2: a usage-store (ClickHouse) outage longer than the MSK trigger's old retry budget
(10 retries, then only the batch's coordinates went to an SQS queue and its offsets were committed: the
batch was gone). The trigger now blocks the partition and retries without limit (infra/stack.py); the local
poller that plays it does the same. After the store comes back the totals equal the ground truth exactly."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from billow.adapters.kafka import client_config
from billow.bus import PARTITIONS
from billow.domain.usage import MeterValue, StoredEvent
from tests.kafka.conftest import Pipeline, read_topic, wait_until
from tests.support.usage import tokens_events, truth

OLD_RETRY_BUDGET = 1 + 10  # the first attempt and SINK_RETRIES, as the stack had it


class StoreOutage:
    """The usage store, down for its next `failures` writes. Half of them die in the middle of the write
    (the meter values inserted, the raw events not), as a ClickHouse that goes away between two inserts."""

    def __init__(self, inner: Any, failures: int, on_failure: Any = None) -> None:
        self.inner = inner
        self.left = failures
        self.failed = 0
        self.on_failure = on_failure

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def write(self, namespace: str, values: list[MeterValue], events: list[StoredEvent]) -> None:
        if self.left <= 0:
            self.inner.write(namespace, values, events)
            return
        self.left -= 1
        self.failed += 1
        if self.failed % 2 == 0 and values:
            self.inner.write(namespace, values, [])  # the first insert made it; the connection dies after
        if self.on_failure is not None:
            self.on_failure(self.failed)
        raise ConnectionError("ClickHouse: connection refused (outage played by the test)")


def committed_offsets(pipeline: Pipeline, group: str) -> list[int]:
    c = Consumer({**client_config(pipeline.bootstrap), "group.id": group, "enable.auto.commit": False})
    try:
        parts = c.committed([TopicPartition(pipeline.topic, p) for p in range(PARTITIONS)], timeout=10)
        return [tp.offset for tp in parts]
    finally:
        c.close()


def test_a_store_outage_longer_than_the_old_retry_budget_loses_nothing(pipeline: Pipeline) -> None:
    events = tokens_events(range(600), day="2026-03-06")
    for i in range(0, 600, 200):
        assert pipeline.ingest(events[i:i + 200])["statusCode"] == 204
    group = f"outage-{pipeline.namespace}"
    during: list[list[int]] = []

    def look_at_offsets(n: int) -> None:
        if n == 3 * OLD_RETRY_BUDGET:  # well past the old budget: nothing may have been committed
            during.append(committed_offsets(pipeline, group))

    outage = StoreOutage(pipeline.container.usage, failures=3 * OLD_RETRY_BUDGET, on_failure=look_at_offsets)
    pipeline.container.usage = outage
    poller = pipeline.poller(group, batch_size=150, retry_backoff_s=(0.01, 0.05))
    poller.start()  # the trigger's own loop: retries with backoff, never gives up
    # Generous deadlines, not a speed claim: every retry after a half-done write first repairs it (five rollup
    # DELETEs, 0.2-1 s each on chdb), so the 33 attempts take 30-60 s on a loaded two-core CI machine.
    # (the last failure looks at the offsets after it counted itself: wait for that look too)
    assert wait_until(lambda: outage.left == 0 and bool(during), 200), f"{outage.failed} failures so far"
    assert wait_until(lambda: pipeline.total() == truth(events), 60), (pipeline.total(), truth(events))
    assert during == [[-1001] * PARTITIONS], "offsets were committed while the store was down"
    # The total can be right before the last batch is done (a failed write had stored its values; the retry stores
    # the raw events): every offset committed means every batch was stored, so the counters are final.
    # (One record per partition per batch since issue 17: committed up to the end of every partition.)
    on_topic = [p for p, _, _ in read_topic(pipeline.bootstrap, pipeline.topic, PARTITIONS)]
    assert wait_until(lambda: committed_offsets(pipeline, group) == [on_topic.count(p) for p in range(PARTITIONS)], 30)
    assert poller.failures == 3 * OLD_RETRY_BUDGET
    counts = pipeline.container.metrics.snapshot()
    assert counts["sink_stored"] == 600 and counts.get("sink_deadLettered", 0) == 0
    assert pipeline.total() == truth(events) == Decimal("1855.0")
    # Nothing counted twice, also per window, and once the store is back everything is committed.
    days = {r["windowStart"].date().isoformat(): r["value"] for r in pipeline.query(windowSize="DAY")}
    assert days == {"2026-03-06": truth(events)}


class SeekFailsOnce:
    """The poller's consumer, whose first seek fails (a partition being revoked, a broker hiccup)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.failed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def seek(self, tp: TopicPartition) -> None:
        if not self.failed:
            self.failed = True
            raise KafkaException(KafkaError(KafkaError._STATE, "seek failed (played by the test)"))
        self.inner.seek(tp)


def test_a_failed_rewind_never_lets_the_poller_commit_past_the_failed_batch(pipeline: Pipeline) -> None:
    events = tokens_events(range(400), day="2026-03-07")
    assert pipeline.ingest(events)["statusCode"] == 204
    outage = StoreOutage(pipeline.container.usage, failures=1)
    pipeline.container.usage = outage
    poller = pipeline.poller(batch_size=100)
    flaky = SeekFailsOnce(poller._consumer)
    poller._consumer = flaky  # type: ignore[assignment]
    assert wait_until(lambda: outage.left == 0, 30, lambda: _poll_quietly(poller))
    assert flaky.failed
    assert wait_until(lambda: pipeline.total() == truth(events), 30, lambda: _poll_quietly(poller)), \
        (pipeline.total(), truth(events))


def _poll_quietly(poller: Any) -> None:
    try:
        poller.poll_once()
    except Exception:
        pass
