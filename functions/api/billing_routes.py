"""Billing routes (OpenMeter v1): billing profiles, customer overrides, invoices and their actions, invoicing
a customer's pending lines now, custom invoicing app call-backs; Billow's prepaid credit: top-up, balance and ledger."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter

from billow.bootstrap import Container, container
from billow.errors import Conflict, NotFound
from billow.services import billing, billing_customers, invoices, pages, params, pending_lines
from billow.timeutil import parse_rfc3339
from billow.web.http import path_param, query_multi, wants_csv
from functions.api.bodies import request_body
from functions.api.responses import document, no_content, ok, origin

router = APIGatewayHttpRouter()


def _c() -> tuple[Container, Any]:
    c = container()
    return c, c.billing_store()


def _body() -> Any:
    return request_body(router)


def _qs() -> dict[str, list[str]]:
    return query_multi(router.current_event.raw_event)


# -- profiles and overrides ------------------------------------------------------------------------------------
@router.get("/api/v1/billing/profiles")
def list_profiles() -> Response:
    from billow.services.apps import profiles_view

    c, store = _c()
    qs = _qs()
    listed = store.list_profiles(c.namespace, include_deleted=params.flag(qs, "includeArchived"))
    return ok(pages.page(profiles_view(c.namespace, listed, qs, apps=c.app_store()), qs, pages.PROFILES))


@router.post("/api/v1/billing/profiles")
def create_profile() -> Response:
    c, store = _c()
    return ok(billing.create_profile(c.namespace, _body(), store=store, now=c.clock.now(), apps=c.app_store()), 201)


@router.get("/api/v1/billing/profiles/<pid>")
def get_profile(pid: str) -> Response:
    from billow.services.apps import profiles_view

    c, store = _c()
    (doc,) = profiles_view(c.namespace, [billing.get_profile(c.namespace, path_param(pid), store=store, deleted=True)], _qs(),
                           apps=c.app_store())
    return ok(doc)


@router.put("/api/v1/billing/profiles/<pid>")
def update_profile(pid: str) -> Response:
    c, store = _c()
    return ok(billing.update_profile(c.namespace, path_param(pid), _body(), store=store, now=c.clock.now(),
                                     apps=c.app_store()))


@router.delete("/api/v1/billing/profiles/<pid>")
def delete_profile(pid: str) -> Response:
    c, store = _c()
    billing.delete_profile(c.namespace, path_param(pid), store=store, now=c.clock.now())
    return no_content()


@router.get("/api/v1/billing/customers")
def list_overrides() -> Response:
    c, store = _c()
    return ok(billing_customers.list_customer_overrides(c.namespace, _qs(), store=store, meta=c.meta,
                                                        apps=c.app_store()))


@router.get("/api/v1/billing/customers/<cid>")
def get_override(cid: str) -> Response:
    c, store = _c()
    expand = params.choices(_qs(), "expand", ("apps", "customer"))
    return ok(billing.get_override(c.namespace, path_param(cid), store=store, meta=c.meta, expand=expand,
                                   apps=c.app_store()))


@router.put("/api/v1/billing/customers/<cid>")
def put_override(cid: str) -> Response:
    c, store = _c()
    return ok(billing.put_override(c.namespace, path_param(cid), _body(), store=store, meta=c.meta, now=c.clock.now()))


@router.delete("/api/v1/billing/customers/<cid>")
def delete_override(cid: str) -> Response:
    c, store = _c()
    billing.delete_override(c.namespace, path_param(cid), store=store, meta=c.meta)
    return no_content()


@router.post("/api/v1/billing/customers/<cid>/invoices/pending-lines")
def add_pending_lines(cid: str) -> Response:
    c, store = _c()
    return ok(billing.add_pending_lines(c.namespace, path_param(cid), _body(), store=store, meta=c.meta,
                                       ents=c.entitlements, now=c.clock.now()), 201)


@router.post("/api/v1/billing/customers/<cid>/invoices/simulate")
def simulate_invoice(cid: str) -> Response:
    c, store = _c()
    return ok(pending_lines.simulate_invoice(c.namespace, path_param(cid), _body(), store=store, meta=c.meta,
                                             now=c.clock.now()))


@router.post("/api/v1/billing/customers/<cid>/credits")
def add_credit(cid: str) -> Response:
    c, store = _c()
    return ok(billing.add_credit(c.namespace, path_param(cid), _body(), store=store, meta=c.meta, now=c.clock.now()), 201)


@router.get("/api/v1/billing/customers/<cid>/credits")
def credit_ledger(cid: str) -> Response:
    """Billow: the customer's prepaid credit in a currency (?currency=USD): balance and ledger entries."""
    c, store = _c()
    return ok(invoices.credit_ledger(c.namespace, path_param(cid), _qs(), store=store, meta=c.meta))


