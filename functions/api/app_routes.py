"""App routes (OpenMeter v1, issue 16): installed apps, the marketplace and its installs, the Stripe app's API key,
customer app data, the customer's Stripe data and portal session, Stripe Checkout sessions. Each route parses,
calls one use-case of billow.services.apps, maps the result. The Stripe app's webhook
(POST /api/v1/apps/{id}/stripe/webhook) is served by functions/stripe_webhook, which needs no API key."""

from __future__ import annotations

from functools import partial
from typing import Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter

from billow.bootstrap import Container, container
from billow.services import apps as svc
from billow.services import entitlements, pages, params
from billow.web.http import path_param, query_multi
from functions.api.bodies import optional_request_body, request_body
from functions.api.responses import no_content, ok, origin

router = APIGatewayHttpRouter()


def _event() -> dict[str, Any]:
    return router.current_event.raw_event


def _body() -> Any:
    return request_body(router)


def _qs() -> dict[str, list[str]]:
    return query_multi(_event())


def _c() -> Container:
    return container()


# -- apps ------------------------------------------------------------------------------------------------------------
@router.get("/api/v1/apps")
def list_apps() -> Response:
    c = _c()
    return ok(pages.page(svc.list_apps(c.namespace, apps=c.app_store(), now=c.clock.now()), _qs()))


@router.get("/api/v1/apps/<app_id>")
def get_app(app_id: str) -> Response:
    c = _c()
    return ok(svc.get_app(c.namespace, path_param(app_id), apps=c.app_store()))


@router.put("/api/v1/apps/<app_id>")
def update_app(app_id: str) -> Response:
    c = _c()
    return ok(svc.update_app(c.namespace, path_param(app_id), _body(), apps=c.app_store(), stripe=c.stripe_account,
                             now=c.clock.now()))


@router.delete("/api/v1/apps/<app_id>")
def uninstall_app(app_id: str) -> Response:
    c = _c()
    svc.uninstall_app(c.namespace, path_param(app_id), apps=c.app_store(), billing=c.billing_store(),
                      stripe=c.stripe_account, now=c.clock.now())
    return no_content()


@router.put("/api/v1/apps/<app_id>/stripe/api-key")
def update_stripe_api_key(app_id: str) -> Response:
    c = _c()
    svc.update_stripe_api_key(c.namespace, path_param(app_id), _body(), apps=c.app_store(), stripe=c.stripe_account,
                              now=c.clock.now())
    return no_content()


# -- marketplace ------------------------------------------------------------------------------------------------------
@router.get("/api/v1/marketplace/listings")
def list_listings() -> Response:
    return ok(pages.page(svc.listings(), _qs()))


@router.get("/api/v1/marketplace/listings/<app_type>")
def get_listing(app_type: str) -> Response:
    from billow.domain.apps import listing

    return ok(listing(path_param(app_type)))


@router.post("/api/v1/marketplace/listings/<app_type>/install")
def install(app_type: str) -> Response:
    c = _c()
    return ok(svc.install(c.namespace, path_param(app_type), optional_request_body(router), apps=c.app_store(),
                          billing=c.billing_store(), now=c.clock.now()))


@router.post("/api/v1/marketplace/listings/<app_type>/install/apikey")
def install_with_api_key(app_type: str) -> Response:
    c = _c()
    base = origin(_event())
    return ok(svc.install_with_api_key(c.namespace, path_param(app_type), _body(), apps=c.app_store(),
                                       billing=c.billing_store(), stripe=c.stripe_account,
                                       webhook_url=lambda app_id: f"{base}/api/v1/apps/{app_id}/stripe/webhook",
                                       now=c.clock.now()))


@router.get("/api/v1/marketplace/listings/<app_type>/install/oauth2")
def install_oauth2(app_type: str) -> Response:
    svc.oauth2_unavailable(path_param(app_type))
    return no_content()  # not reached: OAuth2 installs are refused


@router.get("/api/v1/marketplace/listings/<app_type>/install/oauth2/authorize")
def install_oauth2_authorize(app_type: str) -> Response:
    svc.oauth2_unavailable(path_param(app_type))
    return no_content()  # not reached


# -- customer app data ----------------------------------------------------------------------------------------------
@router.get("/api/v1/customers/<customer>/apps")
def list_customer_apps(customer: str) -> Response:
    c = _c()
    qs = _qs()
    items = svc.list_customer_apps(c.namespace, path_param(customer), params.one(qs, "type"), apps=c.app_store(),
                                   meta=c.meta, now=c.clock.now())
    return ok(pages.page(items, qs))


@router.put("/api/v1/customers/<customer>/apps")
def put_customer_apps(customer: str) -> Response:
    c = _c()
    return ok(svc.put_customer_apps(c.namespace, path_param(customer), _body(), apps=c.app_store(), meta=c.meta,
                                    stripe=c.stripe_account, now=c.clock.now()))


@router.delete("/api/v1/customers/<customer>/apps/<app_id>")
def delete_customer_app(customer: str, app_id: str) -> Response:
    c = _c()
    svc.delete_customer_app(c.namespace, path_param(customer), path_param(app_id), apps=c.app_store(), meta=c.meta)
    return no_content()


@router.get("/api/v1/customers/<customer>/stripe")
def get_customer_stripe(customer: str) -> Response:
    c = _c()
    return ok(svc.get_customer_stripe(c.namespace, path_param(customer), apps=c.app_store(),
                                      billing=c.billing_store(), meta=c.meta, now=c.clock.now()))


@router.put("/api/v1/customers/<customer>/stripe")
def put_customer_stripe(customer: str) -> Response:
    c = _c()
    return ok(svc.put_customer_stripe(c.namespace, path_param(customer), _body(), apps=c.app_store(),
                                      billing=c.billing_store(), meta=c.meta, stripe=c.stripe_account,
                                      now=c.clock.now()))


@router.post("/api/v1/customers/<customer>/stripe/portal")
def customer_portal_session(customer: str) -> Response:
    c = _c()
    return ok(svc.portal_session(c.namespace, path_param(customer), optional_request_body(router), apps=c.app_store(),
                                 billing=c.billing_store(), meta=c.meta, stripe=c.stripe_account,
                                 now=c.clock.now()), 201)


@router.post("/api/v1/stripe/checkout/sessions")
def checkout_session() -> Response:
    c = _c()
    return ok(svc.checkout_session(c.namespace, _body(), apps=c.app_store(), meta=c.meta, stripe=c.stripe_account,
                                   now=c.clock.now(), taking=partial(entitlements.customer_takes, c.namespace,
                                                                     store=c.entitlements, meta=c.meta)), 201)
