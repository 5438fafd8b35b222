"""Resource ids: ULIDs, as OpenMeter uses (`^[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$`)."""

from __future__ import annotations

import hashlib
import re

from ulid import ULID

ULID_RE = re.compile(r"^[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$")


def new_id() -> str:
    return str(ULID())


def is_ulid(value: str) -> bool:
    return bool(ULID_RE.fullmatch(value))  # (match took an id with a newline after it: `$` matches before one)


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def derived_id(anchor: str, *parts: str) -> str:
    """A stable ULID-shaped id for a part of a resource (a subscription's phase or item): the anchor ULID's time
    (its first 10 characters) and 16 characters of the SHA-256 of the parts, so the same parts always give the same
    id and it passes OpenMeter's id pattern."""
    digest = int.from_bytes(hashlib.sha256("\x1f".join((anchor, *parts)).encode()).digest()[:10], "big")
    tail = "".join(_CROCKFORD[(digest >> (5 * i)) & 31] for i in reversed(range(16)))
    head = anchor[:10].upper() if is_ulid(anchor) else "0" * 10
    return head + tail
