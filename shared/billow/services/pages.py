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
from typing import Any

from billow.errors import ValidationFailed
from billow.services.params import one

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


def _object[T](items: list[T], number: int, size: int, start: int) -> dict[str, Any]:
    return {"totalCount": len(items), "page": number, "pageSize": size, "items": items[start: start + size]}


def page[T](items: list[T], qs: dict[str, list[str]]) -> dict[str, Any]:
    """OpenMeter's page object by page/pageSize over items already in order."""
    number, size = _page_size(qs)
    return _object(items, number, size, (number - 1) * size)


def array_or_page[T](items: list[T], qs: dict[str, list[str]]) -> list[T] | dict[str, Any]:
    """OpenMeter's v1 features/entitlements/grants lists: the page object when page or pageSize is given, else the
    array by limit/offset. Every one of the four that is given is checked."""
    number, size = _page_size(qs)
    offset, count = _limit_offset(qs)
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
