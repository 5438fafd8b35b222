"""`GET /api/docs`: the OpenAPI document (`/api/v1/openapi.json`) rendered as a browsable API reference by Redoc,
vendored in the package (shared/billow/web/redoc, MIT) and served from here, so the page works offline. Public, as
the document is: the page holds no data, only the description of the API; every call it could lead to needs a
key as usual."""

from __future__ import annotations

from functools import cache
from importlib import resources

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter

from billow.errors import NotFound

router = APIGatewayHttpRouter()

REDOC_VERSION = "2.5.4"
ASSETS = {"redoc.standalone.js": "text/javascript; charset=utf-8", "redoc.standalone.js.LICENSE.txt": "text/plain; charset=utf-8",
          "LICENSE": "text/plain; charset=utf-8", "init.js": "text/javascript; charset=utf-8"}
# Relative URLs: /api/docs resolves them against /api/, so the page works under any API Gateway stage prefix.
PAGE = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Billow API reference</title>
<link rel="icon" href="data:,">
</head>
<body>
<div id="redoc"></div>
<!-- Redoc {REDOC_VERSION} (MIT): docs/LICENSE, docs/redoc.standalone.js.LICENSE.txt -->
<script src="docs/redoc.standalone.js"></script>
<script src="docs/init.js"></script>
</body>
</html>
"""
# Only this origin: the script, the document, Redoc's inline styles (styled-components) and its search worker.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "connect-src 'self'; img-src 'self' data:; font-src 'self' data:; "
                               "worker-src 'self' blob:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
}


# The page's only script of its own (the policy allows no inline script): render the document into #redoc.
INIT = """Redoc.init("v1/openapi.json", {expandResponses: "200,201", sortTagsAlphabetically: true},
           document.getElementById("redoc"));
"""


@cache
def _asset(name: str) -> str:
    if name == "init.js":
        return INIT
    return resources.files("billow.web").joinpath("redoc", name).read_text(encoding="utf-8")


@router.get("/api/docs")
def page() -> Response:
    return Response(200, "text/html; charset=utf-8", PAGE, headers={**HEADERS, "Cache-Control": "no-cache"})


@router.get("/api/docs/<name>")
def asset(name: str) -> Response:
    if name not in ASSETS:
        raise NotFound(f"no API reference file {name!r}")
    # The file changes only with Billow's version: a day's caching spares the 2 MB on each visit.
    return Response(200, ASSETS[name], _asset(name), headers={**HEADERS, "Cache-Control": "public, max-age=86400"})
