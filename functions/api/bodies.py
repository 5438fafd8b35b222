"""The request body the API routes read, parsed once a request. The API's middleware parses a JSON body for the body
check (billow.web.body_contract) and keeps its answer, the document or the 400, in the resolver's per-request context
(`app.context`: its own per thread under `billow serve`, billow.local.asgi.per_request_state; emptied after each
request in Lambda); a route's `request_body` gives that answer again, and parses only a body the middleware did not."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.event_handler.api_gateway import BaseRouter

from billow.web.http import json_body, optional_json_body


def request_body(router: BaseRouter) -> Any:
    """The request's JSON document (400 for none, or one that is no JSON)."""
    return json_body(router.current_event.raw_event, kept_in=router.context)


def optional_request_body(router: BaseRouter) -> Any:
    """The request's JSON object, or None without a body (billow.web.http.optional_json_body)."""
    return optional_json_body(router.current_event.raw_event, kept_in=router.context)
