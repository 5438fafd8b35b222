"""`GET /api/v2/events` (OpenMeter's listEventsV2): ingested events, newest first (then by source and id), with
OpenMeter's filter (`filter`, a JSON object: `id`, `source`, `subject`, `type` as FilterString; `customerId` as
FilterIDExact; `time`, `ingestedAt` as FilterTime) and cursor pagination (`cursor`, `limit` 1..100, default
100). The cursor is opaque: the position of the last item returned; `nextCursor` is given with every non-empty
page, an empty page ends the list. Every malformed part is a 400 naming it (`filter.subject.$like`).

FilterString: $eq $ne $in $nin $like $nlike $ilike $nilike $gt $gte $lt $lte $and $or (like: SQL LIKE, `%` any
run, `_` one character; ilike case-folded). FilterTime: $gt $gte $lt $lte $and $or with RFC 3339 instants.
FilterIDExact: $in with customer ids (ULIDs): the events of those customers' subjects.

The events are read from the usage store in pages (ports.UsageStore.list_events, by time, newest first) and
filtered here; a time filter's bounds and a subject or customer filter narrow what is read."""

from __future__ import annotations

import base64
import binascii
import json
import operator
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from billow.domain.usage import StoredEvent
from billow.errors import ValidationFailed
from billow.ids import ULID_RE
from billow.ports import MetaStore, UsageStore
from billow.services import pages, params
from billow.timeutil import format_rfc3339, parse_rfc3339

bad = ValidationFailed.at
STRING_FIELDS: Final = ("id", "source", "subject", "type")
TIME_FIELDS: Final = ("time", "ingestedAt")
STRING_OPS: Final = ("$eq", "$ne", "$in", "$nin", "$like", "$nlike", "$ilike", "$nilike", "$gt", "$gte", "$lt", "$lte",
                     "$and", "$or")
TIME_OPS: Final = ("$gt", "$gte", "$lt", "$lte", "$and", "$or")
MAX_LIMIT: Final = 100
Key = tuple[int, str, str]  # (-time in microseconds since the epoch, source, id): the list's order, ascending
Pred = Callable[[Any], bool]
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_US: Final = timedelta(microseconds=1)


def _micros(t: datetime) -> int:
    return (t - _EPOCH) // _US


def _key(s: StoredEvent) -> Key:
    return (-_micros(s.event.time), s.event.source, s.event.id)


def scan(usage: UsageStore, namespace: str, *, subjects: list[str] | None = None, start: datetime | None = None,
         end: datetime | None = None, after: Key | None = None, batch: int = 500) -> Iterator[StoredEvent]:
    """Every stored event in [start, end] (of `subjects`), newest first, each once, from after `after`."""
    top = end
    if after is not None:  # nothing newer than the cursor is wanted
        at = _EPOCH + (-after[0]) * _US
        top = at if top is None else min(top, at)
    while True:
        rows = usage.list_events(namespace, subjects=subjects, start=start, end=top, event_id=None, limit=batch)
        fresh = [r for r in rows if after is None or _key(r) > after]
        yield from fresh
        if len(rows) < batch:
            return
        if fresh:
            after = _key(fresh[-1])
            top = fresh[-1].event.time
        else:  # a whole batch at one instant, all seen: read more of it at once
            batch *= 2


def _like(pattern: str, flags: int = 0) -> re.Pattern[str]:
    return re.compile("".join(".*" if ch == "%" else "." if ch == "_" else re.escape(ch) for ch in pattern),
                      flags | re.DOTALL)


def _string_filter(node: object, field: str) -> Pred:
    if not isinstance(node, dict) or not node:
        raise bad(field, "must be an object of operators such as {\"$eq\": \"value\"}")
    preds: list[Pred] = []
    for op, arg in node.items():
        where = f"{field}.{op}"
        if op not in STRING_OPS:
            raise bad(where, f"unknown operator; one of {', '.join(STRING_OPS)}")
        if op in ("$and", "$or"):
            if not isinstance(arg, list) or not arg:
                raise bad(where, "must be a non-empty list of filters")
            preds.append(_combine(op, [_string_filter(x, f"{where}[{i}]") for i, x in enumerate(arg)]))
            continue
        if arg is None:
            continue  # OpenMeter's operators are nullable: a null one filters nothing
        if op in ("$in", "$nin"):
            if not isinstance(arg, list) or not all(isinstance(x, str) for x in arg):
                raise bad(where, "must be a list of strings")
            preds.append(_member(set(arg), op == "$in"))
            continue
        if not isinstance(arg, str):
            raise bad(where, "must be a string")
        preds.append(_string_op(op, arg))
    return _combine("$and", preds)


