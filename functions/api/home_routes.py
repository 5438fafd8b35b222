"""`GET /`: a small landing page for whoever opens Billow's address in a browser, linking what there is to see
(the API reference, the customer portal, health); and the methods each known path allows, for the 405s."""

from __future__ import annotations

import html
import re
from typing import Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter

from billow import __version__

router = APIGatewayHttpRouter()

# Served by other functions than the API's (functions/ingest, functions/stripe_webhook), so not in its routes.
OTHER_FUNCTIONS = {("POST", "/api/v1/events"), ("POST", "/api/v1/apps/stripe/webhook"),
                   ("POST", "/api/v1/apps/{id}/stripe/webhook")}  # each installed Stripe app's (issue 16)

LINKS = (("/api/docs", "API reference", "every operation, rendered from the OpenAPI document"),
         ("/api/v1/openapi.json", "OpenAPI document", "the OpenAPI document of every operation (OpenMeter's v1 API "
          "and Billow's additions)"),
         ("/portal", "Customer portal", "what an end customer sees with a portal link: make one with "
          "POST /api/v1/portal/tokens"),
         ("/console", "Operator console", "meters, customers, backtests and margin (needs an admin key when auth "
          "is on)"),
         ("/healthz", "Health", "the process answers"),
         ("/readyz", "Readiness", "every store and the event bus answer"))

PAGE = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Billow</title>
<style>
body {{ font: 16px/1.5 system-ui, sans-serif; color: #1c2333; max-width: 40rem; margin: 3rem auto; padding: 0 1rem; }}
h1 {{ margin-bottom: 0; }} .muted {{ color: #667085; }} li {{ margin: .5rem 0; }} a {{ color: #3b5bdb; }}
code {{ background: #f1f3f5; padding: 0 .25rem; border-radius: 4px; }}
</style>
</head>
<body>
<h1>Billow {html.escape(__version__)}</h1>
<p class="muted">Usage metering and billing over OpenMeter's v1 REST API, at <code>/api/v1</code>.</p>
<ul>
{"".join(f'<li><a href="{href}">{html.escape(name)}</a> &mdash; {html.escape(what)}</li>{chr(10)}'
         for href, name, what in LINKS)}</ul>
<p class="muted">Send usage with <code>POST /api/v1/events</code> (CloudEvents); query it with
<code>GET /api/v1/meters/{{slug}}/query</code>.</p>
</body>
</html>
"""
HEADERS = {"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
           "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}


@router.get("/")
def landing() -> Response:
    return Response(200, "text/html; charset=utf-8", PAGE, headers=HEADERS)


def allowed_methods(app: Any, path: str) -> list[str]:
    """The methods the API serves on `path` (sorted; empty: no such path). `app` is the API's resolver."""
    found = {m for m, p in OTHER_FUNCTIONS if p == path.rstrip("/")}
    if re.fullmatch(r"/api/v1/apps/[^/]+/stripe/webhook/?", path):  # functions/stripe_webhook: each Stripe app's
        found.add("POST")
    for route in app._static_routes + app._dynamic_routes:  # powertools keeps no public index of its routes
        if isinstance(route.rule, re.Pattern) and route.rule.match(path):
            found.add(route.method)
    return sorted(found)
