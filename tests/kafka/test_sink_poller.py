"""The MSK trigger's stand-in (KafkaSinkPoller) with batch records (issue 17): a record now carries a partition's
share of an ingest batch (up to 900 kB), so a poll of many records is handed to the usage sink in invocations of at
most Lambda's payload limit, as the MSK trigger does; a failed invocation is delivered again from its own first
offsets (what came before it is committed, what comes after it is not lost)."""

from __future__ import annotations

import json
from contextlib import nullcontext
from typing import Any

from billow.adapters.kafka import MSK_PAYLOAD_BYTES, KafkaSinkPoller, client_config
from tests.kafka.conftest import Pipeline
from tests.support.usage import tokens_events, truth


def padded(ids: range) -> list[dict[str, Any]]:
    events = tokens_events(ids)
    for e in events:
        e["data"]["note"] = "n" * 1000
    return events


def test_a_backlog_goes_to_the_sink_in_invocations_within_lambdas_payload_limit(pipeline: Pipeline) -> None:
    events = [padded(range(i, i + 2500)) for i in range(0, 7500, 2500)]  # ~9 MB of events
    for batch in events:
        assert pipeline.ingest(batch)["statusCode"] == 204
    sizes: list[int] = []
    poller = pipeline.poller(batch_size=5000, batch_window_s=1.0,
                             before_commit=lambda ev: sizes.append(len(json.dumps(ev))))
    pipeline.drain(poller, 7500)
    assert len(sizes) >= 2 and max(sizes) <= MSK_PAYLOAD_BYTES, sizes
    assert pipeline.total() == truth([e for b in events for e in b])
    counts = pipeline.container.metrics.snapshot()
    assert counts["sink_stored"] == 7500 and counts.get("sink_duplicates", 0) == 0


def test_a_failed_invocation_comes_again_from_its_own_first_offsets(pipeline: Pipeline) -> None:
    from functions.usage_sink.handler import lambda_handler

    events = [padded(range(i, i + 2500)) for i in range(0, 7500, 2500)]
    for batch in events:
        assert pipeline.ingest(batch)["statusCode"] == 204
    calls: list[int] = []

    def deliver(ev: dict[str, Any]) -> Any:
        calls.append(len(json.dumps(ev)))
        if len(calls) == 2:  # the second invocation fails before it stores anything
            raise ConnectionError("the usage store is away (played by the test)")
        return lambda_handler(ev, None)  # type: ignore[arg-type]

    poller = KafkaSinkPoller(client_config(pipeline.bootstrap), [pipeline.topic], deliver,
                             group=f"chunks-{pipeline.namespace}", session_timeout_ms=2000, lock=nullcontext,
                             batch_size=5000, batch_window_s=1.0)
    pipeline.pollers.append(poller)
    failed = 0
    while poller.events < 7500 and len(calls) < 60:
        try:
            poller.poll_once()
        except ConnectionError:
            failed += 1
    assert failed == 1 and poller.failures == 1
    assert pipeline.total() == truth([e for b in events for e in b])
    counts = pipeline.container.metrics.snapshot()
    # nothing of the first invocation (committed) came again, nothing after the failed one was skipped
    assert counts["sink_stored"] == 7500 and counts.get("sink_duplicates", 0) == 0
