"""Meter query (GET and POST /api/v1/meters/{meterIdOrSlug}/query) with OpenMeter's parameters and shape."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from billow import jsonx
from billow.domain.fields import not_null
from billow.domain.meters import GROUP_KEY_RE, Meter
from billow.domain.usage import AggRow, GroupFilter, UsageQuery, final_value
from billow.errors import ValidationFailed
from billow.ports import MetaStore, UsageStore
from billow.services.meters import get_meter
from billow.timeutil import WINDOW_SIZES, parse_rfc3339, window_end, zone

FILTER_OPS = ("$eq", "$ne", "$in", "$nin", "$like", "$nlike", "$ilike", "$nilike", "$gt", "$gte", "$lt", "$lte")
_DEEP_RE = re.compile(r"^filterGroupBy\[([^\[\]]+)\]$")
MAX_LIST = 100
MAX_FILTER_DEPTH = 16  # $and / $or nesting; deeper is refused, not recursed into (a 3,000-deep one was a 500)
# A filter is an OR of at most MAX_ALTERNATIVES ANDs holding at most MAX_FILTER_TERMS comparisons in all, checked
# before each expansion is built: a $and of 5,000 comparisons was a 500 (the statement over ClickHouse's 256 KiB
# max_query_size), a $and of 24 two-way $or a 2**24-way expansion (a minute and gigabytes before the 400).
MAX_ALTERNATIVES = 256
MAX_FILTER_TERMS = 1024
LIKE_OPS = ("$like", "$nlike", "$ilike", "$nilike")
COLUMNS = "_columns"  # key of a query result that says what its rows are grouped by (see api.present.query_csv)


@dataclass(slots=True)
class QueryParams:
    start: datetime | None = None
    end: datetime | None = None
    window_size: str | None = None
    window_tz: str = "UTC"
    subjects: list[str] | None = None
    customer_ids: list[str] | None = None
    group_by: list[str] | None = None
    filters: list[list[GroupFilter]] | None = None
    filter_fields: dict[str, str] | None = None  # groupBy key -> the parameter that filtered on it (for errors)


_bad = ValidationFailed.at


def _one(qs: dict[str, list[str]], name: str) -> str | None:
    values = qs.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise _bad(name, "given more than once")
    return values[0]


def _list(value: Any, field: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _bad(field, "must be a list of strings")
    if len(value) > MAX_LIST:
        raise _bad(field, f"at most {MAX_LIST} values")
    return value


def parse_filters(raw: Any, field: str = "advancedMeterGroupByFilters") -> list[list[GroupFilter]]:
    """{key: FilterString} -> OR-of-ANDs. FilterString may nest $and / $or of FilterStrings for one key."""
    if not isinstance(raw, dict):
        raise _bad(field, "must be an object of groupBy key -> filter")
    conj: list[list[GroupFilter]] = [[]]
    for key, spec in raw.items():
        conj = _product(conj, _filter_alternatives(key, spec, f"{field}.{key}", field), field)
    return [c for c in conj if c] or []


def _product(left: list[list[GroupFilter]], right: list[list[GroupFilter]], root: str) -> list[list[GroupFilter]]:
    """Every alternative of `left` ANDed with every one of `right`, refused as too complex before it is built when it
    would have more than MAX_ALTERNATIVES alternatives or MAX_FILTER_TERMS comparisons."""
    terms = len(right) * sum(map(len, left)) + len(left) * sum(map(len, right))
    if len(left) * len(right) > MAX_ALTERNATIVES or terms > MAX_FILTER_TERMS:
        raise _bad(root, "filter too complex")
    return [a + b for a in left for b in right]


def _filter_alternatives(key: str, spec: Any, field: str, root: str, depth: int = 0) -> list[list[GroupFilter]]:
    if not isinstance(spec, dict) or not spec:
        raise _bad(field, "must be a non-empty FilterString object")
    alts: list[list[GroupFilter]] = [[]]
    for op, value in spec.items():
        if op in ("$and", "$or"):
            alts = _product(alts, _nested_alternatives(key, op, value, field, root, depth), root)
        elif op in FILTER_OPS:
            if value is None:
                continue
            alts = _product(alts, [[GroupFilter(key, op, _operand(op, value, field))]], root)
        else:
            raise _bad(f"{field}.{op}", f"unknown operator; use one of {', '.join(FILTER_OPS)}, $and, $or")
    return alts


def _nested_alternatives(key: str, op: str, value: Any, field: str, root: str,
                         depth: int) -> list[list[GroupFilter]]:
    """The alternatives of an `$or` (any one of its filters) or an `$and` (all of them), at most
    MAX_FILTER_DEPTH deep."""
    if not isinstance(value, list) or not value:
        raise _bad(f"{field}.{op}", "must be a non-empty list of filters")
    if depth >= MAX_FILTER_DEPTH:
        raise _bad(root, f"$and / $or nested deeper than {MAX_FILTER_DEPTH}")
    options: list[list[GroupFilter]] = [] if op == "$or" else [[]]
    for i, v in enumerate(value):
        sub = _filter_alternatives(key, v, f"{field}.{op}[{i}]", root, depth + 1)
        if op == "$and":
            options = _product(options, sub, root)
            continue
        options += sub
        if len(options) > MAX_ALTERNATIVES or sum(map(len, options)) > MAX_FILTER_TERMS:
            raise _bad(root, "filter too complex")
    return options


def _operand(op: str, value: Any, field: str) -> Any:
    """The value of a comparison: a list for $in / $nin, else a string (a LIKE pattern not ending in an unescaped
    backslash)."""
    if op in ("$in", "$nin"):
        return _list(value, f"{field}.{op}")
    if not isinstance(value, str):
        raise _bad(f"{field}.{op}", "must be a string")
    if op in LIKE_OPS and (len(value) - len(value.rstrip("\\"))) % 2:
        raise _bad(f"{field}.{op}", "a LIKE pattern may not end in an unescaped backslash (write \\\\ for one)")
    return value


def params_from_query_string(qs: dict[str, list[str]]) -> QueryParams:
    p = QueryParams()
    if (v := _one(qs, "from")) is not None:
        p.start = parse_rfc3339(v, "from")
    if (v := _one(qs, "to")) is not None:
        p.end = parse_rfc3339(v, "to")
    p.window_size = _one(qs, "windowSize")
    if (v := _one(qs, "windowTimeZone")) is not None:
        p.window_tz = v
        zone(v)
    if "subject" in qs:
        p.subjects = _list(qs["subject"], "subject")
    if "filterCustomerId" in qs:
        p.customer_ids = _list(qs["filterCustomerId"], "filterCustomerId")
    if "groupBy" in qs:
        p.group_by = _list(qs["groupBy"], "groupBy")
    filters: dict[str, Any] = {}
    fields: dict[str, str] = {}
    if (v := _one(qs, "advancedMeterGroupByFilters")) is not None:
        try:
            adv = jsonx.loads(v)
        except (jsonx.JSONDecodeError, ValueError, TypeError, RecursionError, ArithmeticError):  # + InvalidOperation
            raise _bad("advancedMeterGroupByFilters", "must be a JSON object of groupBy key -> filter") from None
        if not isinstance(adv, dict):
            raise _bad("advancedMeterGroupByFilters", "must be a JSON object of groupBy key -> filter")
        if bad := jsonx.lone_surrogates(v, adv):
            raise _bad("advancedMeterGroupByFilters", f"{bad[0]}: contains a lone UTF-16 surrogate (not valid Unicode)")
        filters.update(adv)
        fields.update(dict.fromkeys(adv, "advancedMeterGroupByFilters"))
    for name, values in qs.items():
        if not name.startswith("filterGroupBy"):
            continue
        m = _DEEP_RE.match(name)
        if not m:
            raise _bad("filterGroupBy", f"{name[:64]!r}: write filterGroupBy[key]=value")
        # deprecated filterGroupBy[key]=value: equality, ANDed with any advanced filter on the same key
        key = m.group(1)
        _and(filters, key, {"$in": values} if len(values) > 1 else {"$eq": values[0]})
        fields[key] = name
    if filters:
        p.filters = parse_filters(filters)
        p.filter_fields = fields
    return p


def group_by_subjects(p: QueryParams) -> QueryParams:
    """OpenMeter's meter query: the `subject` parameter both filters and groups by subject (one row per subject),
    as if `groupBy=subject` were also given."""
    if p.subjects is not None and "subject" not in (p.group_by or []):
        p.group_by = [*(p.group_by or []), "subject"]
    return p


def _and(filters: dict[str, Any], key: str, spec: Any) -> None:
    """Add `spec` for `key`; both apply when the key is already filtered (neither replaces the other)."""
    filters[key] = {"$and": [filters[key], spec]} if key in filters else spec


# OpenMeter's MeterQueryRequest: none of its fields nullable (a null is a 400 there, never the field left out).
QUERY_BODY_FIELDS = ("clientId", "from", "to", "windowSize", "windowTimeZone", "subject", "filterCustomerId",
                     "filterGroupBy", "advancedMeterGroupByFilters", "groupBy")


def params_from_body(body: Any) -> QueryParams:
    if not isinstance(body, dict):
        raise _bad("", "query must be a JSON object")
    not_null(body, QUERY_BODY_FIELDS)
    p = QueryParams()
    if body.get("from") is not None:
        p.start = parse_rfc3339(_str(body["from"], "from"), "from")
    if body.get("to") is not None:
        p.end = parse_rfc3339(_str(body["to"], "to"), "to")
    p.window_size = body.get("windowSize")
    if p.window_size is not None and p.window_size not in WINDOW_SIZES:
        raise _bad("windowSize", f"must be one of {', '.join(WINDOW_SIZES)}")
    if body.get("windowTimeZone") is not None:
        zone(body["windowTimeZone"])
        p.window_tz = body["windowTimeZone"]
    for attr, name in (("subjects", "subject"), ("customer_ids", "filterCustomerId"), ("group_by", "groupBy")):
        if body.get(name) is not None:
            setattr(p, attr, _list(body[name], name))
    filters: dict[str, Any] = {}
    if body.get("filterGroupBy") is not None:
        fg = body["filterGroupBy"]
        if not isinstance(fg, dict):
            raise _bad("filterGroupBy", "must be an object of key -> list of values")
        for k, vals in fg.items():
            filters[k] = {"$in": _list(vals, f"filterGroupBy.{k}")}
    fields = {k: f"filterGroupBy.{k}" for k in filters}
    if body.get("advancedMeterGroupByFilters") is not None:
        adv = body["advancedMeterGroupByFilters"]
        if not isinstance(adv, dict):
            raise _bad("advancedMeterGroupByFilters", "must be an object of groupBy key -> filter")
        for k, spec in adv.items():
            _and(filters, k, spec)
            fields.setdefault(k, "advancedMeterGroupByFilters")
    if filters:
        p.filters = parse_filters(filters)
        p.filter_fields = fields
    return p


def _str(v: Any, field: str) -> str:
    if not isinstance(v, str):
        raise _bad(field, "must be an RFC 3339 date-time string")
    return v


def usage_query(namespace: str, meter: Meter, p: QueryParams, *, meta: MetaStore) -> UsageQuery:
    """The usage store's query for `meter` with the meter query's parameters, checked (a 400 names the field)."""
    if p.window_size is not None and p.window_size not in WINDOW_SIZES:
        raise _bad("windowSize", f"must be one of {', '.join(WINDOW_SIZES)}")
    zone(p.window_tz)
    if p.start is not None and p.end is not None and p.start > p.end:
        raise _bad("from", "must not be after to")
    by_subject, keys = _group_by(meter, p)
    _check_filter_keys(meter, p)
    subjects, subject_customers = _subjects_of_customers(namespace, p, meta)
    return UsageQuery(
        namespace=namespace, meter_id=meter.id, aggregation=meter.aggregation, start=p.start, end=p.end,
        window_size=p.window_size, window_tz=p.window_tz, subjects=subjects, group_by=keys, by_subject=by_subject,
        subject_customers=subject_customers, filters=p.filters or [],
    )


def query_meter(namespace: str, id_or_slug: str, p: QueryParams, *, meta: MetaStore, usage: UsageStore) -> dict[str, Any]:
    meter = get_meter(namespace, id_or_slug, meta=meta)
    query = usage_query(namespace, meter, p, meta=meta)
    tz = zone(p.window_tz)
    keys, by_subject, subject_customers = query.group_by, query.by_subject, query.subject_customers
    rows = usage.aggregate(query)
    # one window end per window start, however many groups share it
    ends = engine_window_ends(usage, (r.window_start for r in rows), p.window_size, p.window_tz)
    out: dict[str, Any] = {"data": [_row_json(r, meter, p, tz, keys, ends) for r in rows]}
    # what the rows are grouped by, for the CSV form's columns (not part of the JSON answer)
    out[COLUMNS] = {"subject": by_subject, "customerId": subject_customers is not None, "groupBy": keys}
    if p.start is not None:
        out["from"] = p.start
    if p.end is not None:
        out["to"] = p.end
    if p.window_size is not None:
        out["windowSize"] = p.window_size
    return out


def _group_by(meter: Meter, p: QueryParams) -> tuple[bool, list[str]]:
    """`groupBy` without repeats: whether it groups by subject, and the meter's groupBy keys it names (each must
    be one)."""
    group_by = list(dict.fromkeys(p.group_by or []))
    keys = [k for k in group_by if k != "subject"]
    for k in keys:
        if not GROUP_KEY_RE.match(k) or k not in meter.group_by:
            raise _bad("groupBy", f"{k!r} is not a groupBy key of meter {meter.slug!r} (has: {sorted(meter.group_by)})")
    return "subject" in group_by, keys


def _check_filter_keys(meter: Meter, p: QueryParams) -> None:
    """Every group filter names a groupBy key of the meter (the error names the parameter it came from)."""
    for conj in p.filters or []:
        for f in conj:
            if f.key not in meter.group_by:
                raise _bad((p.filter_fields or {}).get(f.key, "advancedMeterGroupByFilters"),
                           f"{f.key!r} is not a groupBy key of meter {meter.slug!r}")


def _subjects_of_customers(namespace: str, p: QueryParams,
                           meta: MetaStore) -> tuple[list[str] | None, dict[str, str] | None]:
    """The subjects to query and, with `filterCustomerId`, each subject's customer: the customers' usage-attribution
    subjects (narrowed by `subject` when given). Without it: `subject` as given, no customers."""
    if p.customer_ids is None:
        return p.subjects, None
    resolved: dict[str, str] = {}
    for cid in p.customer_ids:
        cust = meta.get_customer(namespace, cid)
        if cust is None:
            raise _bad("filterCustomerId", f"customer {cid!r} not found")
        for key in cust.get("usageAttribution", {}).get("subjectKeys", []):
            resolved[key] = cust["id"]
    allowed = set(resolved)
    subjects = [s for s in p.subjects if s in allowed] if p.subjects is not None else sorted(allowed)
    return subjects, resolved


def engine_window_ends(usage: UsageStore, starts: Iterable[datetime | None], size: str | None,
                       tz: str) -> dict[datetime, datetime]:
    """The ends of the windows (HOUR, DAY, MONTH) at `starts`, outside UTC, by the store's calendar, which drew
    their starts (a window end from Python's time-zone data can disagree: America/Vancouver in late 2026; chdb's
    hour after Lord Howe's half-hour DST change is half an hour). Empty otherwise: the caller computes them
    (timeutil.window_end) as they come."""
    if size not in ("HOUR", "DAY", "MONTH") or tz == "UTC":
        return {}
    return usage.window_ends(sorted({s for s in starts if s is not None}), size, tz)


def _row_json(r: AggRow, meter: Meter, p: QueryParams, tz: ZoneInfo, keys: list[str],
              ends: dict[datetime, datetime]) -> dict[str, Any]:
    """One row of the answer: its window (the query's span, else the first and last event's times, when not
    windowed), value, subject, groupBy values and customer."""
    ws: datetime | None
    we: datetime | None
    if r.window_start is not None:
        assert p.window_size is not None
        ws = r.window_start
        we = ends.get(ws)
        if we is None:
            we = ends[ws] = window_end(ws, p.window_size, tz)
    else:
        ws = p.start or r.first_time
        we = p.end or r.last_time
    item: dict[str, Any] = {
        "value": final_value(meter.aggregation, r),
        "windowStart": ws, "windowEnd": we,
        "subject": r.subject,
        "groupBy": {k: r.groups.get(k) for k in keys},
    }
    if r.customer_id:
        item["customerId"] = r.customer_id
    return item


