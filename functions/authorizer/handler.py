"""API Gateway HTTP API Lambda authorizer (payload 2.0, simple responses), cached by API Gateway per
Authorization header: checks the API key and hands its namespace and scopes to the handlers in
`requestContext.authorizer.lambda`. Scopes are enforced per route by the handlers (a cached answer must not
depend on the route)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from billow.bootstrap import container
from billow.services.apikeys import Unauthorized, authenticate


def lambda_handler(event: dict[str, Any], context: LambdaContext | None) -> dict[str, Any]:
    headers = {k.lower(): v for k, v in (event.get("headers") or {}).items()}
    try:
        principal = authenticate(headers.get("authorization", ""), store=container().keys)
    except Unauthorized:
        return {"isAuthorized": False}
    return {"isAuthorized": True, "context": principal.context()}
