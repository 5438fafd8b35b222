"""Usage lineage of an invoice line (issue 21): how a usage-priced line was measured (meter, feature filters,
subjects, period, query time) and a digest of the usage behind it: the event count, the exact sum of their
values and a SHA-256 over their sorted (source, id) keys. Pure: no I/O.

The key hash is SHA-256 over the keys in (source, id) order (byte order of their UTF-8), each written as
`source NUL id LF`; no usage hashes the empty string. The usage store computes the same (ports.UsageStore.
line_digests), so a digest made at billing time and one made now compare equal exactly when the same events
are behind the line."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from billow.exact import exact_sum
from billow.timeutil import format_rfc3339


@dataclass(frozen=True, slots=True)
class UsageDigest:
    events: int
    sum: Decimal
    hash: str  # hex SHA-256

    def to_json(self) -> dict[str, Any]:
        return {"events": self.events, "sum": plain(self.sum), "hash": f"sha256:{self.hash}"}

    @staticmethod
    def from_json(doc: dict[str, Any]) -> UsageDigest:
        return UsageDigest(int(doc["events"]), Decimal(doc["sum"]), str(doc["hash"]).removeprefix("sha256:"))


EMPTY_HASH = hashlib.sha256(b"").hexdigest()
EMPTY = UsageDigest(0, Decimal(0), EMPTY_HASH)


@dataclass(frozen=True, slots=True)
class LineEvent:
    """One event behind a usage line: its key, subject, time, value for the line's meter and ingest time."""

    source: str
    id: str
    subject: str
    time: datetime
    value: Decimal
    ingested_at: datetime | None

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "id": self.id, "subject": self.subject, "time": format_rfc3339(self.time),
                "value": plain(self.value),
                "ingestedAt": format_rfc3339(self.ingested_at) if self.ingested_at is not None else None}


def key_hash(keys: Iterable[tuple[str, str]]) -> str:
    """SHA-256 (hex) over the keys in (source, id) order, each `source NUL id LF`.

    Python orders strings by code point, which is the byte order of their UTF-8 (UTF-8 keeps code point order), so
    the keys sort as they are, without encoding each twice; they are hashed a slice at a time (a receipt hashes
    every batch: issue 21's budget)."""
    h = hashlib.sha256()
    ordered = sorted(keys)
    for lo in range(0, len(ordered), _HASH_SLICE):
        h.update("".join([f"{s}\0{i}\n" for s, i in ordered[lo:lo + _HASH_SLICE]]).encode())
    return h.hexdigest()


_HASH_SLICE = 8192


def digest(events: Iterable[LineEvent]) -> UsageDigest:
    rows = list(events)
    return UsageDigest(len(rows), exact_sum(e.value for e in rows), key_hash((e.source, e.id) for e in rows))


def plain(value: Decimal) -> str:
    return "0" if value == 0 else format(value.normalize(), "f")


def lineage_json(*, meter: dict[str, str], feature_key: str, filters: Any, subjects: list[str], start: datetime,
                 end: datetime, query_time: datetime, usage: UsageDigest, since: datetime | None) -> dict[str, Any]:
    """What a usage line records (Billow extension `lineage` on the line): `since` is set on a correction line,
    the query time of the line before it (its events are those that arrived after it)."""
    return {"meter": meter, "featureKey": feature_key, "filters": filters, "subjects": sorted(subjects),
            "period": {"from": format_rfc3339(start), "to": format_rfc3339(end)}, "queryTime": format_rfc3339(query_time),
            "since": format_rfc3339(since) if since is not None else None, "digest": usage.to_json()}
