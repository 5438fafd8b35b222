"""Ingestion receipts (issue 21 item 3): `POST /api/v1/events` with `Prefer: return=representation` ingests as
ever and answers a receipt (billow.domain.receipts), kept in the meta store for `GET /api/v1/events/receipts/{id}`.

Duplicates are known at ingest from the usage store's dedup ledger (UsageStore.written_keys, one point look-up
per key), read before the batch is published: an event stored already, or repeated in the batch, is a duplicate;
the sink stores none of them again (its own dedup). Two sends of one new batch at the same instant may both report
it accepted: the ledger is read before either is stored; still only one copy is counted."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from billow.domain import receipts as rules
from billow.errors import NotFound
from billow.ids import new_id
from billow.ports import EventBus, MetaStore, UsageStore
from billow.services.ingest import InvoicedLookup, ingest_events


def _key(raw: Any) -> tuple[str, str] | None:
    if isinstance(raw, dict) and isinstance(raw.get("source"), str) and isinstance(raw.get("id"), str):
        return raw["source"], raw["id"]
    return None  # not a valid event: ingest refuses the batch before a receipt is made


def ingest_with_receipt(namespace: str, raws: list[Any], *, meta: MetaStore, bus: EventBus, usage: UsageStore,
                        now: datetime, invoiced: InvoicedLookup | None = None, checked: bool = False) -> dict[str, Any]:
    """Ingest `raws` (the EventRows services.ingest.decode_common gave, when `checked`) and make their receipt."""
    # An EventRow is (index, id, source, type, subject, time, data): its key is (source, id).
    keys = [(r[2], r[1]) for r in raws] if checked else [k for k in map(_key, raws) if k is not None]
    stored, _ = usage.written_keys(namespace, list(dict.fromkeys(keys)))  # each key once, in batch order
    duplicates = rules.duplicates_of(keys, stored)
    result = ingest_events(namespace, raws, meta=meta, bus=bus, now=now, invoiced=invoiced,
                           checked=checked)  # a bad batch: no receipt
    doc = rules.receipt(new_id(), keys, duplicates, now)
    if result.ignored:  # events a meter ignored (ingestionPolicy.lateInvoiced): stored, counted nowhere there
        doc["ignored"] = [{k: x[k] for k in ("source", "id", "meter", "message")} for x in result.ignored]
    meta.put_receipt(namespace, doc, now)
    return doc


def get_receipt(namespace: str, receipt_id: str, *, meta: MetaStore) -> dict[str, Any]:
    doc = meta.get_receipt(namespace, receipt_id)
    if doc is None:
        raise NotFound(f"receipt {receipt_id!r} not found")
    return doc
