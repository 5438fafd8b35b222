"""Issue 15 item 1: a warm container sees meters another container created, changed or deleted, and an event
that arrives while a meter is being created and backfilled is counted exactly once.

Two "containers" are two SqlMetaStore instances on one database (PostgreSQL as in AWS, SQLite too) and one
usage store (the twin and chdb); the api side runs services.meters as functions/api does, the sink side
services.sink.sink_batch as functions/usage_sink does. The race is made deterministic with a store wrapper
that runs the api's create-and-backfill at one exact point of the sink's batch."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from billow.adapters.memory import InMemoryUsageStore
from billow.adapters.sql import SqlMetaStore
from billow.domain.events import parse_batch
from billow.domain.usage import MeterValue, StoredEvent
from billow.errors import ValidationFailed
from billow.services.ingest import encode_record, ingest_events
from billow.services.meters import create_meter, delete_meter, update_meter
from billow.services.query import params_from_query_string, query_meter
from billow.services.sink import SinkRecord, sink_batch
from tests.conftest import event, require_service

NOW = datetime(2026, 3, 3, tzinfo=UTC)
TOKENS = {"slug": "tokens", "eventType": "prompt", "aggregation": "SUM", "valueProperty": "$.tokens",
          "groupBy": {"model": "$.model"}}
# A COUNT meter: no valueProperty (left out; a null is a 400 naming it, as OpenMeter's MeterCreate has it).
CALLS = {k: v for k, v in TOKENS.items() if k != "valueProperty"} | {"slug": "calls", "eventType": "call",
                                                                     "aggregation": "COUNT"}


@pytest.fixture(params=["postgres", "sqlite"])
def two_containers(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[SqlMetaStore, SqlMetaStore]]:
    url = (require_service("BILLOW_TEST_PG_URL", "PostgreSQL") if request.param == "postgres"
           else f"sqlite:///{tmp_path / 'meta.db'}")
    api, sink = SqlMetaStore(url), SqlMetaStore(url)
    api.migrate()
    yield api, sink
    api.close()
    sink.close()


@pytest.fixture(params=["memory", "chdb"])
def usage(request: pytest.FixtureRequest) -> Any:
    return InMemoryUsageStore() if request.param == "memory" else request.getfixturevalue("chdb_store")


def records(namespace: str, events: list[dict[str, Any]]) -> list[SinkRecord]:
    return [SinkRecord(namespace, encode_record(e, NOW), f"t/0/{i}") for i, e in enumerate(parse_batch(events, NOW))]


def sink(namespace: str, events: list[dict[str, Any]], usage: Any, meta: Any) -> Any:
    def no_dead_letters(letters: list[dict[str, Any]]) -> None:
        raise AssertionError(letters)

    return sink_batch(records(namespace, events), usage=usage, meta=meta, dead_letter=no_dead_letters)


def total(namespace: str, meta: SqlMetaStore, usage: Any, slug: str = "tokens", **params: str) -> Any:
    rows = query_meter(namespace, slug, params_from_query_string({k: [v] for k, v in params.items()}),
                       meta=meta, usage=usage)["data"]
    return rows if params else sum((r["value"] for r in rows), Decimal(0))


def prompts(ids: range, **data: Any) -> list[dict[str, Any]]:
    return [event(f"e{i}", time=f"2026-03-02T10:{i % 60:02d}:00Z", tokens=f"{i}.1", model="gpt", **data) for i in ids]


def truth(events: list[dict[str, Any]]) -> Decimal:
    return sum((Decimal(e["data"]["tokens"]) for e in events), Decimal(0))


def test_a_warm_sink_counts_a_meter_created_by_the_api_container(two_containers: Any, usage: Any,
                                                                 namespace: str) -> None:
    api, warm = two_containers
    create_meter(namespace, CALLS, meta=api, usage=usage, now=NOW, sink_lock=nullcontext)
    before = prompts(range(0, 5))
    assert sink(namespace, before, usage, warm).unmatched == 5  # the sink container is warm: meters listed
    create_meter(namespace, TOKENS, meta=api, usage=usage, now=NOW, sink_lock=nullcontext)  # backfills `before`
    after = prompts(range(5, 12))
    result = sink(namespace, after, usage, warm)
    assert result.unmatched == 0 and result.stored == 7
    assert total(namespace, api, usage) == truth(before + after)


def test_a_warm_container_sees_changed_and_deleted_meters(two_containers: Any, usage: Any, namespace: str) -> None:
    api, warm = two_containers

    class Bus:
        def __init__(self) -> None:
            self.published: list[bytes] = []

        def publish(self, ns: str, recs: Any) -> None:
            self.published.extend(v for _, v in recs)

    bus = Bus()
    create_meter(namespace, TOKENS, meta=api, usage=usage, now=NOW, sink_lock=nullcontext)
    no_tokens = [event("x1", time="2026-03-02T10:00:00Z", model="gpt")]
    with pytest.raises(ValidationFailed):  # the warm ingest container validates against `tokens`
        ingest_events(namespace, no_tokens, meta=warm, bus=bus, now=NOW)
    sink(namespace, prompts(range(0, 2)), usage, warm)
    # Changed: a group-by key added by the api container applies to the warm sink's next batch.
    update_meter(namespace, "tokens", {"groupBy": {"model": "$.model", "team": "$.team"}}, meta=api,
                 now=NOW + timedelta(seconds=1))
    sink(namespace, [event("t1", time="2026-03-02T11:00:00Z", tokens="5", model="gpt", team="red")], usage, warm)
    rows = total(namespace, api, usage, groupBy="team")
    assert [r["value"] for r in rows if r["groupBy"].get("team") == "red"] == [Decimal(5)]
    assert total(namespace, api, usage) == Decimal("6.2")
    # Deleted: the warm ingest container no longer validates against it.
    delete_meter(namespace, "tokens", meta=api, now=NOW + timedelta(seconds=2))
    assert ingest_events(namespace, no_tokens, meta=warm, bus=bus, now=NOW).accepted == 1
    assert [m.slug for m in warm.list_meters(namespace)] == []


class RaceStore:
    """The usage store, with a hook run once at one point of the sink's batch: `before_write` right before the
    sink's write (it has listed its meters by then), `after_write` right after it."""

    def __init__(self, inner: Any, when: str, hook: Callable[[], None]) -> None:
        self.inner, self.when, self.hook = inner, when, hook
        self.fired = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _fire(self, when: str) -> None:
        if self.when == when and not self.fired:
            self.fired = True
            self.hook()

    def write(self, namespace: str, values: list[MeterValue], events: list[StoredEvent]) -> None:
        self._fire("before_write")
        self.inner.write(namespace, values, events)
        self._fire("after_write")