def _combine(op: str, preds: list[Pred]) -> Pred:
    if op == "$and":
        return lambda v: all(p(v) for p in preds)
    return lambda v: any(p(v) for p in preds)


def _member(values: set[str], inside: bool) -> Pred:
    return lambda v: (v in values) == inside


_COMPARE: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "$eq": operator.eq, "$ne": operator.ne, "$gt": operator.gt, "$gte": operator.ge, "$lt": operator.lt,
    "$lte": operator.le}


def _compare(op: str, arg: Any) -> Pred:
    fn = _COMPARE[op]
    return lambda v: fn(v, arg)


def _string_op(op: str, arg: str) -> Pred:
    if op in _COMPARE:
        return _compare(op, arg)
    pattern = _like(arg, re.IGNORECASE if op in ("$ilike", "$nilike") else 0)
    wanted = op in ("$like", "$ilike")
    return lambda v: (pattern.fullmatch(v) is not None) == wanted


def _time_filter(node: object, field: str) -> tuple[Pred, datetime | None, datetime | None]:
    """The predicate, and the widest [start, end] it can match (for narrowing what is read)."""
    if not isinstance(node, dict) or not node:
        raise bad(field, "must be an object of operators such as {\"$gte\": \"2026-01-01T00:00:00Z\"}")
    preds: list[Pred] = []
    lo: datetime | None = None
    hi: datetime | None = None
    for op, arg in node.items():
        where = f"{field}.{op}"
        if op not in TIME_OPS:
            raise bad(where, f"unknown operator; one of {', '.join(TIME_OPS)}")
        if op in ("$and", "$or"):
            if not isinstance(arg, list) or not arg:
                raise bad(where, "must be a non-empty list of filters")
            preds.append(_combine(op, [_time_filter(x, f"{where}[{i}]")[0] for i, x in enumerate(arg)]))
            continue
        if arg is None:
            continue
        if not isinstance(arg, str):
            raise bad(where, "must be an RFC 3339 date-time")
        at = parse_rfc3339(arg, where)
        if op in ("$gt", "$gte"):
            lo = at if lo is None else max(lo, at)
        else:
            hi = at if hi is None else min(hi, at)
        preds.append(_compare(op, at))
    return _combine("$and", preds), lo, hi


def _cursor(raw: str | None) -> Key | None:
    if raw is None:
        return None
    try:
        time, source, id_ = json.loads(base64.urlsafe_b64decode(raw.encode("ascii") + b"=" * (-len(raw) % 4)))
        return (-_micros(parse_rfc3339(time, "cursor")), str(source), str(id_))
    except (ValueError, TypeError, UnicodeError, binascii.Error, ValidationFailed):
        raise bad("cursor", "is not a cursor this list returned (nextCursor)") from None


