"""LLM cost routes (Billow extension, not in OpenMeter's spec; docs/llm-costs.md): token meters, price
overrides, cost report."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter

from billow.bootstrap import container
from billow.errors import ValidationFailed
from billow.services import llm_costs
from billow.web import present
from billow.web.http import body_text, path_param, query_multi
from functions.api.bodies import request_body
from functions.api.responses import no_content, ok

router = APIGatewayHttpRouter()


def _event() -> dict[str, Any]:
    return router.current_event.raw_event


@router.post("/api/v1/llm/meters")
def install_meters() -> Response:
    c = container()
    # No body at all is no options; anything else must be JSON (whitespace alone is not: a 400 like any bad body).
    body: Any = request_body(router) if body_text(_event()) else {}
    cache = body.get("cacheTokens", True) if isinstance(body, dict) else None
    if not isinstance(cache, bool):
        raise ValidationFailed("cacheTokens: must be true or false", [{"field": "cacheTokens", "message": "must be a boolean"}])
    meters, created = llm_costs.install_llm_meters(c.namespace, cache_tokens=cache, meta=c.meta, usage=c.usage,
                                                   now=c.clock.now(), sink_lock=c.sink_lock)
    return ok({"meters": [present.meter_json(m) for m in meters], "created": created}, 201 if created else 200)


@router.get("/api/v1/llm/prices")
def list_prices() -> Response:
    c = container()
    qs = query_multi(_event())
    prices = llm_costs.list_prices(c.namespace, provider=next(iter(qs.get("provider") or []), None),
                                   model=next(iter(qs.get("model") or []), None), store=c.llm_price_store())
    return ok([p.to_json() for p in prices])


@router.post("/api/v1/llm/prices")
def create_price() -> Response:
    c = container()
    price = llm_costs.create_price(c.namespace, request_body(router), store=c.llm_price_store(), now=c.clock.now())
    return ok(price.to_json(), 201)


@router.delete("/api/v1/llm/prices/<price_id>")
def delete_price(price_id: str) -> Response:
    c = container()
    llm_costs.delete_price(c.namespace, path_param(price_id), store=c.llm_price_store())
    return no_content()


@router.get("/api/v1/llm/costs")
def costs() -> Response:
    c = container()
    return ok(llm_costs.cost_report(c.namespace, query_multi(_event()), meta=c.meta, usage=c.usage,
                                    store=c.llm_price_store()))


@router.get("/api/v1/features/<feature>/cost")
def feature_cost(feature: str) -> Response:
    c = container()
    return ok(llm_costs.feature_cost(c.namespace, path_param(feature), query_multi(_event()), features=c.entitlements,
                                     meta=c.meta, usage=c.usage, store=c.llm_price_store()))
