"""Consumer portal routes: the token admin (OpenMeter v1, API key), the portal API (portal token only: `as_caller`
admits nothing else there), and the portal's static web page at /portal (public; the token stays in the URL
fragment and the browser's sessionStorage, and reaches Billow only as a Bearer header)."""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter

from billow.bootstrap import container
from billow.errors import NotFound
from billow.services import portal
from billow.web.http import path_param, query_multi
from functions.api.bodies import request_body
from functions.api.responses import document, no_content, ok, origin

if TYPE_CHECKING:
    from billow.adapters.sql_portal import SqlPortalStore

router = APIGatewayHttpRouter()


def _event() -> dict[str, Any]:
    return router.current_event.raw_event


def _tokens() -> SqlPortalStore:
    from billow.adapters.sql_portal import SqlPortalStore  # SQLAlchemy: with the container, at the first call

    return container().store(SqlPortalStore)


# -- tokens (API key; admin scope with auth on) -------------------------------------------------------------
@router.post("/api/v1/portal/tokens")
def create_token() -> Response:
    c = container()
    return ok(portal.create_token(c.namespace, request_body(router), store=_tokens(), meta=c.meta, now=c.clock.now()))


@router.get("/api/v1/portal/tokens")
def list_tokens() -> Response:
    c = container()
    return ok(portal.list_tokens(c.namespace, query_multi(_event()), store=_tokens(), now=c.clock.now()))


@router.post("/api/v1/portal/tokens/invalidate")
def invalidate_tokens() -> Response:
    c = container()
    portal.invalidate(c.namespace, request_body(router), store=_tokens(), now=c.clock.now())
    return no_content()


# -- the portal API (portal token) ----------------------------------------------------------------------------
def _session() -> portal.Session:
    ctx = ((_event().get("requestContext") or {}).get("authorizer") or {}).get("lambda") or {}
    return portal.session(ctx, store=_tokens(), now=container().clock.now())


@router.get("/api/v1/portal/meters/<meter>/query")
def query_meter(meter: str) -> Response:
    from functions.api.handler import _query_response

    c = container()
    return _query_response(portal.query(_session(), path_param(meter), query_multi(_event()), meta=c.meta,
                                        usage=c.usage))


@router.get("/api/v1/portal/me")
def me() -> Response:
    return ok(portal.me(_session(), meta=container().meta))


@router.get("/api/v1/portal/entitlements")
def entitlements() -> Response:
    c = container()
    return ok(portal.entitlements(_session(), store=c.entitlements, meta=c.meta, usage=c.usage, now=c.clock.now(),
                                  cache=c.balance_cache))


@router.get("/api/v1/portal/invoices")
def invoices() -> Response:
    c = container()
    return ok(portal.invoices(_session(), meta=c.meta, billing=c.billing_store()))


@router.get("/api/v1/portal/invoices/<iid>/documents")
def invoice_documents(iid: str) -> Response:
    """Links to the invoice's HTML and PDF: presigned S3 URLs in AWS; locally the route below (with the token)."""
    c = container()
    inv = portal.invoice(_session(), path_param(iid), meta=c.meta, billing=c.billing_store())
    base = f"{origin(_event())}/api/v1/portal/invoices/{inv['id']}/documents"
    return ok(c.billing_apps().documents(inv, served_at=lambda fmt: f"{base}/{fmt}"))


@router.get("/api/v1/portal/invoices/<iid>/documents/<fmt>")
def invoice_document(iid: str, fmt: str) -> Response:
    c = container()
    session = _session()
    if fmt not in ("html", "pdf"):
        raise NotFound(f"no invoice document {path_param(fmt)!r}: html or pdf")
    inv = portal.invoice(session, path_param(iid), meta=c.meta, billing=c.billing_store())
    return document(*c.billing_apps().document(inv, fmt))


# -- the web page ---------------------------------------------------------------------------------------------
ASSETS = {"index.html": "text/html; charset=utf-8", "portal.js": "text/javascript; charset=utf-8",
          "portal.css": "text/css; charset=utf-8"}
# The page loads only its own script and style and talks only to this origin; no framing, no referrer.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}


@cache
def _asset(name: str) -> str:
    return resources.files("billow.portal").joinpath("static", name).read_text(encoding="utf-8")


@router.get("/portal")
def page() -> Response:
    return Response(200, ASSETS["index.html"], _asset("index.html"), headers=PAGE_HEADERS)


@router.get("/portal/<name>")
def asset(name: str) -> Response:
    if name not in ASSETS or name == "index.html":
        raise NotFound(f"no portal file {name!r}")
    return Response(200, ASSETS[name], _asset(name), headers=PAGE_HEADERS)
