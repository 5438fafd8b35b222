"""Ingest Lambda: POST /api/v1/events (CloudEvents, single or batch) -> validate -> publish -> 204."""

from __future__ import annotations

import logging
from typing import Any

from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEventV2, event_source
from aws_lambda_powertools.utilities.typing import LambdaContext

from billow.bootstrap import container
from billow.errors import Unavailable, UnsupportedMediaType, ValidationFailed
from billow.services.ingest import ingest_events
from billow.services.lineage import invoiced_lookup
from billow.services.receipts import ingest_with_receipt
from billow.web.http import as_caller, guarded, header, json_body, response
from functions.observability import API_GATEWAY, lambda_entry

log = logging.getLogger("billow.ingest")
SINGLE = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
JSON = "application/json"


def _ingest(event: APIGatewayProxyEventV2) -> dict[str, Any]:
    raw = event.raw_event
    ctype = header(raw, "content-type").split(";")[0].strip().lower()
    if ctype not in (SINGLE, BATCH, JSON):
        raise UnsupportedMediaType(
            f"Content-Type must be {SINGLE}, {BATCH} or {JSON}; got {ctype or 'none'!r}")
    body = json_body(raw)
    if ctype == SINGLE and not isinstance(body, dict):
        raise ValidationFailed(f"{SINGLE} takes one event object", [{"field": "body", "message": "must be an object"}])
    if ctype == BATCH and not isinstance(body, list):
        raise ValidationFailed(f"{BATCH} takes a JSON array of events", [{"field": "body", "message": "must be an array"}])
    events = body if isinstance(body, list) else [body]
    c = container()
    if c.bus is None:
        raise Unavailable("no event bus is configured")
    receipt = None
    invoiced = invoiced_lookup(c.namespace, store=c.billing_store, meta=c.meta)  # opened only if a meter's policy asks
    try:
        if "return=representation" in header(raw, "prefer").replace(" ", "").lower():  # Billow: a receipt (issue 21)
            receipt = ingest_with_receipt(c.namespace, events, meta=c.meta, bus=c.bus, usage=c.usage, now=c.clock.now(),
                                          invoiced=invoiced)
        else:
            result = ingest_events(c.namespace, events, meta=c.meta, bus=c.bus, now=c.clock.now(), invoiced=invoiced)
    except (ValidationFailed, UnsupportedMediaType):
        raise
    except ConnectionError as exc:
        c.metrics.add("ingest_refused_unavailable", len(events))
        raise Unavailable(f"event bus unavailable, nothing was ingested: {exc}") from exc
    ignored = receipt.get("ignored", []) if receipt is not None else result.ignored
    if ignored:  # ingestionPolicy.lateInvoiced = ignore: stored, counted nowhere for that meter; reported
        c.metrics.add("ingest_ignored_invoiced", len(ignored))
        log.warning("ingest: %d event(s) in invoiced periods ignored by their meter's policy: %s", len(ignored), ignored[:10])
    if receipt is not None:
        c.metrics.add("ingest_accepted", receipt["events"])
        return response(200, receipt, headers={"Preference-Applied": "return=representation"})
    c.metrics.add("ingest_accepted", result.accepted)
    return response(204)


@lambda_entry(API_GATEWAY)
@event_source(data_class=APIGatewayProxyEventV2)
def lambda_handler(event: APIGatewayProxyEventV2, context: LambdaContext | None) -> dict[str, Any]:
    return as_caller(event.raw_event, lambda: guarded(event.raw_path, lambda: _ingest(event)))
