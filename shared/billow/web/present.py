"""Resource -> JSON shapes of OpenMeter's v1 API, and the CSV form of a meter query."""

from __future__ import annotations

import csv
import io
from decimal import Decimal
from typing import Any

from billow.domain.meters import Meter
from billow.jsonx import plain_decimal
from billow.services.query import COLUMNS
from billow.timeutil import format_rfc3339


def meter_json(m: Meter) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": m.id, "slug": m.slug, "name": m.name, "aggregation": m.aggregation, "eventType": m.event_type,
        "groupBy": m.group_by, "createdAt": m.created_at, "updatedAt": m.updated_at,
    }
    if m.description is not None:
        out["description"] = m.description
    if m.value_property:
        out["valueProperty"] = m.value_property
    if m.event_from is not None:
        out["eventFrom"] = m.event_from
    if m.metadata is not None:
        out["metadata"] = m.metadata
    if m.deleted_at is not None:
        out["deletedAt"] = m.deleted_at
    if not m.policy.is_default:  # Billow's ingestionPolicy: shown once set (the defaults are documented)
        out["ingestionPolicy"] = m.policy.to_json()
    return out


def subject_json(s: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in s.items() if v is not None}


def query_json(result: dict[str, Any]) -> dict[str, Any]:
    result.pop(COLUMNS, None)
    for row in result["data"]:
        row["value"] = plain_decimal(row["value"])
    return result


def query_csv(result: dict[str, Any]) -> str:
    """OpenMeter's CSV columns: window_start, window_end, then subject (when grouped by it), customer_id (when
    filtered by customer), the groupBy keys in the order asked, and value, written exactly (Billow's Decimal,
    not OpenMeter's six-place float)."""
    rows = result["data"]
    cols = result.get(COLUMNS) or {"subject": False, "customerId": False, "groupBy": []}
    keys: list[str] = cols["groupBy"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["window_start", "window_end", *(["subject"] if cols["subject"] else []),
                *(["customer_id"] if cols["customerId"] else []), *keys, "value"])
    for r in rows:
        value: Decimal = plain_decimal(r["value"])
        w.writerow([format_rfc3339(r["windowStart"]) if r["windowStart"] else "",
                    format_rfc3339(r["windowEnd"]) if r["windowEnd"] else "",
                    *([r["subject"] or ""] if cols["subject"] else []),
                    *([r.get("customerId", "")] if cols["customerId"] else []),
                    *[r["groupBy"].get(k) or "" for k in keys], format(value, "f")])
    return buf.getvalue()
