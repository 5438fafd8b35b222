"""Admin routes (Billow's own, beside OpenMeter's paths): API keys of the caller's namespace. Admin scope only."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter

from billow.bootstrap import container
from billow.errors import ValidationFailed
from billow.services import apikeys
from billow.web.http import path_param
from functions.api.bodies import request_body
from functions.api.responses import no_content, ok

router = APIGatewayHttpRouter()


@router.post("/api/v1/admin/keys")
def create_key() -> Response:
    c = container()
    body: Any = request_body(router)
    if not isinstance(body, dict):
        raise ValidationFailed("body: must be an object {name, scopes}", [{"field": "body", "message": "object"}])
    token, doc = apikeys.create_key(c.namespace, body.get("name"), body.get("scopes"), store=c.keys,  # type: ignore[arg-type]
                                    now=c.clock.now())
    return ok({**doc, "token": token}, 201)


@router.get("/api/v1/admin/keys")
def list_keys() -> Response:
    c = container()
    return ok(c.keys.list_keys(c.namespace))


@router.delete("/api/v1/admin/keys/<key_id>")
def revoke_key(key_id: str) -> Response:
    c = container()
    apikeys.revoke_key(path_param(key_id), store=c.keys, now=c.clock.now(), namespace=c.namespace)
    return no_content()
