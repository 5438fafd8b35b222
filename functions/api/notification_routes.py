"""Notification routes (OpenMeter v1 paths): channels, rules (with test), events (with resend). Each parses,
calls one use-case in billow.services.notifications, maps the result."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter

from billow.adapters import delivery
from billow.bootstrap import container
from billow.services import notifications
from billow.web.http import path_param, query_multi
from functions.api.bodies import request_body
from functions.api.responses import no_content, ok

router = APIGatewayHttpRouter()
BASE = "/api/v1/notification"


def _event() -> dict[str, Any]:
    return router.current_event.raw_event


def _store() -> Any:
    return container().notification_store()


# -- channels -------------------------------------------------------------------------------------------
@router.get(f"{BASE}/channels")
def list_channels() -> Response:
    c = container()
    return ok(notifications.list_channels(c.namespace, query_multi(_event()), store=_store()))


@router.post(f"{BASE}/channels")
def create_channel() -> Response:
    c = container()
    return ok(notifications.create_channel(c.namespace, request_body(router), store=_store(), now=c.clock.now()), 201)


@router.get(f"{BASE}/channels/<channel_id>")
def get_channel(channel_id: str) -> Response:
    c = container()
    return ok(notifications.get_channel(c.namespace, path_param(channel_id), store=_store()))


@router.put(f"{BASE}/channels/<channel_id>")
def update_channel(channel_id: str) -> Response:
    c = container()
    return ok(notifications.update_channel(c.namespace, path_param(channel_id), request_body(router), store=_store(),
                                           now=c.clock.now()))


@router.delete(f"{BASE}/channels/<channel_id>")
def delete_channel(channel_id: str) -> Response:
    c = container()
    notifications.delete_channel(c.namespace, path_param(channel_id), store=_store(), now=c.clock.now())
    return no_content()


# -- rules ----------------------------------------------------------------------------------------------
@router.get(f"{BASE}/rules")
def list_rules() -> Response:
    c = container()
    return ok(notifications.list_rules(c.namespace, query_multi(_event()), store=_store()))


@router.post(f"{BASE}/rules")
def create_rule() -> Response:
    c = container()
    return ok(notifications.create_rule(c.namespace, request_body(router), store=_store(), features=c.entitlements,
                                        now=c.clock.now()), 201)


@router.get(f"{BASE}/rules/<rule_id>")
def get_rule(rule_id: str) -> Response:
    c = container()
    return ok(notifications.get_rule(c.namespace, path_param(rule_id), store=_store()))


@router.put(f"{BASE}/rules/<rule_id>")
def update_rule(rule_id: str) -> Response:
    c = container()
    return ok(notifications.update_rule(c.namespace, path_param(rule_id), request_body(router), store=_store(),
                                        features=c.entitlements, now=c.clock.now()))


@router.delete(f"{BASE}/rules/<rule_id>")
def delete_rule(rule_id: str) -> Response:
    c = container()
    notifications.delete_rule(c.namespace, path_param(rule_id), store=_store(), now=c.clock.now())
    return no_content()


@router.post(f"{BASE}/rules/<rule_id>/test")
def test_rule(rule_id: str) -> Response:
    c = container()
    return ok(notifications.test_rule(c.namespace, path_param(rule_id), store=_store(), now=c.clock.now(),
                                      wake=delivery.wake), 201)


# -- events ---------------------------------------------------------------------------------------------
@router.get(f"{BASE}/events")
def list_events() -> Response:
    c = container()
    return ok(notifications.list_events(c.namespace, query_multi(_event()), store=_store(), meta=c.meta))


@router.get(f"{BASE}/events/<event_id>")
def get_event(event_id: str) -> Response:
    c = container()
    return ok(notifications.get_event(c.namespace, path_param(event_id), store=_store()))


@router.post(f"{BASE}/events/<event_id>/resend")
def resend_event(event_id: str) -> Response:
    c = container()
    raw = _event().get("body")
    body = request_body(router) if raw and raw.strip() else None
    notifications.resend_event(c.namespace, path_param(event_id), body, store=_store(), now=c.clock.now(),
                               wake=delivery.wake)
    return Response(202, None, "")
