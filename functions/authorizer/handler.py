"""API Gateway HTTP API Lambda authorizer (payload 2.0, simple responses), cached by API Gateway per
Authorization header: checks the API key (or consumer-portal token) and hands its namespace and scopes (or
portal subject) to the handlers in `requestContext.authorizer.lambda`. Scopes, and the portal token's routes, are
enforced per route by the handlers (a cached answer must not depend on the route)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from billow.bootstrap import container
from billow.services.apikeys import Unauthorized
from billow.services.portal import authenticate_bearer
from functions.observability import API_GATEWAY, lambda_entry


@lambda_entry(API_GATEWAY)
def lambda_handler(event: dict[str, Any], context: LambdaContext | None) -> dict[str, Any]:
    from billow.adapters.sql_portal import SqlPortalStore  # SQLAlchemy: with the container, at the first call

    headers = {k.lower(): v for k, v in (event.get("headers") or {}).items()}
    c = container()
    try:
        _, ctx = authenticate_bearer(headers.get("authorization", ""), keys=c.keys, tokens=c.store(SqlPortalStore),
                                     now=c.clock.now())
    except Unauthorized:
        return {"isAuthorized": False}
    return {"isAuthorized": True, "context": ctx}
