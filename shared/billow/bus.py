"""The bus contract shared by every host: topic names and the `aws:kafka` event the usage sink receives.

Production: ingest publishes to MSK and Lambda's MSK event source mapping hands batches to the usage
sink. Elsewhere a stand-in (the in-process bus, or the Kafka poller for a real broker) builds the very
same event, so the sink handler cannot tell the hosts apart."""

from __future__ import annotations

import base64
import time
import zlib
from collections.abc import Iterable
from typing import Any, NamedTuple

import msgspec

PARTITIONS = 4


class BusRecord(NamedTuple):
    topic: str
    partition: int
    offset: int
    key: bytes
    value: bytes
    timestamp_ms: int = 0


def topic_for(namespace: str) -> str:
    return f"billow.{namespace}.events"


def namespace_of(topic: str) -> str:
    if not (topic.startswith("billow.") and topic.endswith(".events")) or len(topic) <= len("billow..events"):
        raise ValueError(f"not a billow events topic: {topic!r}")
    return topic[len("billow."):-len(".events")]


def msk_event(batch: Iterable[BusRecord], bootstrap: str = "local",
              source_arn: str = "arn:aws:kafka:local:000000000000:cluster/billow/local") -> dict[str, Any]:
    """Records -> the payload Lambda's MSK trigger delivers (records grouped by "topic-partition")."""
    records: dict[str, list[dict[str, Any]]] = {}
    now_ms = int(time.time() * 1000)
    for r in batch:
        records.setdefault(f"{r.topic}-{r.partition}", []).append({
            "topic": r.topic, "partition": r.partition, "offset": r.offset,
            "timestamp": r.timestamp_ms or now_ms, "timestampType": "CREATE_TIME",
            "key": base64.b64encode(r.key).decode(), "value": base64.b64encode(r.value).decode(), "headers": [],
        })
    return {"eventSource": "aws:kafka", "eventSourceArn": source_arn, "bootstrapServers": bootstrap,
            "records": records}


# -- batch records ------------------------------------------------------------------------------------------------
# Ingest hands the bus one record per partition per batch (not one per event): a JSON object
#   {"billowBatch": 1, "ingestedAt": RFC 3339, "meters": [ids of the meters ingest valued the events with],
#    "events": [[id, source, type, subject, time (epoch ms), data (JSON) or null,
#                [[meter id, value (exact decimal text), text value, {group key: value}], ...]], ...]}
# The events are those ingest validated, with the values it extracted; the sink stores them as they are and values
# only meters created since from `data`. Records of the older shape (one CloudEvent per record) are still read.
BATCH_VERSION = 1
BATCH_PREFIX = b'{"billowBatch":'
# A record holds at most this many bytes of events (Kafka's portable message.max.bytes is 1,000,000); an event over
# it travels alone, and the bus refuses it as today.
BATCH_RECORD_BYTES = 900_000

CarriedValue = tuple[str, str, str, dict[str, str]]
BatchEvent = tuple[str, str, str, str, int, msgspec.Raw, list[CarriedValue]]


class BatchRecord(msgspec.Struct, forbid_unknown_fields=True):
    billowBatch: int
    ingestedAt: str
    meters: list[str]
    events: list[BatchEvent]


_encoder = msgspec.json.Encoder(decimal_format="number")
_decoder = msgspec.json.Decoder(BatchRecord)


def group_of(key: bytes, partitions: int = PARTITIONS) -> int:
    """The partition an event key belongs to: every copy of one (source, id) gets the same one."""
    return zlib.crc32(key) % partitions


def _group_key(group: int) -> bytes:
    """A record key that the in-process bus (crc32) sends to partition `group`; on Kafka every record of a group has
    this one key, so every copy of an event lands on one partition whatever the producer's partitioner."""
    n = 0
    while group_of(b"billow-batch-%d-%d" % (group, n)) != group:
        n += 1
    return b"billow-batch-%d-%d" % (group, n)


GROUP_KEYS = [_group_key(g) for g in range(PARTITIONS)]


def batch_records(ingested_at: str, meter_ids: list[str], events: Iterable[tuple[bytes, list[Any]]],
                  per_event: bool = False) -> list[tuple[bytes, bytes]]:
    """(key, value) records for events given as (event key, [id, source, type, subject, ms, data, values]), `data` a
    JSON object (a dict, encoded with the rest: numbers digit for digit, Decimals as JSON numbers as billow.jsonx writes
    them) or its JSON as msgspec.Raw: one record per partition group, split where a record would pass
    BATCH_RECORD_BYTES. `per_event`: one record per event, keyed by the event's key as records
    always were (a bus whose partitioner is not group_of: Kafka's murmur2)."""
    head = (BATCH_PREFIX + b"%d," % BATCH_VERSION + b'"ingestedAt":' + _encoder.encode(ingested_at)
            + b',"meters":' + _encoder.encode(meter_ids) + b',"events":[')
    if per_event:
        return [(key, head + _encoder.encode(row) + b"]}") for key, row in events]
    groups: dict[int, list[list[Any]]] = {}
    crc32 = zlib.crc32
    for key, row in events:
        g = crc32(key) % PARTITIONS  # group_of
        rows = groups.get(g)
        if rows is None:
            groups[g] = [row]
        else:
            rows.append(row)
    out: list[tuple[bytes, bytes]] = []
    for g in sorted(groups):
        body = _encoder.encode(groups[g])  # the group's events at once: "[event,event,...]", as joined one by one
        if len(body) - 2 <= BATCH_RECORD_BYTES:
            out.append((GROUP_KEYS[g], head[:-1] + body + b"}"))
        else:
            out.extend((GROUP_KEYS[g], head + b",".join(chunk) + b"]}") for chunk in _chunks(groups[g]))
    return out


def _chunks(rows: list[list[Any]]) -> list[list[bytes]]:
    """The encoded events of a group too big for one record, in chunks of at most BATCH_RECORD_BYTES (with their
    commas); an event bigger than that alone in its own."""
    chunks: list[list[bytes]] = [[]]
    size = 0
    for row in rows:
        body = _encoder.encode(row)
        if chunks[-1] and size + len(body) > BATCH_RECORD_BYTES:
            chunks.append([])
            size = 0
        chunks[-1].append(body)
        size += len(body) + 1
    return chunks


def decode_batch(value: bytes) -> BatchRecord | None:
    """The batch record in `value`, or None if it is a record of the older per-event shape. A value that begins as a
    batch record but does not decode as one raises ValueError (a poison record)."""
    if not value.startswith(BATCH_PREFIX):
        return None
    try:
        record = _decoder.decode(value)
    except msgspec.DecodeError as exc:
        raise ValueError(f"not a batch record: {exc}") from None
    if record.billowBatch != BATCH_VERSION:
        raise ValueError(f"batch record version {record.billowBatch} is not {BATCH_VERSION}")
    return record
