"""What happens outside Billow when an invoice moves: the invoicing apps (ports.InvoicingApp: sandbox, custom
invoicing, Stripe: customer sync, invoice creation and finalisation, void), the invoice documents (HTML + PDF to S3 or the data directory) and the invoice
notifications. The billing use-cases call these through one object (ports.BillingApps), which bootstrap builds
per namespace with the invoicing apps it chose from the settings."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from billow.errors import Conflict
from billow.ports import BillingStore, Clock, DocumentRenderer, InvoicingApp

if TYPE_CHECKING:
    from billow.adapters.stripe_app import StripeApp
    from billow.services.documents import DocumentStore
    from billow.services.notifications import NotificationStore

log = logging.getLogger("billow.billing")


class SandboxInvoicing:
    """Nothing leaves Billow: the invoice is issued at once, with no external ids. What a negative invoice owes the
    customer is Billow's to keep: its prepaid credit."""

    keeps_customer_credit = False

    def issue(self, invoice: dict[str, Any]) -> dict[str, Any] | None:
        return {}

    def void(self, invoice: dict[str, Any]) -> None:
        return None


class CustomInvoicing:
    """The user's own system issues the invoice and says so (POST /api/v1/apps/custom-invoicing/{id}/issuing/
    synchronized); it hears of a void and of a deleted draft through the invoice.updated notification (as
    OpenMeter's custom invoicing app: it does nothing itself on a delete). An installed app whose
    enableIssuingSyncHook is off does not wait: the invoice is issued at once, as OpenMeter's. What a negative invoice
    owes the customer becomes its prepaid credit in Billow."""

    keeps_customer_credit = False

    def __init__(self, issuing_hook: bool = True, draft_hook: bool = False) -> None:
        self.issuing_hook = issuing_hook
        self.draft_hook = draft_hook  # enableDraftSyncHook: drafts wait for POST .../draft/synchronized

    def issue(self, invoice: dict[str, Any]) -> dict[str, Any] | None:
        return None if self.issuing_hook else {}

    def void(self, invoice: dict[str, Any]) -> None:
        return None


class StripeCustomers(Protocol):
    """The Stripe customer of each Billow customer, as an installed Stripe app's customer data holds it."""

    def get(self, customer_id: str) -> str | None: ...

    def put(self, customer_id: str, stripe_customer_id: str) -> None: ...


class StripeInvoicing:
    """Stripe (adapters/stripe_app.py): the customer synced, one invoice item per billed line, finalised."""

    # Stripe books a negative invoice's total to the customer's Stripe balance (a credit) and applies it to the
    # customer's next Stripe invoice: Billow must not credit its prepaid balance as well (the money would come back
    # twice). https://docs.stripe.com/invoicing/customer/balance
    keeps_customer_credit = True

    def __init__(self, api_key: str | None, api_base: str | None,
                 stripe_customers: StripeCustomers | None = None) -> None:
        self.api_key, self.api_base = api_key, api_base
        self.stripe_customers = stripe_customers  # an installed app's customer data: the Stripe customer of each

    def _app(self) -> StripeApp:
        from billow.adapters.stripe_app import StripeApp

        if not self.api_key:
            raise Conflict("the Stripe app is not configured: set stripe_api_key (stripe_secret_arn in AWS)")
        return StripeApp(self.api_key, self.api_base)

    def issue(self, invoice: dict[str, Any]) -> dict[str, Any] | None:
        app = self._app()
        billow_customer = str(invoice["customer"]["id"])
        known = self.stripe_customers.get(billow_customer) if self.stripe_customers else None
        customer_id = app.ensure_customer(invoice["customer"], known)
        if self.stripe_customers is not None and customer_id != known:
            self.stripe_customers.put(billow_customer, customer_id)
        wf = invoice["workflow"]["workflow"]
        method = wf["payment"]["collectionMethod"]
        days = None
        if method == "send_invoice":
            from billow.domain.periods import RecurringPeriod
            from billow.timeutil import parse_rfc3339

            created = parse_rfc3339(invoice["createdAt"], "createdAt")
            due_after = wf["invoicing"]["dueAfter"]
            days = 0 if due_after in ("P0D", "PT0S", "PT0H") else \
                max(1, (RecurringPeriod(due_after, created).at(1) - created).days)
        out = app.issue_invoice(invoice, customer_id, collection_method=method, days_until_due=days)
        return {"invoicing": out["id"], "payment": out["id"], "stripeCustomerId": customer_id,
                "hostedInvoiceUrl": out.get("hostedInvoiceUrl")}

    def void(self, invoice: dict[str, Any]) -> None:
        self._app().void_invoice(invoice["externalIds"]["invoicing"])


