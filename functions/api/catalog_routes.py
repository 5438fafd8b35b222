"""Product catalog routes (OpenMeter v1): plans and add-ons with versions, plan add-ons."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter

from billow.bootstrap import Container, container
from billow.services import catalog, pages
from billow.web.http import path_param, query_multi
from functions.api.bodies import request_body
from functions.api.responses import no_content, ok

router = APIGatewayHttpRouter()


def _ctx() -> tuple[Container, Any]:
    c = container()
    return c, c.catalog_store()


def _shown(c: Container, kind: str, doc: dict[str, Any]) -> dict[str, Any]:
    return catalog.present(c.namespace, kind, doc, features=c.entitlements, now=c.clock.now(), store=c.catalog_store())


def _body() -> Any:
    return request_body(router)


def _qs() -> dict[str, list[str]]:
    return query_multi(router.current_event.raw_event)


def _routes(kind: str, id_param: str) -> None:
    base = f"/api/v1/{kind}s"

    @router.get(base)
    def list_docs() -> Response:
        c, store = _ctx()
        qs = _qs()
        docs = catalog.list_docs(c.namespace, kind, qs, store=store, now=c.clock.now())
        return ok(pages.page([_shown(c, kind, d) for d in docs], qs, pages.PLANS if kind == "plan" else pages.ADDONS))

    @router.post(base)
    def create() -> Response:
        c, store = _ctx()
        return ok(_shown(c, kind, catalog.create(c.namespace, kind, _body(), store=store, now=c.clock.now())), 201)

    @router.get(f"{base}/<{id_param}>")
    def get(**params: str) -> Response:
        c, store = _ctx()
        latest = (_qs().get("includeLatest") or ["false"])[0] == "true"
        return ok(_shown(c, kind, catalog.get(c.namespace, kind, path_param(params[id_param]), store=store,
                                              include_latest=latest)))

    @router.put(f"{base}/<{id_param}>")
    def update(**params: str) -> Response:
        c, store = _ctx()
        return ok(_shown(c, kind, catalog.update(c.namespace, kind, path_param(params[id_param]), _body(), store=store,
                                                 now=c.clock.now())))

    @router.delete(f"{base}/<{id_param}>")
    def delete(**params: str) -> Response:
        c, store = _ctx()
        catalog.delete(c.namespace, kind, path_param(params[id_param]), store=store, now=c.clock.now())
        return no_content()

    @router.post(f"{base}/<{id_param}>/publish")
    def publish(**params: str) -> Response:
        c, store = _ctx()
        return ok(_shown(c, kind, catalog.publish(c.namespace, kind, path_param(params[id_param]), store=store,
                                                  features=c.entitlements, now=c.clock.now())))

    @router.post(f"{base}/<{id_param}>/archive")
    def archive(**params: str) -> Response:
        c, store = _ctx()
        return ok(_shown(c, kind, catalog.archive(c.namespace, kind, path_param(params[id_param]), store=store,
                                                  now=c.clock.now())))


_routes("plan", "planId")
_routes("addon", "addonId")


@router.post("/api/v1/plans/<plan>/next")
def next_version(plan: str) -> Response:
    c, store = _ctx()
    return ok(_shown(c, "plan", catalog.next_version(c.namespace, "plan", path_param(plan), store=store,
                                                     now=c.clock.now())), 201)


@router.get("/api/v1/plans/<plan>/addons")
def list_plan_addons(plan: str) -> Response:
    c, store = _ctx()
    docs = store.list_plan_addons(c.namespace, catalog.get(c.namespace, "plan", path_param(plan), store=store)["id"])
    shown = [catalog.present_plan_addon(c.namespace, d, store=store, features=c.entitlements, now=c.clock.now())
             for d in docs]
    return ok(pages.page(shown, _qs(), pages.PLAN_ADDONS))


@router.post("/api/v1/plans/<plan>/addons")
def add_plan_addon(plan: str) -> Response:
    c, store = _ctx()
    doc = catalog.add_plan_addon(c.namespace, path_param(plan), _body(), store=store, now=c.clock.now())
    return ok(catalog.present_plan_addon(c.namespace, doc, store=store, features=c.entitlements, now=c.clock.now()), 201)


@router.get("/api/v1/plans/<plan>/addons/<plan_addon>")
def get_plan_addon(plan: str, plan_addon: str) -> Response:
    c, store = _ctx()
    doc = catalog.plan_addon(c.namespace, path_param(plan), path_param(plan_addon), store=store)
    return ok(catalog.present_plan_addon(c.namespace, doc, store=store, features=c.entitlements, now=c.clock.now()))


@router.put("/api/v1/plans/<plan>/addons/<plan_addon>")
def update_plan_addon(plan: str, plan_addon: str) -> Response:
    c, store = _ctx()
    doc = catalog.update_plan_addon(c.namespace, path_param(plan), path_param(plan_addon), _body(), store=store,
                                    now=c.clock.now())
    return ok(catalog.present_plan_addon(c.namespace, doc, store=store, features=c.entitlements, now=c.clock.now()))


@router.delete("/api/v1/plans/<plan>/addons/<plan_addon>")
def remove_plan_addon(plan: str, plan_addon: str) -> Response:
    c, store = _ctx()
    catalog.remove_plan_addon(c.namespace, path_param(plan), path_param(plan_addon), store=store, now=c.clock.now())
    return no_content()
