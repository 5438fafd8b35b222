"""Usage records and meter queries: the shapes the usage stores speak, and the final value of a row."""

from __future__ import annotations

import decimal
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from billow.domain.events import CloudEvent
from billow.exact import EXACT

AVG_SCALE = Decimal(1).scaleb(-18)


@dataclass(slots=True, frozen=True)
class MeterValue:
    """One event's contribution to one meter."""

    meter_id: str
    subject: str
    time: datetime
    value: Decimal
    value_str: str
    group_by: dict[str, str]
    source: str
    event_id: str


@dataclass(slots=True, frozen=True)
class StoredEvent:
    event: CloudEvent
    ingested_at: datetime
    validation_error: str = ""
    data_json: str | None = None  # `data` as JSON text, when it came so (a batch record): event.data is then None


@dataclass(slots=True)
class GroupFilter:
    """advancedMeterGroupByFilters for one key (OpenMeter FilterString, string comparisons)."""

    key: str
    op: str  # $eq $ne $in $nin $like $nlike $ilike $nilike $gt $gte $lt $lte
    value: Any


@dataclass(slots=True)
class UsageQuery:
    namespace: str
    meter_id: str
    aggregation: str
    start: datetime | None  # inclusive
    end: datetime | None  # inclusive (OpenMeter v1 semantics)
    window_size: str | None
    window_tz: str
    subjects: list[str] | None
    group_by: list[str]  # meter group-by keys to split by ("subject" handled separately)
    by_subject: bool
    subject_customers: dict[str, str] | None  # subject -> customer id, when grouping/filtering by customer
    filters: list[list[GroupFilter]] = field(default_factory=list)  # OR of ANDs
    # window_size "BOUNDS": one window per [bounds[i], bounds[i+1]), whole UTC minutes (balance segments).
    bounds: list[datetime] | None = None


@dataclass(slots=True)
class AggRow:
    window_start: datetime | None
    subject: str | None
    customer_id: str | None
    groups: dict[str, str]
    sum: Decimal
    count: int
    min: Decimal | None
    max: Decimal | None
    uniq: int
    latest: Decimal | None
    first_time: datetime | None = None
    last_time: datetime | None = None


def final_value(aggregation: str, row: AggRow) -> Decimal:
    """The meter value of an aggregated row. AVG is rounded half-even to 18 decimal places (the store's scale)."""
    if aggregation == "SUM":
        return row.sum
    if aggregation == "COUNT":
        return Decimal(row.count)
    if aggregation == "UNIQUE_COUNT":
        return Decimal(row.uniq)
    if aggregation == "AVG":
        if row.count == 0:
            return Decimal(0)
        with decimal.localcontext(EXACT) as ctx:
            ctx.traps[decimal.Inexact] = False
            return (row.sum / Decimal(row.count)).quantize(AVG_SCALE, rounding=decimal.ROUND_HALF_EVEN)
    if aggregation == "MIN":
        return row.min if row.min is not None else Decimal(0)
    if aggregation == "MAX":
        return row.max if row.max is not None else Decimal(0)
    if aggregation == "LATEST":
        return row.latest if row.latest is not None else Decimal(0)
    raise ValueError(aggregation)
