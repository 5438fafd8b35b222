"""Field checks that several request bodies share (entitlements, notification channels and rules)."""

from __future__ import annotations

from typing import Any

from billow.errors import ValidationFailed


def flag(body: dict[str, Any], key: str, default: bool = False) -> bool:
    """An optional boolean field: absent or null is `default`; anything but true/false is a 400 naming it."""
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ValidationFailed.at(key, "must be true or false")
    return value


def metadata(body: dict[str, Any]) -> dict[str, str] | None:
    """The optional `metadata` field: an object of string values."""
    md = body.get("metadata")
    if md is None:
        return None
    if not isinstance(md, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in md.items()):
        raise ValidationFailed.at("metadata", "must be an object of strings")
    return md
