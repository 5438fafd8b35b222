"""Usage lineage of invoice lines (issue 21): the events behind a usage-priced line and a check that they are still
what was invoiced.

The billing run records on each usage line how it was measured (`lineage`: meter, feature filters, subjects,
period, query time) and a digest of the usage then behind it (billow.domain.lineage). From that:
- `line_events`: the events behind the line (those of its span ingested by its query time; for a correction line,
  those ingested after the line before it and by its own query time), in (source, id) order, a page at a time;
- `verify_line`: the digest recomputed now; if it differs, the events that arrived after the line's query time,
  each with the correction line that billed it (if one did yet)."""

from __future__ import annotations

import base64
import binascii
import csv
import io
import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

from billow.domain.lineage import EMPTY, LineEvent, UsageDigest
from billow.errors import NotFound, ValidationFailed
from billow.ports import BillingStore, UsageStore
from billow.services import pages, params
from billow.services.balances import feature_filters
from billow.timeutil import format_rfc3339, parse_rfc3339

MAX_LIMIT = 1000
bad = ValidationFailed.at


def measurement(feature: dict[str, Any], meter: Any) -> tuple[dict[str, str], dict[str, Any], Any]:
    """How a usage line is measured, as its lineage records it: the meter ({id, slug}), the feature's group-by
    filters as the feature states them, and those filters parsed for the usage store (feature_filters)."""
    return ({"id": meter.id, "slug": meter.slug},
            {k: feature.get(k) for k in ("meterGroupByFilters", "advancedMeterGroupByFilters") if feature.get(k)},
            feature_filters(feature))


def _line(namespace: str, invoice_id: str, line_id: str, store: BillingStore) -> tuple[dict[str, Any], dict[str, Any]]:
    """The invoice and the usage line (a detailed line stands for its parent) with its lineage."""
    inv = store.get_invoice(namespace, invoice_id)
    if inv is None or inv.get("deletedAt"):
        raise NotFound(f"invoice {invoice_id} not found")
    for ln in inv.get("lines") or []:
        if ln.get("id") == line_id or any(ch.get("id") == line_id for ch in ln.get("children") or []):
            if not ln.get("lineage"):
                raise NotFound(f"line {line_id} of invoice {invoice_id} has no usage lineage (not a usage-priced line "
                               "of a billing run)")
            return inv, ln
    raise NotFound(f"line {line_id} not found on invoice {invoice_id}")


def _span(lin: dict[str, Any]) -> tuple[datetime, datetime]:
    return parse_rfc3339(lin["period"]["from"], "from"), parse_rfc3339(lin["period"]["to"], "to")


def _behind(lin: dict[str, Any], e: LineEvent) -> bool:
    """Whether `e` is behind the line: ingested by its query time (and after `since`, for a correction)."""
    if e.ingested_at is None:
        return lin.get("since") is None
    if e.ingested_at > parse_rfc3339(lin["queryTime"], "queryTime"):
        return False
    return lin.get("since") is None or e.ingested_at > parse_rfc3339(lin["since"], "since")


def _cursor(raw: str | None) -> tuple[str, str] | None:
    if raw is None:
        return None
    try:
        source, id_ = json.loads(base64.urlsafe_b64decode(raw.encode("ascii") + b"=" * (-len(raw) % 4)))
        return str(source), str(id_)
    except (ValueError, TypeError, UnicodeError, binascii.Error):
        raise bad("cursor", "is not a cursor this list returned (nextCursor)") from None


def _encode(e: LineEvent) -> str:
    raw = json.dumps([e.source, e.id], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def line_events(namespace: str, invoice_id: str, line_id: str, qs: dict[str, list[str]], *, store: BillingStore,
                usage: UsageStore) -> dict[str, Any]:
    """A page of the events behind a usage line: {lineage, items, nextCursor (when more may follow)}."""
    limit = pages.integer(qs, "limit", 100, 1, MAX_LIMIT)
    after = _cursor(params.one(qs, "cursor"))
    _, ln = _line(namespace, invoice_id, line_id, store)
    lin = ln["lineage"]
    start, end = _span(lin)
    filters = feature_filters(lin.get("filters") or {})
    items: list[LineEvent] = []
    more = False
    while True:
        chunk = usage.line_events(namespace, lin["meter"]["id"], lin["subjects"], start, end, filters, after,
                                  limit + 1)
        for e in chunk:
            if _behind(lin, e):
                if len(items) == limit:
                    more = True
                    break
                items.append(e)
        if more or len(chunk) < limit + 1:
            break
        after = (chunk[-1].source, chunk[-1].id)
    page: dict[str, Any] = {"lineId": ln["id"], "lineage": lin, "items": [e.to_json() for e in items]}
    if more:
        page["nextCursor"] = _encode(items[-1])
    return page


def line_events_csv(page: dict[str, Any]) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["source", "id", "subject", "time", "value", "ingested_at"])
    for e in page["items"]:
        w.writerow([e["source"], e["id"], e["subject"], e["time"], e["value"], e["ingestedAt"] or ""])
    return out.getvalue()


