"""Stripe webhook Lambda (API Gateway HTTP API, payload 2.0, POST /api/v1/apps/stripe/webhook). The route has no
authorizer: Stripe proves itself with the Stripe-Signature header instead (verified against the webhook secret;
a bad or stale signature is a 400 and records nothing). invoice.paid / payment_failed / marked_uncollectible /
voided / finalized about a Billow invoice go to billing.handle_payment_event; anything else is acknowledged as
ignored. A 4xx/5xx from the use-case (e.g. 409 while the invoice is still being issued) makes Stripe redeliver."""

from __future__ import annotations

import re
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from billow import jsonx
from billow.adapters.stripe_app import parse_webhook
from billow.bootstrap import container
from billow.web.http import body_text, guarded, header, response
from functions.observability import API_GATEWAY, lambda_entry

logger = Logger(service="billow-stripe-webhook")
ROUTE = "/api/v1/apps/stripe/webhook"
APP_ROUTE = re.compile(r"/api/v1/apps/([^/]+)/stripe/webhook")  # an installed Stripe app's own webhook (issue 16)


@lambda_entry(API_GATEWAY, logger=logger)
def lambda_handler(event: dict[str, Any], context: LambdaContext | None) -> dict[str, Any]:
    return guarded(str(event.get("rawPath") or ROUTE), lambda: _handle(event))


def _handle(event: dict[str, Any]) -> dict[str, Any]:
    c = container()
    path = str(event.get("rawPath") or ROUTE).rstrip("/")
    if (found := APP_ROUTE.fullmatch(path)) is not None:
        return _handle_app(c, event, found.group(1))
    body = body_text(event)
    payment = parse_webhook(body.encode("utf-8"), header(event, "stripe-signature"),
                            c.settings.stripe_webhook_secret or "")
    if payment is None:
        kind = jsonx.loads(body).get("type")  # signature verified: the body is Stripe's event
        return response(200, {"received": True, "ignored": kind})
    from billow.services import billing

    result = billing.handle_payment_event(c.namespace, payment, store=c.billing_store(), apps=c.billing_apps(),
                                          now=c.clock.now())
    logger.info("stripe webhook", extra={"eventId": payment.event_id, "stripeInvoiceId": payment.stripe_invoice_id,
                                         **result})
    return response(200, {"received": True, **result})


def _handle_app(c: Any, event: dict[str, Any], app_id: str) -> dict[str, Any]:
    """POST /api/v1/apps/{id}/stripe/webhook: verified with that app's webhook secret (the one Stripe gave when
    the app registered its endpoint), applied in the app's namespace; OpenMeter's StripeWebhookResponse."""
    from billow.errors import NotFound
    from billow.ids import is_ulid
    from billow.services import billing

    apps = c.app_store()
    namespace = apps.namespace_of_app(app_id) if is_ulid(app_id) else None
    doc = apps.get_app(namespace, app_id) if namespace else None
    if namespace is None or doc is None or doc.get("deletedAt") or doc["type"] != "stripe":
        raise NotFound(f"no Stripe app {app_id[:64]!r}")
    body = body_text(event)
    payment = parse_webhook(body.encode("utf-8"), header(event, "stripe-signature"),
                            str(apps.app_secrets(namespace, app_id).get("webhookSecret") or ""))
    out: dict[str, Any] = {"namespaceId": namespace, "appId": app_id}
    if payment is None:
        kind = jsonx.loads(body).get("type")
        return response(200, {**out, "message": f"ignored: {kind}", "received": True, "ignored": kind})
    with c.acting_for(namespace):
        result = billing.handle_payment_event(namespace, payment, store=c.billing_store(), apps=c.billing_apps(),
                                              now=c.clock.now())
    logger.info("stripe webhook", extra={"appId": app_id, "eventId": payment.event_id, **result})
    return response(200, {**out, "message": "processed", "received": True, **result})