def _encode(s: StoredEvent) -> str:
    raw = json.dumps([format_rfc3339(s.event.time), s.event.source, s.event.id], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def list_events(namespace: str, qs: dict[str, list[str]], *, usage: UsageStore, meta: MetaStore) -> dict[str, Any]:
    limit = pages.integer(qs, "limit", MAX_LIMIT, 1, MAX_LIMIT)
    client_id = params.one(qs, "clientId")
    if client_id is not None and len(client_id) > 36:
        raise bad("clientId", "must be 1 to 36 characters")
    after = _cursor(params.one(qs, "cursor"))
    raw = params.one(qs, "filter")
    try:
        flt = json.loads(raw) if raw is not None else {}
    except ValueError:
        raise bad("filter", "must be a JSON object") from None
    if not isinstance(flt, dict):
        raise bad("filter", "must be a JSON object")
    checks: list[Callable[[StoredEvent], bool]] = []
    wanted: set[str] | None = None  # the subjects the filter can match (None: any)
    start = end = None
    for name, node in flt.items():
        field = f"filter.{name}"
        if name in STRING_FIELDS:
            checks.append(_on(name, _string_filter(node, field)))
            if name == "subject" and (named := _named(node)) is not None:  # read only those subjects' events
                wanted = named if wanted is None else wanted & named
        elif name in TIME_FIELDS:
            tpred, lo, hi = _time_filter(node, field)
            if name == "time":
                start, end = lo, hi
            checks.append(_on(name, tpred))
        elif name == "customerId":
            owned = set(_customer_subjects(namespace, node, field, meta))
            wanted = owned if wanted is None else wanted & owned
        else:
            raise bad(field, f"unknown field; one of {', '.join((*STRING_FIELDS, 'customerId', *TIME_FIELDS))}")
    items: list[StoredEvent] = []
    subjects = sorted(wanted) if wanted is not None else None
    if subjects is None or subjects:
        for s in scan(usage, namespace, subjects=subjects, start=start, end=end, after=after):
            if all(check(s) for check in checks):
                items.append(s)
                if len(items) == limit:
                    break
    page: dict[str, Any] = {"items": listed_events(namespace, items, meta=meta)}
    if items:
        page["nextCursor"] = _encode(items[-1])
    return page


def _named(node: Any) -> set[str] | None:
    """The subjects a (checked) subject filter names at its top level with $eq or $in; None if it names none."""
    if isinstance(node.get("$eq"), str):
        return {node["$eq"]}
    if isinstance(node.get("$in"), list):
        return set(node["$in"])
    return None


def _on(name: str, pred: Pred) -> Callable[[StoredEvent], bool]:
    """The predicate applied to the event's field `name`."""
    if name == "ingestedAt":
        return lambda s: pred(s.ingested_at)
    return lambda s: pred(getattr(s.event, name))


def _customer_subjects(namespace: str, node: object, field: str, meta: MetaStore) -> list[str]:
    if not isinstance(node, dict) or set(node) - {"$in"}:
        raise bad(f"{field}.{next(iter(set(node) - {'$in'}))}" if isinstance(node, dict) else field,
                  "customerId takes only $in, a list of customer ids")
    ids = node.get("$in")
    if ids is None:
        raise bad(f"{field}.$in", "is required: a list of customer ids")
    if not isinstance(ids, list) or not all(isinstance(x, str) and ULID_RE.fullmatch(x) for x in ids):
        raise bad(f"{field}.$in", "must be a list of customer ids (ULIDs)")
    owned: set[str] = set()
    for ref in ids:
        cust = meta.get_customer(namespace, ref)
        if cust is not None:
            owned.update((cust.get("usageAttribution") or {}).get("subjectKeys") or [])
    return sorted(owned)


def ingested_between(usage: UsageStore, namespace: str, *, subjects: list[str] | None, start: datetime | None,
                     end: datetime | None, event_id: str | None, ingested_from: datetime | None,
                     ingested_to: datetime | None, limit: int) -> list[StoredEvent]:
    """`GET /api/v1/events` with OpenMeter's ingestedAtFrom / ingestedAtTo (inclusive): the newest `limit` events that
    pass every filter (`event_id`: a part of the id, as the v1 list reads it)."""
    out: list[StoredEvent] = []
    for s in scan(usage, namespace, subjects=subjects, start=start, end=end):
        if (ingested_from is not None and s.ingested_at < ingested_from) or \
                (ingested_to is not None and s.ingested_at > ingested_to) or \
                (event_id is not None and event_id not in s.event.id):
            continue
        out.append(s)
        if len(out) == limit:
            break
    return out


def listed_events(namespace: str, stored: list[Any], *, meta: MetaStore) -> list[dict[str, Any]]:
    """Events as OpenMeter's event lists show them: the event, when it was ingested, the customer owning its subject
    (`customerId`) and its validation error, if any."""
    customer_of = meta.customers_for_subjects(namespace, {s.event.subject for s in stored}) if stored else {}
    out: list[dict[str, Any]] = []
    for s in stored:
        item: dict[str, Any] = {"event": s.event.to_json(), "ingestedAt": s.ingested_at, "storedAt": s.ingested_at}
        if s.event.subject in customer_of:
            item["customerId"] = customer_of[s.event.subject]
        if s.validation_error:
            item["validationError"] = s.validation_error
        out.append(item)
    return out
