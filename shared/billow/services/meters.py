"""Meter use-cases: create (with backfill from stored events), list, get, update, delete, config sync."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime
from functools import partial
from typing import Any

from billow.domain import fields
from billow.domain.ingest_policy import parse_policy
from billow.domain.meters import Meter, validate_meter_definition
from billow.errors import Conflict, NotFound, ValidationFailed
from billow.ids import new_id
from billow.ports import MetaStore, UsageStore
from billow.services import meter_refs
from billow.services.edits import until_written
from billow.services.sink import backfill_meter
from billow.timeutil import as_of, parse_rfc3339

SinkLock = Callable[[], AbstractContextManager[Any]]
# OpenMeter's MeterCreate and MeterUpdate: metadata alone may be null; these are left out or set, a null is no field
# left out (ingestionPolicy: Billow's, not nullable either).
NOT_NULL = ("name", "description", "eventFrom", "valueProperty", "groupBy", "ingestionPolicy")
UPDATE_NOT_NULL = ("name", "description", "groupBy", "ingestionPolicy")


def build_meter(body: dict[str, Any], now: datetime) -> Meter:
    validate_meter_definition(body)
    event_from = parse_rfc3339(body["eventFrom"], "eventFrom") if body.get("eventFrom") is not None else None
    return Meter(
        id=new_id(), slug=body["slug"], aggregation=body["aggregation"], event_type=body["eventType"],
        name=body.get("name") or body["slug"], description=body.get("description"),
        value_property=body.get("valueProperty") or None, group_by=dict(body.get("groupBy") or {}),
        event_from=event_from, created_at=now, updated_at=now, metadata=body.get("metadata"),
        policy=parse_policy(body.get("ingestionPolicy")),
    )


def create_meter(namespace: str, body: Any, *, meta: MetaStore, usage: UsageStore, now: datetime,
                 sink_lock: SinkLock, managed: bool = False) -> Meter:
    if not isinstance(body, dict):
        raise ValidationFailed("meter must be a JSON object", [{"field": "", "message": "must be a JSON object"}])
    if not managed:  # (a config file's meter keeps YAML's `description:`)
        fields.not_null(body, NOT_NULL)
    meter = build_meter(body, now)
    with sink_lock():
        meta.put_meter(namespace, meter, managed=managed)
        backfill_meter(namespace, meter, usage, lock=lambda: meta.meter_lock(namespace, meter.id))
    return meter


def get_meter(namespace: str, id_or_slug: str, *, meta: MetaStore) -> Meter:
    meter = meta.get_meter(namespace, id_or_slug)
    if meter is None:
        raise NotFound(f"meter {id_or_slug!r} not found")
    return meter


def update_meter(namespace: str, id_or_slug: str, body: Any, *, meta: MetaStore, now: datetime) -> Meter:
    """MeterUpdate: name, description, metadata, groupBy (new group-by keys apply to events from now on); the fields
    not given stay as stored. Written only as read: another container's edit or delete meanwhile makes this read
    again (so neither edit is lost, and a deleted meter is a 404, never written back live)."""
    def step() -> tuple[Meter, Callable[[], None]]:
        meter = get_meter(namespace, id_or_slug, meta=meta)
        if not isinstance(body, dict):
            raise ValidationFailed("meter update must be a JSON object",
                                   [{"field": "", "message": "must be a JSON object"}])
        fields.not_null(body, UPDATE_NOT_NULL)
        updated = _updated(meter, body, now)
        return updated, partial(meta.update_meter, namespace, updated, expect=meter)

    return until_written(step)


def _updated(meter: Meter, body: dict[str, Any], now: datetime) -> Meter:
    merged = {"slug": meter.slug, "aggregation": meter.aggregation, "eventType": meter.event_type,
              "valueProperty": meter.value_property, "name": body.get("name", meter.name),
              "description": body.get("description", meter.description),
              "metadata": body.get("metadata", meter.metadata), "groupBy": body.get("groupBy", meter.group_by)}
    validate_meter_definition(merged)
    removed = set(meter.group_by) - set(merged["groupBy"] or {})
    if removed:
        raise ValidationFailed(f"groupBy keys cannot be removed: {sorted(removed)}",
                               [{"field": "groupBy", "message": "existing keys cannot be removed"}])
    updated = Meter(id=meter.id, slug=meter.slug, aggregation=meter.aggregation, event_type=meter.event_type,
                    name=merged["name"] or meter.slug, description=merged["description"],
                    value_property=meter.value_property, group_by=dict(merged["groupBy"] or {}),
                    event_from=meter.event_from, created_at=meter.created_at, metadata=merged["metadata"],
                    updated_at=as_of(now, meter.updated_at),  # never before the edit it follows (a clock behind)
                    policy=parse_policy(body.get("ingestionPolicy"), meter.policy))
    return updated


def delete_meter(namespace: str, id_or_slug: str, *, meta: MetaStore, now: datetime,
                 ents: meter_refs.Features | None = None, catalog: meter_refs.Catalog | None = None) -> None:
    """A meter still in use (features, plans, add-ons, subscriptions, entitlements: `ents` and `catalog` answer;
    the API always passes both) is a 409 naming what uses it."""
    meter = get_meter(namespace, id_or_slug, meta=meta)
    if getattr(meta, "is_managed", lambda *_: False)(namespace, meter.id):
        raise Conflict(f"meter {meter.slug!r} is declared in the config file; remove it there")
    unused = None
    if ents is not None and catalog is not None:
        # Checked again where the deletion is written, under the lock a new feature on the meter takes too.
        unused = partial(meter_refs.refuse_if_used, namespace, meter.slug, ents=ents, catalog=catalog, now=now)
        unused()
    meta.delete_meter(namespace, meter.id, now, check=unused)


def sync_config_meters(namespace: str, declared: list[dict[str, Any]], *, meta: MetaStore, usage: UsageStore,
                       now: datetime, sink_lock: SinkLock) -> list[str]:
    """Create the meters declared in the config file that do not exist yet; a changed definition is an error
    (a meter's meaning never changes under stored usage: delete and re-create under a new slug)."""
    created = []
    for i, body in enumerate(declared):
        if not isinstance(body, dict) or "slug" not in body:
            raise ValidationFailed(f"config meters[{i}]: needs a slug", [{"field": f"meters[{i}].slug", "message": "required"}])
        existing = meta.get_meter(namespace, body["slug"])
        if existing is None:
            create_meter(namespace, body, meta=meta, usage=usage, now=now, sink_lock=sink_lock, managed=True)
            created.append(body["slug"])
            continue
        want = build_meter(body, now)
        if (want.aggregation, want.event_type, want.value_property, want.group_by) != (
                existing.aggregation, existing.event_type, existing.value_property, existing.group_by):
            raise ValidationFailed(
                f"config meter {body['slug']!r} differs from the stored meter of that slug; "
                "meters are immutable once created (use a new slug)",
                [{"field": f"meters[{i}]", "message": "differs from the stored definition"}])
    return created