# -- invoices --------------------------------------------------------------------------------------------------
@router.get("/api/v1/billing/invoices")
def list_invoices() -> Response:
    c, store = _c()
    qs = _qs()
    return ok(pages.page(billing.list_invoices(c.namespace, qs, store=store), qs, pages.INVOICES))


@router.post("/api/v1/billing/invoices/invoice")
def invoice_now() -> Response:
    """Invoice a customer's due lines now (OpenMeter's InvoicePendingLinesActionInput: customerId, asOf,
    filters.lineIds: those pending lines alone, and progressiveBillingOverride: whether the usage of periods in
    progress is invoiced up to now, over the customer's profile's progressiveBilling). A customer the run skipped is a 409 problem naming it and why (a
    concurrent billing run, e.g. the scheduled one, billed it meanwhile; no billing profile applies), never `201 []`,
    which says nothing was due."""
    c, store = _c()
    body = _body()
    if not isinstance(body, dict) or not isinstance(body.get("customerId"), str):
        raise billing.bad("customerId", "is required")
    customer = billing.resolve_customer(c.namespace, body["customerId"], c.meta)
    # Left out (or null) is now; anything else must be a date-time (an empty string, 0, [] or {} is no `asOf`).
    as_of = parse_rfc3339(body["asOf"], "asOf") if body.get("asOf") is not None else None
    filters = body.get("filters")
    if filters is not None and not isinstance(filters, dict):
        raise billing.bad("filters", "must be an object")
    line_ids = (filters or {}).get("lineIds")
    if line_ids is not None and not (isinstance(line_ids, list) and all(isinstance(x, str) for x in line_ids)):
        raise billing.bad("filters.lineIds", "must be an array of line ids")
    progressive = body.get("progressiveBillingOverride")
    if progressive is not None and not isinstance(progressive, bool):
        raise billing.bad("progressiveBillingOverride", "must be a boolean")
    from billow.services import jobs

    result = jobs.billing_run(c, customer_id=customer["id"], as_of=as_of, line_ids=line_ids, progressive=progressive)
    skipped = [s["reason"] for s in result.skipped if s["customerId"] == customer["id"]]
    if skipped:  # not `201 []`, which reads as "nothing was due"
        name = f"{customer.get('key')} ({customer['id']})" if customer.get("key") else customer["id"]
        made = [i["id"] for i in result.invoices]
        raise Conflict(f"customer {name} was not invoiced by this call: {'; '.join(skipped)}"
                       + (f" (this call made {', '.join(made)})" if made else "")
                       + f"; its invoices: GET /api/v1/billing/invoices?customers={customer['id']}; call again to "
                       "invoice what is still due", extensions={"customerId": customer["id"], "invoices": made})
    return ok(result.invoices, 201)


@router.get("/api/v1/billing/invoices/<iid>")
def get_invoice(iid: str) -> Response:
    c, store = _c()
    return ok(billing.get_invoice(c.namespace, path_param(iid), store=store))


@router.get("/api/v1/billing/invoices/<iid>/lines/<lid>/events")
def invoice_line_events(iid: str, lid: str) -> Response:
    """Billow (issue 21): the events behind a usage line, a page at a time; CSV with Accept: text/csv."""
    from billow.services import lineage

    c, store = _c()
    page = lineage.line_events(c.namespace, path_param(iid), path_param(lid), _qs(), store=store, usage=c.usage)
    if wants_csv(router.current_event.raw_event):
        headers = {"Link": f'<?cursor={page["nextCursor"]}>; rel="next"'} if page.get("nextCursor") else None
        return Response(200, "text/csv", lineage.line_events_csv(page), headers=headers)
    return ok(page)


