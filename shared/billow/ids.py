"""Resource ids: ULIDs, as OpenMeter uses (`^[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$`)."""

from __future__ import annotations

import re

from ulid import ULID

ULID_RE = re.compile(r"^[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$")


def new_id() -> str:
    return str(ULID())


def is_ulid(value: str) -> bool:
    return bool(ULID_RE.match(value))
