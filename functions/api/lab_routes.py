"""Pricing lab routes (Billow extensions; docs/pricing-lab.md): backtests of a candidate plan on real usage, the
progress of a job (OpenMeter's `GET /api/v1/info/progress/{id}`), LLM margin, and the operator console page."""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter

from billow.bootstrap import container
from billow.errors import NotFound
from billow.services import backtests, margin, params
from billow.web.http import path_param, query_multi, wants_csv
from functions.api.bodies import request_body
from functions.api.portal_routes import PAGE_HEADERS
from functions.api.responses import ok

router = APIGatewayHttpRouter()


def _event() -> dict[str, Any]:
    return router.current_event.raw_event


@router.post("/api/v1/billing/backtests")
def create_backtest() -> Response:
    """202 with the job, queued for the host's job runner (follow `GET /api/v1/info/progress/{id}`, then
    `GET /api/v1/billing/backtests/{id}`, from any process); `?wait=true` runs it in the request and answers 200
    with the result."""
    c = container()
    wait = params.flag(query_multi(_event()), "wait")
    job = backtests.start(c.namespace, request_body(router), catalog_store=c.catalog_store(), billing=c.billing_store(),
                          meta=c.meta, ents=c.entitlements, usage=c.usage, clock=c.clock.now, wait=wait,
                          jobs=c.backtest_jobs(), runner=None if wait else c.job_runner())
    if wait and wants_csv(_event()):
        return Response(200, "text/csv; charset=utf-8", job.csv())
    return ok(job.to_json(), 200 if wait else 202)


def _job(id_: str, rows: bool = True) -> backtests.Job:
    c = container()
    return backtests.get(c.namespace, path_param(id_), jobs=c.backtest_jobs(), now=c.clock.now(), rows=rows)


@router.get("/api/v1/billing/backtests/<bid>")
def get_backtest(bid: str) -> Response:
    job = _job(bid)
    if wants_csv(_event()):
        return Response(200, "text/csv; charset=utf-8", job.csv())
    return ok(job.to_json())


@router.get("/api/v1/info/progress/<pid>")
def get_progress(pid: str) -> Response:
    return ok(_job(pid, rows=False).progress())


@router.get("/api/v1/llm/margin")
def llm_margin() -> Response:
    c = container()
    return ok(margin.margin_report(c.namespace, query_multi(_event()), meta=c.meta, usage=c.usage,
                                   prices=c.llm_price_store(), catalog_store=c.catalog_store(),
                                   billing=c.billing_store(), ents=c.entitlements))


# -- the operator console (static page; its data calls need an admin key when auth is on) ----------------------
# PAGE_HEADERS is the portal page's policy: only its own script and style, data from this origin only.
CONSOLE_ASSETS = {"index.html": "text/html; charset=utf-8", "console.js": "text/javascript; charset=utf-8",
                  "console.css": "text/css; charset=utf-8"}


@cache
def _console_asset(name: str) -> str:
    return resources.files("billow.console").joinpath("static", name).read_text(encoding="utf-8")


@router.get("/console")
def console_page() -> Response:
    return Response(200, CONSOLE_ASSETS["index.html"], _console_asset("index.html"), headers=PAGE_HEADERS)


@router.get("/console/<name>")
def console_asset(name: str) -> Response:
    if name not in CONSOLE_ASSETS or name == "index.html":
        raise NotFound(f"no console file {name!r}")
    return Response(200, CONSOLE_ASSETS[name], _console_asset(name), headers=PAGE_HEADERS)
