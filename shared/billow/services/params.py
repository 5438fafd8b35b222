"""Query-string parameters of list and read endpoints: a malformed value of a known parameter is a 400 naming
it, never silently read as the default (includeDeleted=yes was false; a repeated parameter used its first value)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from billow.errors import ValidationFailed
from billow.exact import parse_decimal
from billow.timeutil import parse_rfc3339

bad = ValidationFailed.at


def one(qs: dict[str, list[str]], name: str, *, blank: bool = False) -> str | None:
    """The single value of `name`, or None when absent. Given twice, or empty (unless `blank`), is a 400."""
    values = qs.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise bad(name, "given more than once")
    if not values[0] and not blank:
        raise bad(name, "must not be empty")
    return values[0]


def flag(qs: dict[str, list[str]], name: str, default: bool = False) -> bool:
    """A boolean parameter: exactly `true` or `false`."""
    raw = one(qs, name)
    if raw is None:
        return default
    if raw not in ("true", "false"):
        raise bad(name, "must be true or false")
    return raw == "true"


def choices(qs: dict[str, list[str]], name: str, allowed: Sequence[str]) -> list[str] | None:
    """A repeatable enum parameter: every value one of `allowed`."""
    values = qs.get(name)
    if not values:
        return None
    for v in values:
        if v not in allowed:
            raise bad(name, f"{v[:64]!r} is not one of {', '.join(allowed)}")
    return values


_INTEGER_TEXT = re.compile(r"-?[0-9]{1,19}")


def conform(qs: dict[str, list[str]], name: str, schema: Mapping[str, Any], *, array: bool) -> None:
    """A query parameter as its contract (OpenAPI schema) says: a boolean `true`/`false`, an integer within its
    bounds, one of its enum, a date-time, its pattern and length; an array parameter's every value so. A
    non-array parameter given twice, or empty, is a 400 too (as `one`)."""
    if name not in qs:
        return
    values = qs[name] if array else [one(qs, name, blank=bool(schema.get("minLength") == 0))]
    for value in values:
        if value is None:
            continue
        _conform_value(name, value, schema)


def _conform_value(name: str, value: str, schema: Mapping[str, Any]) -> None:
    kind = schema.get("type")
    if kind == "boolean" and value not in ("true", "false"):
        raise bad(name, "must be true or false")
    if kind == "integer":
        if not _INTEGER_TEXT.fullmatch(value):
            raise bad(name, "must be an integer")
        number = int(value)
        if "minimum" in schema and number < schema["minimum"]:
            raise bad(name, f"must be at least {schema['minimum']}")
        if "maximum" in schema and number > schema["maximum"]:
            raise bad(name, f"must be at most {schema['maximum']}")
    if kind == "number":
        try:
            parse_decimal(value)
        except ValueError as exc:
            raise bad(name, str(exc)) from None
    if "enum" in schema and value not in schema["enum"]:
        raise bad(name, f"{value[:64]!r} is not one of {', '.join(map(str, schema['enum']))}")
    if kind == "string":
        if schema.get("format") == "date-time":
            parse_rfc3339(value, name)
        if "minLength" in schema and len(value) < schema["minLength"]:
            raise bad(name, f"must be at least {schema['minLength']} characters")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            raise bad(name, f"must be at most {schema['maxLength']} characters")
        if "pattern" in schema and re.search(schema["pattern"].replace("$", r"\Z"), value) is None:  # no "\n" at $
            raise bad(name, f"{value[:64]!r} does not match {schema['pattern']}")
