"""Query-string parameters of list and read endpoints: a malformed value of a known parameter is a 400 naming
it, never silently read as the default (includeDeleted=yes was false; a repeated parameter used its first value)."""

from __future__ import annotations

from collections.abc import Sequence

from billow.errors import ValidationFailed

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
