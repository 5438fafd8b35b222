"""Usage sink Lambda (MSK trigger): decode records, store usage exactly once, dead-letter what is unreadable.
One bad record never fails the batch; a store outage does (so the batch is delivered again)."""

from __future__ import annotations

import os
from typing import Any

from aws_lambda_powertools import Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes import KafkaEvent, event_source
from aws_lambda_powertools.utilities.typing import LambdaContext

from billow import heap
from billow.bootstrap import container
from billow.bus import namespace_of
from billow.services.sink import LATE_AFTER, SinkRecord, sink_batch
from functions.observability import KAFKA_BATCH, lambda_entry

metrics = Metrics(namespace="Billow", service="usage_sink")
IN_LAMBDA = bool(os.environ.get("AWS_LAMBDA_FUNCTION_NAME"))
_settled: list[bool] = []  # billow.heap.settle() done in this process


@lambda_entry(KAFKA_BATCH)
@event_source(data_class=KafkaEvent)
def lambda_handler(event: KafkaEvent, context: LambdaContext | None) -> dict[str, Any]:
    c = container()
    if not _settled:  # once per cold start, the container built: its objects out of the collector's scans
        _settled.append(True)
        heap.settle()
    records = []
    bad: list[dict[str, Any]] = []
    for rec in event.records:
        where = f"{rec.topic}/{rec.partition}/{rec.offset}"
        try:
            records.append(SinkRecord(namespace_of(rec.topic), rec.decoded_value, where))
        except ValueError as exc:
            bad.append({"where": where, "reason": str(exc)})
    if bad:
        c.dead_letters(bad)
    now = c.clock.now()
    result = sink_batch(records, usage=c.usage, meta=c.meta, dead_letter=c.dead_letters,
                        late_before=now - LATE_AFTER,
                        on_late=lambda ns, earliest: c.entitlements.usage_arrived_late(ns, earliest, now),
                        listener=c.balance_cache)
    counts = {"stored": result.stored, "duplicates": result.duplicates, "unmatched": result.unmatched,
              "deadLettered": len(result.dead_letters) + len(bad)}
    for name, n in counts.items():
        c.metrics.add(f"sink_{name}", n)
    if IN_LAMBDA:  # CloudWatch EMF, one line per batch
        for name, n in counts.items():
            metrics.add_metric(name=f"Events{name[0].upper()}{name[1:]}", unit=MetricUnit.Count, value=n)
        metrics.flush_metrics()
    return counts
