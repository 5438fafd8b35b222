"""Routes of OpenMeter's small read operations (issue 16): a customer's access, a meter's group-by values, the
supported currencies and the debug metrics. Each parses, calls one use-case (billow.services.info), maps the
result; the API handler includes this router."""

from __future__ import annotations

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter

from billow.bootstrap import container
from billow.domain.currencies import list_currencies
from billow.services import info
from billow.web.http import path_param, query_multi
from functions.api.responses import ok

router = APIGatewayHttpRouter()


@router.get("/api/v1/customers/<customer>/access")
def customer_access(customer: str) -> Response:
    c = container()
    return ok(info.customer_access(c.namespace, path_param(customer), store=c.entitlements, meta=c.meta, usage=c.usage,
                                   now=c.clock.now(), cache=c.balance_cache))


@router.get("/api/v1/meters/<meter>/group-by/<key>/values")
def meter_group_by_values(meter: str, key: str) -> Response:
    c = container()
    return ok(info.group_by_values(c.namespace, path_param(meter), path_param(key),
                                   query_multi(router.current_event.raw_event), meta=c.meta, usage=c.usage,
                                   now=c.clock.now()))


@router.get("/api/v1/info/currencies")
def currencies() -> Response:
    return ok(list_currencies())


@router.get("/api/v1/debug/metrics")
def debug_metrics() -> Response:
    c = container()
    return Response(200, "text/plain; version=0.0.4; charset=utf-8",
                    info.debug_metrics(c.namespace, usage=c.usage, now=c.clock.now()))
