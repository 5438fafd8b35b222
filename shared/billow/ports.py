"""Ports: what the services need from the outside world. Adapters implement them; bootstrap picks them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, Protocol

from billow.domain.events import CloudEvent
from billow.domain.meters import Meter
from billow.domain.usage import AggRow, MeterValue, StoredEvent, UsageQuery


class Clock(Protocol):
    def now(self) -> datetime: ...


class UsageStore(Protocol):
    """Raw events and per-meter values (ClickHouse in production, chdb embedded, a dict twin in unit tests)."""

    def migrate(self) -> None: ...

    def present_keys(self, namespace: str, keys: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        """(source, id) pairs whose raw event is stored: fully ingested."""
        ...

    def valued_keys(self, namespace: str, meter_ids: Sequence[str], start: datetime, end: datetime,
                    keys: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        """(source, id) pairs that already have meter values between start and end (a half-done earlier write)."""
        ...

    def write(self, namespace: str, values: Sequence[MeterValue], events: Sequence[StoredEvent]) -> None:
        """Write values first, raw events second: a stored raw event means its values are stored too."""
        ...

    def repair(self, namespace: str, keys: Sequence[tuple[str, str]]) -> None:
        """Make the pre-aggregates (rollups) of these events' values whole again: they were found valued without
        their raw event, so the write that stored them died, maybe before its rollups. Idempotent."""
        ...

    def aggregate(self, query: UsageQuery) -> list[AggRow]: ...

    def scan_events(self, namespace: str, event_type: str, after: tuple[str, str] | None, limit: int) -> list[CloudEvent]:
        """Raw events of one type in (source, id) order, for backfilling a new meter."""
        ...

    def list_events(self, namespace: str, *, subjects: Sequence[str] | None, start: datetime | None,
                    end: datetime | None, event_id: str | None, limit: int) -> list[StoredEvent]: ...

    def subjects(self, namespace: str, meter_id: str, start: datetime | None, end: datetime | None) -> list[str]: ...

    def ping(self) -> None: ...

    def close(self) -> None: ...


class MetaStore(Protocol):
    """Meters, subjects, customers (SQLite embedded, PostgreSQL in production)."""

    def migrate(self) -> None: ...

    def put_meter(self, namespace: str, meter: Meter, managed: bool = False) -> None: ...

    def update_meter(self, namespace: str, meter: Meter) -> None: ...

    def get_meter(self, namespace: str, id_or_slug: str, include_deleted: bool = False) -> Meter | None: ...

    def list_meters(self, namespace: str, include_deleted: bool = False) -> list[Meter]: ...

    def delete_meter(self, namespace: str, meter_id: str, at: datetime) -> None: ...

    def meter_lock(self, namespace: str, meter_id: str) -> AbstractContextManager[None]:
        """Across processes: held while checking which events have a value of the meter and writing the rest."""
        ...

    def upsert_subject(self, namespace: str, subject: dict[str, Any], now: datetime) -> dict[str, Any]: ...

    def list_subjects(self, namespace: str) -> list[dict[str, Any]]: ...

    def get_subject(self, namespace: str, id_or_key: str) -> dict[str, Any] | None: ...

    def delete_subject(self, namespace: str, subject_id: str, at: datetime) -> None: ...

    def put_customer(self, namespace: str, customer: dict[str, Any]) -> None: ...

    def get_customer(self, namespace: str, id_or_key: str, include_deleted: bool = False) -> dict[str, Any] | None: ...

    def list_customers(self, namespace: str, include_deleted: bool = False) -> list[dict[str, Any]]: ...

    def customers_for_subjects(self, namespace: str, subjects: Iterable[str]) -> dict[str, str]: ...

    def ping(self) -> None: ...

    def close(self) -> None: ...


class EventBus(Protocol):
    """Kafka in production (MSK), an in-process bus embedded. publish() returns once the bus has the records."""

    def publish(self, namespace: str, records: Sequence[tuple[bytes, bytes]]) -> None: ...

    def close(self) -> None: ...


class DeadLetters(Protocol):
    """Where the usage sink reports records it cannot process (SQS in AWS, a JSON-lines file embedded)."""

    count: int

    def __call__(self, items: list[dict[str, Any]]) -> None: ...
