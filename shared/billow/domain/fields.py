"""Field checks that several request bodies share (entitlements, notification channels and rules)."""

from __future__ import annotations

from collections.abc import Iterable
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


def not_null(body: dict[str, Any], names: Iterable[str], at: str = "") -> None:
    """Optional fields OpenMeter's schema does not make nullable: left out or set. A null is a 400 naming each such
    field (under `at`, an object's own field name and a dot), never taken for the field left out."""
    nulls = [at + name for name in names if name in body and body[name] is None]
    if nulls:
        raise ValidationFailed(f"{nulls[0]}: must not be null (leave it out)",
                               [{"field": name, "message": "must not be null (leave it out)"} for name in nulls])


def metadata(body: dict[str, Any], at: str = "") -> dict[str, str] | None:
    """The optional `metadata` field (OpenMeter's Metadata, nullable): an object of string values (named under `at`)."""
    md = body.get("metadata")
    if md is None:
        return None
    if not isinstance(md, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in md.items()):
        raise ValidationFailed.at(at + "metadata", "must be an object of strings")
    return md


def text(body: dict[str, Any], key: str, at: str = "") -> str | None:
    """An optional string field (e.g. `description`; its length is the served document's, web/body_contract): left
    out or null is None, any other JSON type a 400 naming it (it was stored and shown back as sent)."""
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise ValidationFailed.at(at + key, "must be a string")
    return value


# A subject key is stored in indexed text columns (subjects, customer_subjects, entitlements); PostgreSQL refuses an
# index entry over ~2,700 bytes, so the bound is on bytes as well as characters, the same on every store.
SUBJECT_KEY_MAX_CHARS = 1024
SUBJECT_KEY_MAX_BYTES = 2048


def fits_subject_key(value: str) -> bool:
    return len(value) <= SUBJECT_KEY_MAX_CHARS and len(value.encode("utf-8", "surrogatepass")) <= SUBJECT_KEY_MAX_BYTES


def subject_key(value: str, field: str) -> str:
    """A subject key within what every store can index: at most 1024 characters and 2048 bytes of UTF-8, no NUL."""
    if not fits_subject_key(value):
        raise ValidationFailed.at(field, f"at most {SUBJECT_KEY_MAX_CHARS} characters and {SUBJECT_KEY_MAX_BYTES} "
                                         "bytes of UTF-8")
    if "\x00" in value:
        raise ValidationFailed.at(field, "must not contain NUL (U+0000)")
    return value