@pytest.mark.parametrize("when", ["before_write", "after_write"])
def test_an_event_in_the_gap_between_meter_list_and_write_is_counted_once(two_containers: Any, usage: Any,
                                                                          namespace: str, when: str) -> None:
    """before_write: the sink listed meters without `tokens`, then the api created and backfilled it before the
    sink wrote its events raw (the backfill scanned too early to see them). after_write: the backfill ran
    after the sink's write (it sees and values them) but before the sink looked at the meters again."""
    api, warm = two_containers
    create_meter(namespace, CALLS, meta=api, usage=usage, now=NOW, sink_lock=nullcontext)
    early = prompts(range(0, 3))
    sink(namespace, early, usage, warm)  # warm, and some raw events for the backfill to find

    def api_creates_tokens() -> None:
        create_meter(namespace, TOKENS, meta=api, usage=usage, now=NOW, sink_lock=nullcontext)

    racy = RaceStore(usage, when, api_creates_tokens)
    gap = prompts(range(3, 9))
    result = sink(namespace, gap, racy, warm)
    assert racy.fired and result.stored == 6
    assert total(namespace, api, usage) == truth(early + gap)
    again = sink(namespace, gap, usage, warm)  # redelivery changes nothing
    assert again.stored == 0 and total(namespace, api, usage) == truth(early + gap)


def test_meter_lock_excludes_another_container(two_containers: Any, namespace: str) -> None:
    """The sink's re-valuation and the api's backfill of one meter check and write under this lock, so two
    containers never both add a value for one event."""
    api, other = two_containers
    meter = create_meter(namespace, TOKENS, meta=api, usage=InMemoryUsageStore(), now=NOW, sink_lock=nullcontext)
    order: list[str] = []
    entered = threading.Event()

    def second() -> None:
        entered.set()
        with other.meter_lock(namespace, meter.id):
            order.append("second acquired")

    with api.meter_lock(namespace, meter.id):
        t = threading.Thread(target=second)
        t.start()
        assert entered.wait(5)
        t.join(timeout=1.0)  # it must still be waiting for the lock
        order.append("first released")
    t.join(timeout=10)
    assert order == ["first released", "second acquired"]