@router.post("/api/v1/billing/invoices/<iid>/lines/<lid>/verify")
def verify_invoice_line(iid: str, lid: str) -> Response:
    """Billow (issue 21): the usage behind a line recomputed now, and what arrived since it was invoiced."""
    from billow.services import lineage

    c, store = _c()
    return ok(lineage.verify_line(c.namespace, path_param(iid), path_param(lid), store=store, usage=c.usage,
                                  now=c.clock.now()))


@router.get("/api/v1/billing/invoices/<iid>/documents")
def invoice_documents(iid: str) -> Response:
    """Billow: links to the invoice's HTML and PDF (rendered on first request if the run has not yet)."""
    c, store = _c()
    inv = billing.get_invoice(c.namespace, path_param(iid), store=store)
    base = f"{origin(router.current_event.raw_event)}/api/v1/billing/invoices/{inv['id']}/documents"
    return ok(c.billing_apps().documents(inv, served_at=lambda fmt: f"{base}/{fmt}"))


@router.get("/api/v1/billing/invoices/<iid>/documents/<fmt>")
def invoice_document(iid: str, fmt: str) -> Response:
    """Billow: the invoice's HTML or PDF itself (what the links above point to when documents are local files)."""
    c, store = _c()
    if fmt not in ("html", "pdf"):
        raise NotFound(f"no invoice document {path_param(fmt)!r}: html or pdf")
    inv = billing.get_invoice(c.namespace, path_param(iid), store=store)
    return document(*c.billing_apps().document(inv, fmt))


@router.put("/api/v1/billing/invoices/<iid>")
def update_invoice(iid: str) -> Response:
    c, store = _c()
    return ok(billing.update_invoice(c.namespace, path_param(iid), _body(), store=store, now=c.clock.now()))


@router.delete("/api/v1/billing/invoices/<iid>")
def delete_invoice(iid: str) -> Response:
    c, store = _c()
    billing.delete_invoice(c.namespace, path_param(iid), store=store, apps=c.billing_apps(), now=c.clock.now())
    return no_content()


def _action(action: str) -> Any:
    def handler(iid: str) -> Response:
        c, store = _c()
        return ok(billing.act(c.namespace, path_param(iid), action, store=store, apps=c.billing_apps(), now=c.clock.now()))
    return handler


for _name in ("advance", "approve", "retry", "void"):
    router.post(f"/api/v1/billing/invoices/<iid>/{_name}")(_action(_name))


@router.post("/api/v1/billing/invoices/<iid>/snapshot-quantities")
def snapshot_quantities(iid: str) -> Response:
    c, store = _c()
    return ok(invoices.snapshot_quantities(c.namespace, path_param(iid), store=store))


@router.post("/api/v1/billing/invoices/<iid>/taxes/recalculate")
def recalculate_taxes(iid: str) -> Response:
    c, store = _c()
    return ok(invoices.recalculate_taxes(c.namespace, path_param(iid), store=store, now=c.clock.now()))


# -- custom invoicing app call-backs (204 No Content, as OpenMeter answers them; the invoice is read with GET) -------
def _synced(stage: str) -> Any:
    def handler(iid: str) -> Response:
        c, store = _c()
        billing.custom_invoicing_synced(c.namespace, path_param(iid), stage, _body(), store=store,
                                        apps=c.billing_apps(), now=c.clock.now())
        return no_content()
    return handler


router.post("/api/v1/apps/custom-invoicing/<iid>/draft/synchronized")(_synced("draft"))
router.post("/api/v1/apps/custom-invoicing/<iid>/issuing/synchronized")(_synced("issuing"))


_TRIGGERS = {"paid": "paid", "payment_failed": "payment_failed", "payment_uncollectible": "uncollectible",
             "payment_overdue": "overdue", "action_required": "action_required", "void": "voided"}


@router.post("/api/v1/apps/custom-invoicing/<iid>/payment/status")
def custom_payment_status(iid: str) -> Response:
    c, store = _c()
    body = _body()
    trigger = body.get("trigger") if isinstance(body, dict) else None
    if not isinstance(trigger, str) or trigger not in _TRIGGERS:
        raise billing.bad("trigger", f"must be one of {', '.join(_TRIGGERS)}")
    billing.record_payment(c.namespace, path_param(iid), _TRIGGERS[trigger], store=store, apps=c.billing_apps(),
                           now=c.clock.now())
    return no_content()
