"""REST routes of OpenMeter's v2 entitlement API (/api/v2/customers/{c}/entitlements..., /api/v2/entitlements,
/api/v2/grants), the paths both official SDKs use by default. Each parses, calls one use-case
(billow.services.entitlements_v2), maps the result; the API handler includes this router."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter

from billow.bootstrap import container
from billow.services import entitlements_v2 as v2
from billow.services import events_v2, params
from billow.timeutil import parse_rfc3339
from billow.web.http import path_param, query_multi
from functions.api.bodies import optional_request_body, request_body
from functions.api.entitlement_requests import new_entitlement
from functions.api.responses import no_content, ok

router = APIGatewayHttpRouter()
BASE = "/api/v2/customers/<customer>/entitlements"


def _event() -> dict[str, Any]:
    return router.current_event.raw_event


def _qs() -> dict[str, list[str]]:
    return query_multi(_event())


@router.get("/api/v2/events")
def list_events() -> Response:
    c = container()
    return ok(events_v2.list_events(c.namespace, _qs(), usage=c.usage, meta=c.meta))


@router.post(BASE)
def create_entitlement(customer: str) -> Response:
    c = container()
    now, body, reserved = new_entitlement(c, router)
    return ok(v2.create(c.namespace, path_param(customer), body, store=c.entitlements, meta=c.meta, now=now,
                        reserved=reserved), 201)


@router.get(BASE)
def list_customer_entitlements(customer: str) -> Response:
    c = container()
    return ok(v2.list_for_customer(c.namespace, path_param(customer), _qs(), store=c.entitlements, meta=c.meta,
                                   now=c.clock.now()))


@router.get(f"{BASE}/<entitlement>")
def get_entitlement(customer: str, entitlement: str) -> Response:
    c = container()
    return ok(v2.get(c.namespace, path_param(customer), path_param(entitlement), store=c.entitlements, meta=c.meta,
                     now=c.clock.now()))


@router.delete(f"{BASE}/<entitlement>")
def delete_entitlement(customer: str, entitlement: str) -> Response:
    c = container()
    v2.delete(c.namespace, path_param(customer), path_param(entitlement), store=c.entitlements, meta=c.meta,
              now=c.clock.now())
    return no_content()


@router.put(f"{BASE}/<entitlement>/override")
def override_entitlement(customer: str, entitlement: str) -> Response:
    c = container()
    now, body, reserved = new_entitlement(c, router)
    return ok(v2.override(c.namespace, path_param(customer), path_param(entitlement), body, store=c.entitlements,
                          meta=c.meta, now=now, reserved=reserved), 201)


@router.post(f"{BASE}/<entitlement>/grants")
def create_grant(customer: str, entitlement: str) -> Response:
    c = container()
    return ok(v2.create_grant(c.namespace, path_param(customer), path_param(entitlement), request_body(router),
                              store=c.entitlements, meta=c.meta, now=c.clock.now()), 201)


@router.get(f"{BASE}/<entitlement>/grants")
def list_grants(customer: str, entitlement: str) -> Response:
    c = container()
    return ok(v2.list_grants(c.namespace, path_param(customer), path_param(entitlement), _qs(), store=c.entitlements,
                             meta=c.meta, now=c.clock.now()))


@router.get(f"{BASE}/<entitlement>/value")
def entitlement_value(customer: str, entitlement: str) -> Response:
    c = container()
    raw = params.one(_qs(), "time")
    at = parse_rfc3339(raw, "time") if raw is not None else None
    return ok(v2.value(c.namespace, path_param(customer), path_param(entitlement), at, store=c.entitlements,
                       meta=c.meta, usage=c.usage, now=c.clock.now(), cache=c.balance_cache))


@router.get(f"{BASE}/<entitlement>/history")
def entitlement_history(customer: str, entitlement: str) -> Response:
    c = container()
    return ok(v2.history(c.namespace, path_param(customer), path_param(entitlement), _qs(), store=c.entitlements,
                         meta=c.meta, usage=c.usage, now=c.clock.now()))


@router.post(f"{BASE}/<entitlement>/reset")
def reset_entitlement(customer: str, entitlement: str) -> Response:
    c = container()
    v2.reset(c.namespace, path_param(customer), path_param(entitlement), optional_request_body(router), store=c.entitlements,
             meta=c.meta, now=c.clock.now())
    return no_content()


@router.get("/api/v2/entitlements")
def list_entitlements() -> Response:
    c = container()
    return ok(v2.list_all(c.namespace, _qs(), store=c.entitlements, meta=c.meta, now=c.clock.now()))


@router.get("/api/v2/entitlements/<entitlement>")
def get_entitlement_by_id(entitlement: str) -> Response:
    c = container()
    return ok(v2.get_by_id(c.namespace, path_param(entitlement), store=c.entitlements, meta=c.meta,
                           now=c.clock.now()))


@router.get("/api/v2/grants")
def list_all_grants() -> Response:
    c = container()
    return ok(v2.list_all_grants(c.namespace, _qs(), store=c.entitlements, meta=c.meta, now=c.clock.now()))
