"""Ingest Lambda: POST /api/v1/events (CloudEvents, single or batch) -> validate -> publish -> 204."""

from __future__ import annotations

import logging
from typing import Any

from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEventV2, event_source
from aws_lambda_powertools.utilities.typing import LambdaContext

from billow import heap
from billow.bootstrap import container
from billow.domain.events import refused
from billow.errors import Unavailable, UnsupportedMediaType, ValidationFailed
from billow.services.ingest import decode_common, ingest_events
from billow.services.lineage import invoiced_lookup
from billow.services.receipts import ingest_with_receipt
from billow.web.http import as_caller, body_text, guarded, header, json_body, response
from functions.observability import API_GATEWAY, lambda_entry

log = logging.getLogger("billow.ingest")
SINGLE = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
JSON = "application/json"
_settled: list[bool] = []  # billow.heap.settle() done in this process
SHAPES = {SINGLE: "one", BATCH: "many", JSON: "either"}


def _ingest(event: APIGatewayProxyEventV2) -> dict[str, Any]:
    raw = event.raw_event
    ctype = header(raw, "content-type").split(";")[0].strip().lower()
    if ctype not in (SINGLE, BATCH, JSON):
        raise UnsupportedMediaType(
            f"Content-Type must be {SINGLE}, {BATCH} or {JSON}; got {ctype or 'none'!r}")
    with_receipt = "return=representation" in header(raw, "prefer").replace(" ", "").lower()  # Billow (issue 21)
    c = container()
    if not _settled:  # once per cold start, the container built: its objects out of the collector's scans
        _settled.append(True)
        heap.settle()
    now = c.clock.now()
    surrogates: list[dict[str, Any]] = []  # listed beside the batch's other problems, not alone (_refuse_surrogates)
    # The common body (plain JSON, every event of the common shape) is decoded straight into checked events, with a
    # receipt or without; any other goes the full way below: a JSON document, every problem of every event listed.
    events: list[Any] | None = decode_common(body_text(raw), SHAPES[ctype], now)
    checked = events is not None
    if events is None:
        body = json_body(raw, surrogates)
        if ctype == SINGLE and not isinstance(body, dict):
            raise ValidationFailed(f"{SINGLE} takes one event object", [{"field": "body", "message": "must be an object"}])
        if ctype == BATCH and not isinstance(body, list):
            raise ValidationFailed(f"{BATCH} takes a JSON array of events", [{"field": "body", "message": "must be an array"}])
        events = body if isinstance(body, list) else [body]
    if c.bus is None:
        raise Unavailable("no event bus is configured")
    receipt = None
    invoiced = invoiced_lookup(c.namespace, store=c.billing_store, meta=c.meta)  # opened only if a meter's policy asks
    if surrogates:
        raise _refuse_surrogates(c.namespace, events, surrogates, meta=c.meta, now=now, invoiced=invoiced)
    try:
        if with_receipt:
            receipt = ingest_with_receipt(c.namespace, events, meta=c.meta, bus=c.bus, usage=c.usage, now=now,
                                          invoiced=invoiced, checked=checked)
        else:
            result = ingest_events(c.namespace, events, meta=c.meta, bus=c.bus, now=now, invoiced=invoiced,
                                   checked=checked)
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


class _Unpublished(Exception):
    pass


class _NoBus:
    """A bus that publishes nothing: validating a batch that will be refused anyway."""

    def publish(self, namespace: str, records: Any) -> None:
        raise _Unpublished


def _refuse_surrogates(namespace: str, events: list[Any], surrogates: list[dict[str, Any]], **kw: Any) -> ValidationFailed:
    """The refusal of a batch holding lone surrogates: those, and every other problem of its events, in one list."""
    marked = {e.get("index") for e in surrogates}
    try:  # the other events, validated as ingest would (nothing can publish); each surrogate read as U+FFFD
        ingest_events(namespace, _replaced(events), bus=_NoBus(), **kw)  # type: ignore[arg-type]
        errors: list[dict[str, Any]] = []
    except ValidationFailed as exc:
        errors = [e for e in exc.errors if e.get("index") not in marked]  # an event with a surrogate: listed once
    except _Unpublished:
        errors = []
    return refused(errors + surrogates)


def _replaced(doc: Any) -> Any:
    if isinstance(doc, str):
        return doc.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    if isinstance(doc, list):
        return [_replaced(v) for v in doc]
    if isinstance(doc, dict):
        return {_replaced(k): _replaced(v) for k, v in doc.items()}
    return doc


@lambda_entry(API_GATEWAY)
@event_source(data_class=APIGatewayProxyEventV2)
def lambda_handler(event: APIGatewayProxyEventV2, context: LambdaContext | None) -> dict[str, Any]:
    return as_caller(event.raw_event, lambda: guarded(event.raw_path, lambda: _ingest(event)))
