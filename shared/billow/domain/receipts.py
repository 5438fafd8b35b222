"""Ingestion receipts (issue 21 item 3): what `POST /api/v1/events` with `Prefer: return=representation` answers,
and `GET /api/v1/events/receipts/{id}` returns later. Pure: no I/O.

A receipt says how many events of the batch were accepted as new, which were duplicates (already stored, or repeated
earlier in the same batch: their keys), the ingest time, and a digest of the batch: its event count and the SHA-256
over its sorted (source, id) keys (billow.domain.lineage.key_hash), so a resent batch has the same digest as the
original."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from billow.domain.lineage import key_hash
from billow.timeutil import format_rfc3339


def duplicates_of(keys: Sequence[tuple[str, str]], stored: set[tuple[str, str]]) -> list[tuple[str, str]]:
    """The keys of `keys` (in batch order) that are duplicates: stored already, or seen earlier in the batch."""
    seen: set[tuple[str, str]] = set()
    out = []
    for k in keys:
        if k in stored or k in seen:
            out.append(k)
        seen.add(k)
    return out


def receipt(receipt_id: str, keys: Sequence[tuple[str, str]], duplicates: Sequence[tuple[str, str]],
            ingested_at: datetime) -> dict[str, Any]:
    return {"id": receipt_id, "ingestedAt": format_rfc3339(ingested_at), "events": len(keys),
            "accepted": len(keys) - len(duplicates),
            "duplicates": [{"source": s, "id": i} for s, i in duplicates],
            "digest": {"events": len(keys), "hash": f"sha256:{key_hash(keys)}"}}
