"""Subscription routes (OpenMeter v1): create, get, change, cancel, continue, delete, add-ons, a customer's
subscriptions; and Billow's `/charges` (what a subscription owes for a billing period, line by line)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter

from billow.bootstrap import Container, container
from billow.errors import NotFound
from billow.services import pages, subscriptions
from billow.timeutil import parse_rfc3339
from billow.web.http import path_param, query_multi
from functions.api.bodies import request_body
from functions.api.responses import no_content, ok

router = APIGatewayHttpRouter()


def _deps() -> tuple[Container, dict[str, Any]]:
    c = container()
    return c, {"store": c.catalog_store(), "meta": c.meta, "ents": c.entitlements, "now": c.clock.now()}


def _body() -> Any:
    return request_body(router)


def _shown(c: Container, doc: dict[str, Any], expanded: bool = False) -> dict[str, Any]:
    return subscriptions.present(doc, c.clock.now(), expanded=expanded,
                                 feature_of=lambda key: c.entitlements.get_feature(c.namespace, key, include_archived=True))


@router.post("/api/v1/subscriptions")
def create() -> Response:
    c, d = _deps()
    return ok(_shown(c, subscriptions.create(c.namespace, _body(), **d)), 201)


@router.get("/api/v1/subscriptions/<sub>")
def get(sub: str) -> Response:
    c, d = _deps()
    doc = subscriptions.get(c.namespace, path_param(sub), store=d["store"])
    return ok(_shown(c, subscriptions.sync_entitlements(c.namespace, doc, **d), expanded=True))


@router.delete("/api/v1/subscriptions/<sub>")
def delete(sub: str) -> Response:
    c, d = _deps()
    subscriptions.delete(c.namespace, path_param(sub), store=d["store"], now=d["now"])
    return no_content()


@router.post("/api/v1/subscriptions/<sub>/cancel")
def cancel(sub: str) -> Response:
    c, d = _deps()
    raw = router.current_event.raw_event.get("body")
    return ok(_shown(c, subscriptions.cancel(c.namespace, path_param(sub), _body() if raw else {}, **d)))


@router.post("/api/v1/subscriptions/<sub>/unschedule-cancelation")
def unschedule_cancelation(sub: str) -> Response:
    c, d = _deps()
    return ok(_shown(c, subscriptions.unschedule_cancelation(c.namespace, path_param(sub), **d)))


@router.post("/api/v1/subscriptions/<sub>/change")
def change(sub: str) -> Response:
    c, d = _deps()
    out = subscriptions.change(c.namespace, path_param(sub), _body(), **d)
    return ok({"current": _shown(c, out["current"]), "next": _shown(c, out["next"], expanded=True)})


@router.patch("/api/v1/subscriptions/<sub>")
def edit(sub: str) -> Response:
    c, d = _deps()
    return ok(_shown(c, subscriptions.edit(c.namespace, path_param(sub), _body(), **d)))


@router.post("/api/v1/subscriptions/<sub>/migrate")
def migrate(sub: str) -> Response:
    c, d = _deps()
    raw = router.current_event.raw_event.get("body")
    out = subscriptions.migrate(c.namespace, path_param(sub), _body() if raw else {}, **d)
    return ok({"current": _shown(c, out["current"]), "next": _shown(c, out["next"], expanded=True)})


@router.post("/api/v1/subscriptions/<sub>/restore")
def restore(sub: str) -> Response:
    c, d = _deps()
    return ok(_shown(c, subscriptions.restore(c.namespace, path_param(sub), **d)))


@router.get("/api/v1/subscriptions/<sub>/addons")
def list_addons(sub: str) -> Response:
    c, d = _deps()
    doc = subscriptions.get(c.namespace, path_param(sub), store=d["store"])
    return ok([subscriptions.present_addon(a, d["now"]) for a in doc["addons"]])


@router.post("/api/v1/subscriptions/<sub>/addons")
def add_addon(sub: str) -> Response:
    c, d = _deps()
    return ok(subscriptions.add_addon(c.namespace, path_param(sub), _body(), **d), 201)


@router.get("/api/v1/subscriptions/<sub>/addons/<addon>")
def get_addon(sub: str, addon: str) -> Response:
    c, d = _deps()
    doc = subscriptions.get(c.namespace, path_param(sub), store=d["store"])
    for a in doc["addons"]:
        if a["id"] == path_param(addon):
            return ok(subscriptions.present_addon(a, d["now"]))
    raise NotFound(f"add-on {path_param(addon)!r} is not on subscription {doc['id']}")


@router.patch("/api/v1/subscriptions/<sub>/addons/<addon>")
def update_addon(sub: str, addon: str) -> Response:
    c, d = _deps()
    return ok(subscriptions.update_addon(c.namespace, path_param(sub), path_param(addon), _body(), **d))


@router.get("/api/v1/customers/<customer>/subscriptions")
def customer_subscriptions(customer: str) -> Response:
    c, d = _deps()
    found = c.meta.get_customer(c.namespace, path_param(customer))
    if found is None:
        raise NotFound(f"customer {path_param(customer)!r} not found")
    qs = query_multi(router.current_event.raw_event)
    docs = [s for s in d["store"].list_subscriptions(c.namespace, found["id"]) if not s.get("deletedAt")]
    shown = [_shown(c, s) for s in docs]
    if qs.get("status"):
        shown = [s for s in shown if s["status"] in qs["status"]]
    return ok(pages.page(shown, qs, pages.SUBSCRIPTIONS))


@router.get("/api/v1/subscriptions/<sub>/charges")
def charges(sub: str) -> Response:
    c, d = _deps()
    qs = query_multi(router.current_event.raw_event)
    at = parse_rfc3339(qs["at"][0], "at") if qs.get("at") else d["now"]
    return ok(subscriptions.charges(c.namespace, path_param(sub), at, store=d["store"], meta=c.meta, ents=c.entitlements,
                                    usage=c.usage))