class BillingApps:
    """ports.BillingApps for one namespace: the invoicing apps bootstrap built from the settings (by app type),
    the invoice documents and the invoice notifications."""

    def __init__(self, namespace: str, *, invoicing: Mapping[str, InvoicingApp], billing: BillingStore,
                 notifications: NotificationStore, documents: Callable[[], DocumentStore],
                 renderer: DocumentRenderer, clock: Clock,
                 installed: Callable[[str], InvoicingApp | None] | None = None) -> None:
        self.namespace, self._invoicing, self.billing = namespace, invoicing, billing
        self._installed = installed  # an installed app (by id) -> its invoicing app, None when unknown
        self.notifications, self._document_store, self.clock = notifications, documents, clock
        self.renderer = renderer
        self._rules: dict[str, bool] = {}  # invoice event type -> any active rule (asked once per apps object)

    # -- invoicing apps ------------------------------------------------------------------------------------
    def invoicing(self, app: str) -> InvoicingApp:
        """The invoicing app a billing profile names: an installed app by id (a Stripe app with its own API key),
        or a type (APP_TYPES: sandbox, custom_invoicing, stripe with the settings' key); anything else is the
        sandbox."""
        if app not in self._invoicing and self._installed is not None:
            found = self._installed(app)
            if found is not None:
                return found
        return self._invoicing.get(app) or self._invoicing["sandbox"]

    # -- documents and notifications -------------------------------------------------------------------------
    def issued(self, inv: dict[str, Any]) -> None:
        """A newly issued invoice (its documents, marked pending, are rendered by `render_pending_documents` after
        the run or on first request): the notification rules hear of it."""
        self._notify("invoice.created", inv)
        if inv["status"] == "paid":
            self._notify("invoice.paid", inv)

    def _documents_ready(self, inv: dict[str, Any]) -> DocumentStore:
        """The document store, with the invoice's HTML and PDF in it (rendered and stored now if still pending)."""
        from billow.services.documents import document_keys, owed_back, store_documents

        store = self._document_store()
        if (inv.get("documents") or {}).get("status") != "ready":
            if inv["status"] in ("gathering", "draft", "issuing"):
                raise Conflict(f"invoice {inv['number']} is {inv['status']}: documents exist once it is issued")
            # Its notifications again (dropped by the store when they were made): an invoice is saved issued, then its
            # invoice.created event is made, then its documents are rendered; a process killed between the first two
            # left an issued invoice with no event, and its documents pending is the one trace of that. (Only one that
            # was issued: a draft voided before it was has no invoice.created to make.)
            if inv.get("issuedAt"):
                self.issued(inv)
            owed = owed_back(self.namespace, inv, billing=self.billing, invoicing=self.invoicing)
            store_documents(self.namespace, inv, store, self.renderer, owed=owed)
            html_key, pdf_key = document_keys(self.namespace, inv)
            inv["documents"] = {"status": "ready", "html": html_key, "pdf": pdf_key}
            self._documents_saved(inv["id"], inv["documents"])
        return store

    def _documents_saved(self, invoice_id: str, ready: dict[str, Any]) -> None:
        """Mark the invoice's documents ready on the invoice as stored now, written only as read (edits.until_written).
        The invoice was read before its documents were rendered; saving that read whole overwrote what was written
        meanwhile: a payment (Stripe's invoice.paid, answered 200, never sent again) went back to payment_processing."""
        from billow import jsonx
        from billow.services.edits import until_written

        def step() -> tuple[None, Callable[[], None] | None]:
            doc = self.billing.get_invoice(self.namespace, invoice_id)
            if doc is None or doc.get("documents") == ready:
                return None, None
            before = jsonx.dumps(doc)
            new = {**doc, "documents": ready}
            return None, lambda: self.billing.put_invoice(self.namespace, new, expect_status=doc["status"],
                                                          expect_doc=before)

        until_written(step)

    def documents(self, inv: dict[str, Any], served_at: Callable[[str], str] | None = None) -> dict[str, Any]:
        """Fresh links to the invoice's HTML and PDF: presigned S3 URLs in AWS; with local files, `served_at(fmt)`
        (the API route that serves the bytes: a file:// path on the server's disk opens on no client)."""
        store = self._documents_ready(inv)
        if served_at is not None and not getattr(store, "presigned", False):
            return {"html": served_at("html"), "pdf": served_at("pdf")}
        return {"html": store.url(inv["documents"]["html"]), "pdf": store.url(inv["documents"]["pdf"])}

    def document(self, inv: dict[str, Any], fmt: str) -> tuple[bytes, str, str]:
        """(bytes, content type, file name) of the invoice's `html` or `pdf` document."""
        from billow.services.documents import HTML_TYPE, PDF_TYPE

        store = self._documents_ready(inv)
        key = inv["documents"][fmt]
        return store.get(key), HTML_TYPE if fmt == "html" else PDF_TYPE, key.rsplit("/", 1)[-1]

    def updated(self, inv: dict[str, Any]) -> None:
        self._notify("invoice.paid" if inv["status"] == "paid" else "invoice.updated", inv)

    def _notify(self, kind: str, inv: dict[str, Any]) -> None:
        """Invoice events for the notification rules (their delivery is the notification dispatcher's job)."""
        from billow.adapters.delivery import wake
        from billow.services.notifications import emit_invoice_event

        store = self.notifications
        if kind not in self._rules:
            self._rules[kind] = bool(store.active_rules([kind], self.namespace))
        if not self._rules[kind]:
            return
        try:
            emit_invoice_event(self.namespace, kind, inv, store=store, now=self.clock.now(), wake=wake)
        except Exception:  # the invoice stands; the event log shows what was not emitted
            log.exception("notification %s for invoice %s failed", kind, inv["number"])