def _same_measure(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return (a["meter"]["id"], a["period"], a["subjects"], a.get("filters")) == \
        (b["meter"]["id"], b["period"], b["subjects"], b.get("filters"))


def verify_line(namespace: str, invoice_id: str, line_id: str, *, store: BillingStore, usage: UsageStore,
                now: datetime) -> dict[str, Any]:
    """The line's digest recomputed now: whether the usage behind its measurement changed since it was invoiced and,
    if so, the events that arrived after its query time, each with the correction line that billed it (or null)."""
    inv, ln = _line(namespace, invoice_id, line_id, store)
    lin = ln["lineage"]
    start, end = _span(lin)
    filters = feature_filters(lin.get("filters") or {})
    recorded = UsageDigest.from_json(lin["digest"])
    current = usage.line_digests(namespace, lin["meter"]["id"], start, end, filters,
                                 dict.fromkeys(lin["subjects"], "line")).get("line", EMPTY)
    out: dict[str, Any] = {"invoiceId": inv["id"], "lineId": ln["id"], "lineage": lin, "verifiedAt": format_rfc3339(now),
                           "unchanged": current == recorded, "invoiced": recorded.to_json(), "current": current.to_json(),
                           "arrivedLater": []}
    if current == recorded:
        return out
    qt = parse_rfc3339(lin["queryTime"], "queryTime")
    later = [e for e in usage.line_events(namespace, lin["meter"]["id"], lin["subjects"], start, end, filters, None, None)
             if e.ingested_at is not None and e.ingested_at > qt]
    # Later usage lines of the same measurement (corrections), in order of their query time.
    corrections = []
    customer_id = (inv.get("customer") or {}).get("id")
    for other in store.list_invoices(namespace, customer_ids=[customer_id] if customer_id else None):
        if other.get("deletedAt") or other.get("status") == "gathering":
            continue
        for o in other.get("lines") or []:
            olin = o.get("lineage")
            if olin and o["id"] != ln["id"] and _same_measure(olin, lin) and \
                    parse_rfc3339(olin["queryTime"], "queryTime") > qt:
                corrections.append((parse_rfc3339(olin["queryTime"], "queryTime"), other, o))
    corrections.sort(key=lambda c: c[0])
    for e in later:
        assert e.ingested_at is not None
        billed = next(({"invoiceId": other["id"], "invoiceNumber": other.get("number"), "lineId": o["id"],
                        "queryTime": format_rfc3339(at)}
                       for at, other, o in corrections if e.ingested_at <= at), None)
        out["arrivedLater"].append({**e.to_json(), "billedBy": billed})
    return out


def invoiced_lookup(namespace: str, *, store: Callable[[], BillingStore], meta: Any) -> Callable[[str, str, datetime], tuple[datetime, datetime, str] | None]:
    """For ingest (ingestionPolicy.lateInvoiced): (meter id, subject, time) -> the invoiced period holding it
    (start, end, invoice number) per the lineage of the subject's customer's usage lines, or None. Opens the billing
    store and reads a subject's invoices only on first need (only meters whose policy is not `correct` ask)."""
    periods: dict[str, list[tuple[str, datetime, datetime, str]]] = {}

    def of(subject: str) -> list[tuple[str, datetime, datetime, str]]:
        if subject not in periods:
            out: list[tuple[str, datetime, datetime, str]] = []
            customer = meta.customers_for_subjects(namespace, {subject}).get(subject)
            for inv in store().list_invoices(namespace, customer_ids=[customer]) if customer else []:
                if inv.get("deletedAt") or inv.get("status") in ("gathering", "voided"):
                    continue
                for ln in inv.get("lines") or []:
                    lin = ln.get("lineage")
                    if lin and subject in lin["subjects"]:
                        s, e = _span(lin)
                        out.append((lin["meter"]["id"], s, e, str(inv.get("number") or inv["id"])))
            periods[subject] = out
        return periods[subject]

    def lookup(meter_id: str, subject: str, at: datetime) -> tuple[datetime, datetime, str] | None:
        return next(((s, e, n) for mid, s, e, n in of(subject) if mid == meter_id and s <= at < e), None)

    return lookup
