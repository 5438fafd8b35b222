"""Pagination of every list endpoint, as OpenMeter's API has it (one module; issue 19 item 6).

OpenMeter's parameters (api/openapi.yaml `Pagination.*`, `LimitOffset.*`):
- `page`: page index, an integer >= 1, default 1 (no upper bound in the spec; OpenMeter reads it as a 64-bit
  integer, so at most 2**63 - 1 here too);
- `pageSize`: 1..1000, default 100;
- `limit`: 1..1000, default 100 (the portal tokens' and events lists: 1..100); `offset`: >= 0, default 0.

A repeated, empty or malformed value of one of these (anything but plain ASCII digits, with an optional leading
`-` so that `page=-1` reads as out of range) is a 400 naming the parameter; it is never read as its first value or
as the default. The three shapes of OpenMeter's lists:
- `page`: the page object `{totalCount, page, pageSize, items}` by page/pageSize (customers, plans, add-ons,
  subscriptions, billing profiles, invoices, notification channels/rules/events);
- `array_or_page`: v1 features, entitlements and grants: the page object when `page` or `pageSize` is given, else
  a plain array by limit/offset;
- `v2_page`: v2 entitlements and grants: the page object by page/pageSize, or by limit/offset when neither of
  those is given (page = offset // limit + 1).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from billow.errors import ValidationFailed
from billow.services.params import one
from billow.timeutil import parse_rfc3339

DEFAULT_PAGE = 1
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
MAX_INDEX = 2**63 - 1  # what OpenMeter's (Go, int64) parameters hold
_INTEGER = re.compile(r"-?[0-9]{1,19}")


def integer(qs: dict[str, list[str]], name: str, default: int, lo: int, hi: int = MAX_INDEX) -> int:
    """The single integer value of `name` within lo..hi, or `default` when absent."""
    raw = one(qs, name)
    if raw is None:
        return default
    if not _INTEGER.fullmatch(raw):
        if re.fullmatch(r"-?[0-9]+", raw):  # plain digits, too many of them
            raise ValidationFailed.at(name, f"must be at most {hi}")
        raise ValidationFailed.at(name, "must be an integer")
    value = int(raw)
    if value < lo:
        raise ValidationFailed.at(name, f"must be at least {lo}" if hi == MAX_INDEX else f"must be between {lo} and {hi}")
    if value > hi:
        raise ValidationFailed.at(name, f"must be at most {hi}" if hi == MAX_INDEX else f"must be between {lo} and {hi}")
    return value


def limit(qs: dict[str, list[str]], default: int = DEFAULT_PAGE_SIZE, maximum: int = MAX_PAGE_SIZE) -> int:
    """`limit` alone (1..maximum), for lists that take no offset (events, portal tokens)."""
    return integer(qs, "limit", default, 1, maximum)


def _page_size(qs: dict[str, list[str]]) -> tuple[int, int]:
    return integer(qs, "page", DEFAULT_PAGE, 1), integer(qs, "pageSize", DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE)


def _limit_offset(qs: dict[str, list[str]]) -> tuple[int, int]:
    return integer(qs, "offset", 0, 0), limit(qs)


@dataclass(frozen=True)
class Ordering:
    """OpenMeter's `orderBy`/`order` of one list: each allowed `orderBy` value -> the dotted path of the field it
    sorts by in the listed JSON items (a path in `times` is compared as an RFC 3339 instant), the default `orderBy`
    (read from OpenMeter's handler for that list) and the id path that breaks ties. Missing values (null) sort
    last ascending and first descending, as PostgreSQL does."""

    fields: Mapping[str, str]
    default: str
    times: frozenset[str] = field(default_factory=frozenset)
    tiebreak: str = "id"
    default_order: str = "ASC"


def _at(item: Any, path: str) -> Any:
    for part in path.split("."):
        item = item.get(part) if isinstance(item, Mapping) else None
    return item


def ordered[T](items: list[T], qs: dict[str, list[str]], order: Ordering) -> list[T]:
    """`items` in the order `orderBy` (one of order.fields, else its default) and `order` (ASC/DESC) ask for, ties
    broken by id; an unknown value of either is a 400 naming it."""
    name = one(qs, "orderBy") or order.default
    if name not in order.fields:
        raise ValidationFailed.at("orderBy", f"must be one of {', '.join(order.fields)}")
    direction = one(qs, "order") or order.default_order
    if direction not in ("ASC", "DESC"):
        raise ValidationFailed.at("order", "must be one of ASC, DESC")
    path = order.fields[name]

    def key(item: T) -> tuple[int, Any, str]:
        value = _at(item, path)
        if value is not None and path in order.times:
            value = value if isinstance(value, datetime) else parse_rfc3339(str(value), name)
        return (1, 0, str(_at(item, order.tiebreak))) if value is None else (0, value, str(_at(item, order.tiebreak)))

    return sorted(items, key=key, reverse=direction == "DESC")


_STAMPS = frozenset({"createdAt", "updatedAt"})
METERS = Ordering({"key": "slug", "name": "name", "aggregation": "aggregation", "createdAt": "createdAt",
                   "updatedAt": "updatedAt"}, "key", _STAMPS)
CUSTOMERS = Ordering({"id": "id", "name": "name", "createdAt": "createdAt"}, "name", _STAMPS)
FEATURES = Ordering({"id": "id", "key": "key", "name": "name", "createdAt": "createdAt", "updatedAt": "updatedAt"},
                    "key", _STAMPS)
ENTITLEMENTS = Ordering({"createdAt": "createdAt", "updatedAt": "updatedAt"}, "createdAt", _STAMPS)
# OpenMeter lists grants by effectiveAt unless asked otherwise (credit/driver/grant.go: grant.OrderByEffectiveAt).
GRANTS = Ordering({"id": "id", "createdAt": "createdAt", "updatedAt": "updatedAt", "effectiveAt": "effectiveAt"},
                  "effectiveAt", _STAMPS | {"effectiveAt"})
# the subject's entitlement grants: the document's default (`updatedAt`)
SUBJECT_GRANTS = Ordering({"id": "id", "createdAt": "createdAt", "updatedAt": "updatedAt"}, "updatedAt", _STAMPS)
_VERSIONED = {"id": "id", "key": "key", "version": "version", "created_at": "createdAt", "updated_at": "updatedAt"}
PLANS = Ordering(_VERSIONED, "id", _STAMPS)
ADDONS = Ordering(_VERSIONED, "id", _STAMPS)
PLAN_ADDONS = Ordering({"id": "addon.id", "key": "addon.key", "version": "addon.version", "created_at": "createdAt",
                        "updated_at": "updatedAt"}, "id", _STAMPS, tiebreak="addon.id")
SUBSCRIPTIONS = Ordering({"activeFrom": "activeFrom", "activeTo": "activeTo"}, "activeFrom",
                         frozenset({"activeFrom", "activeTo"}))
PROFILES = Ordering({"createdAt": "createdAt", "updatedAt": "updatedAt", "default": "default", "name": "name"},
                    "createdAt", _STAMPS)
# `status`: OpenMeter's status column holds the extended status (draft.manual_approval_needed, ...)
INVOICES = Ordering({"customer.name": "customer.name", "issuedAt": "issuedAt", "status": "statusDetails.extendedStatus",
                     "createdAt": "createdAt", "updatedAt": "updatedAt", "periodStart": "period.from"}, "createdAt",
                    _STAMPS | {"issuedAt", "period.from"})


def _object[T](items: list[T], number: int, size: int, start: int) -> dict[str, Any]:
    return {"totalCount": len(items), "page": number, "pageSize": size, "items": items[start: start + size]}


def page[T](items: list[T], qs: dict[str, list[str]], order: Ordering | None = None) -> dict[str, Any]:
    """OpenMeter's page object by page/pageSize over items already in order (or put in `order`'s)."""
    number, size = _page_size(qs)
    items = ordered(items, qs, order) if order is not None else items
    return _object(items, number, size, (number - 1) * size)


def array_or_page[T](items: list[T], qs: dict[str, list[str]],
                     order: Ordering | None = None) -> list[T] | dict[str, Any]:
    """OpenMeter's v1 features/entitlements/grants lists: the page object when page or pageSize is given, else the
    array by limit/offset. Every one of the four that is given is checked."""
    number, size = _page_size(qs)
    offset, count = _limit_offset(qs)
    items = ordered(items, qs, order) if order is not None else items
    if "page" in qs or "pageSize" in qs:
        return _object(items, number, size, (number - 1) * size)
    return items[offset: offset + count]


def v2_page[T](items: list[T], qs: dict[str, list[str]]) -> dict[str, Any]:
    """OpenMeter's v2 page object: by page/pageSize, or by limit/offset when neither page nor pageSize is given."""
    number, size = _page_size(qs)
    offset, count = _limit_offset(qs)
    if "page" not in qs and "pageSize" not in qs and ("limit" in qs or "offset" in qs):
        return _object(items, offset // count + 1, count, offset)
    return _object(items, number, size, (number - 1) * size)
