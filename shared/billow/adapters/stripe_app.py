"""The Stripe app: customer sync, invoice issuing (one Stripe invoice item per billed Billow line, prepaid credit
as a negative item), void, and the webhook events that bring payment status back.

Exactness: every amount is a decimal string already rounded to the currency's minor unit; it becomes Stripe's
integer amount by exact scaling (never float) in Stripe's own exponent for the currency (see `stripe_exponent`),
and anything Stripe cannot express (e.g. BHD 1.235: Stripe wants the last of three digits to be 0) is refused
before a request is sent. The items are checked to add up to Billow's total before anything is created, and
the Stripe invoice's total is checked against Billow's before it is finalised and again after.

Exactly once: every write carries an Idempotency-Key derived from Billow ids (the invoice id, the line id), so
a retry after a timeout or a 5xx replays Stripe's first answer instead of creating a second invoice or item.
Stripe keeps keys for at least 24 hours; a retry later than that must pass the Stripe ids Billow saved
(`ensure_customer(..., existing_id)`)."""

from __future__ import annotations

import decimal
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

from billow.domain.money import Currency
from billow.domain.payments import PaymentEvent, PaymentStatus
from billow.errors import BillowError, NotFound, ValidationFailed
from billow.exact import EXACT
from billow.timeutil import parse_rfc3339

if TYPE_CHECKING:
    import stripe

# https://docs.stripe.com/currencies: zero-decimal currencies take whole units; the three-decimal ones take
# three digits whose last must be 0; ISK stays two-decimal in the API but only whole krónur (multiples of 100).
# Every other currency uses its ISO 4217 minor unit.
STRIPE_ZERO_DECIMAL: Final = frozenset(
    "BIF CLP DJF GNF JPY KMF KRW MGA PYG RWF UGX VND VUV XAF XOF XPF".split())
STRIPE_THREE_DECIMAL: Final = frozenset("BHD JOD KWD OMR TND".split())
_STRIPE_MULTIPLE_OF: Final = {"ISK": 100, **{c: 10 for c in STRIPE_THREE_DECIMAL}}
_STRIPE_EXPONENT: Final = {"ISK": 2, **{c: 0 for c in STRIPE_ZERO_DECIMAL}, **{c: 3 for c in STRIPE_THREE_DECIMAL}}
MAX_ITEMS_PER_INVOICE: Final = 250  # Stripe's limit of invoice items on one invoice

WEBHOOK_STATUSES: Final[dict[str, PaymentStatus]] = {
    "invoice.paid": "paid",
    "invoice.payment_failed": "payment_failed",
    "invoice.marked_uncollectible": "uncollectible",
    "invoice.voided": "voided",
    "invoice.finalized": "finalized",
}


class StripeAppError(BillowError):
    """Stripe refused a request, or what Stripe holds does not match Billow."""

    status = 502
    title = "Bad Gateway"


class StripeUnavailable(StripeAppError):
    """Stripe could not be reached (timeout, connection error, 5xx): retrying is safe (idempotency keys)."""

    status = 503
    title = "Service Unavailable"


class StripeTotalMismatch(StripeAppError):
    """The Stripe invoice's total is not Billow's total to the minor unit."""


class WebhookSignatureInvalid(ValidationFailed):
    """The webhook's Stripe-Signature does not verify (wrong secret, altered body, stale timestamp)."""


# -- amounts ----------------------------------------------------------------------------------------------------
def stripe_exponent(currency: str) -> int:
    """How many decimal digits Stripe's integer amounts carry for `currency` (USD 2, JPY 0, KWD 3, ISK 2)."""
    code = Currency.of(currency).code
    return _STRIPE_EXPONENT.get(code, Currency.of(code).minor_units)


def to_minor(amount: Decimal | str, currency: str) -> int:
    """Exact Decimal -> Stripe integer amount; refuses amounts Stripe cannot express (never rounds)."""
    code = Currency.of(currency).code
    if not isinstance(amount, Decimal | str):
        raise TypeError(f"amount must be a Decimal or a decimal string, never {type(amount).__name__}")
    try:
        value = amount if isinstance(amount, Decimal) else Decimal(amount)
    except decimal.InvalidOperation:
        raise StripeAppError(f"{amount!r} is not a decimal amount") from None
    if not value.is_finite():
        raise StripeAppError(f"{amount!r} is not a finite amount")
    with decimal.localcontext(EXACT):
        scaled = value.scaleb(stripe_exponent(code))
        if scaled != scaled.to_integral_value():
            raise StripeAppError(f"{code} {value} has more decimals than Stripe takes for {code} "
                                 f"({stripe_exponent(code)})")
        units = int(scaled)
    multiple = _STRIPE_MULTIPLE_OF.get(code, 1)
    if units % multiple:
        raise StripeAppError(f"{code} {value}: Stripe takes {code} amounts in multiples of {multiple} minor units")
    return units


def from_minor(units: int, currency: str) -> Decimal:
    """Stripe integer amount -> exact Decimal (1234 USD -> Decimal('12.34'))."""
    with decimal.localcontext(EXACT):
        return Decimal(units).scaleb(-stripe_exponent(currency))


def _dec(value: Any, where: str) -> Decimal:
    if value is None:
        return Decimal(0)
    if isinstance(value, float):
        raise StripeAppError(f"{where}: amounts must be decimal strings, never floats")
    try:
        return Decimal(str(value))
    except decimal.InvalidOperation:
        raise StripeAppError(f"{where}: {value!r} is not a decimal amount") from None


# -- the invoice as Stripe items (pure) ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class PlannedItem:
    key: str  # what the item's Idempotency-Key is derived from: the Billow line id, or "credit"
    description: str
    amount: int  # Stripe minor units, negative for credit
    metadata: dict[str, str]
    period: tuple[int, int] | None  # unix seconds


def _period(doc: dict[str, Any], fallback: tuple[int, int] | None, where: str) -> tuple[int, int] | None:
    p = doc.get("period")
    if not isinstance(p, dict) or not p.get("from") or not p.get("to"):
        return fallback
    start = int(parse_rfc3339(p["from"], f"{where}.period.from").timestamp())
    end = int(parse_rfc3339(p["to"], f"{where}.period.to").timestamp())
    return (start, max(start, end))


def plan_items(invoice: dict[str, Any]) -> list[PlannedItem]:
    """One item per billed line (a line with children is billed by its children, one without by itself) for its
    amount + charges - discounts; the invoice's prepaid credit (creditsTotal) as one negative item. Checked to
    add up to the invoice's total exactly, else StripeAppError (nothing has been sent yet)."""
    currency = Currency.of(invoice.get("currency"), field="invoice.currency").code
    inv_id = str(invoice["id"])
    inv_period = _period(invoice, None, "invoice")
    items: list[PlannedItem] = []
    for i, line in enumerate(invoice.get("lines") or []):
        where = f"lines[{i}]"
        line_period = _period(line, inv_period, where)
        children = line.get("children") or []
        billed = [(f"{where}.children[{j}]", c) for j, c in enumerate(children)] if children else [(where, line)]
        for at, doc in billed:
            t = doc.get("totals") or {}
            with decimal.localcontext(EXACT):
                net = (_dec(t.get("amount"), f"{at}.totals.amount") + _dec(t.get("chargesTotal"), at)
                       - _dec(t.get("discountsTotal"), f"{at}.totals.discountsTotal"))
            items.append(PlannedItem(
                key=str(doc["id"]), description=str(doc.get("name") or line.get("name") or "Usage"),
                amount=to_minor(net, currency),
                metadata={"billow_invoice_id": inv_id, "billow_line_id": str(doc["id"])},
                period=_period(doc, line_period, at)))
    totals = invoice.get("totals") or {}
    credits = _dec(totals.get("creditsTotal"), "totals.creditsTotal")
    if credits:
        items.append(PlannedItem(key="credit", description="Prepaid credit applied", amount=-to_minor(credits, currency),
                                 metadata={"billow_invoice_id": inv_id, "billow_credit": "true"}, period=inv_period))
    expected = to_minor(_dec(totals.get("total"), "totals.total"), currency)
    planned = sum(it.amount for it in items)
    if planned != expected:
        raise StripeAppError(
            f"invoice {invoice.get('number') or inv_id}: its billed lines less credits come to "
            f"{from_minor(planned, currency)} {currency}, but its total is {from_minor(expected, currency)} "
            "(taxes or charges the Stripe app does not carry?); nothing was sent to Stripe")
    if len(items) > MAX_ITEMS_PER_INVOICE:
        raise StripeAppError(f"invoice {invoice.get('number') or inv_id} has {len(items)} items; Stripe takes at "
                             f"most {MAX_ITEMS_PER_INVOICE} on one invoice")
    return items


# -- webhooks -----------------------------------------------------------------------------------------------------
def parse_webhook(payload: bytes, signature_header: str, secret: str, *, tolerance: int = 300) -> PaymentEvent | None:
    """Verify a Stripe webhook (signature and timestamp within `tolerance` seconds) and read the payment event it
    carries; None for event types Billow does not act on and for invoices Billow did not create (no
    billow_invoice_id in their metadata). A bad signature is a 400 (WebhookSignatureInvalid)."""
    import stripe

    if not secret:  # nothing here takes Stripe's webhooks (no Stripe app): the caller's to know, not a server fault
        raise NotFound("no Stripe webhook is set up here: the Stripe app needs its webhook secret (stripe_webhook_secret; "
                       "stripe_secret_arn in AWS)")
    if not signature_header:
        raise WebhookSignatureInvalid("missing Stripe-Signature header",
                                      [{"field": "Stripe-Signature", "message": "missing"}])
    try:
        event = stripe.Webhook.construct_event(payload, signature_header, secret, tolerance).to_dict()
    except stripe.SignatureVerificationError as exc:
        reason = str(exc.user_message or exc)
        raise WebhookSignatureInvalid(f"Stripe-Signature does not verify: {reason}",
                                      [{"field": "Stripe-Signature", "message": reason}]) from None
    except ValueError as exc:  # signed, but not a JSON event
        raise WebhookSignatureInvalid(f"webhook body is not a Stripe event: {exc}",
                                      [{"field": "body", "message": "not a JSON event"}]) from None
    status = WEBHOOK_STATUSES.get(str(event.get("type")))
    if status is None:
        return None
    obj = event["data"]["object"]
    billow_id = (obj.get("metadata") or {}).get("billow_invoice_id")
    if not billow_id:
        return None
    return PaymentEvent(event_id=str(event["id"]), billow_invoice_id=str(billow_id),
                        stripe_invoice_id=str(obj["id"]), status=status,
                        at=datetime.fromtimestamp(int(event["created"]), UTC))


# -- the app ------------------------------------------------------------------------------------------------------
def _translate(exc: stripe.StripeError, doing: str) -> StripeAppError:
    import stripe

    request = f" (Stripe request {exc.request_id})" if getattr(exc, "request_id", None) else ""
    message = exc.user_message or str(exc) or type(exc).__name__
    if isinstance(exc, stripe.APIConnectionError) or (exc.http_status or 0) >= 500:
        return StripeUnavailable(f"Stripe unavailable while {doing}: {message}{request}; retrying is safe")
    if isinstance(exc, stripe.IdempotencyError):
        return StripeAppError(f"Stripe refused {doing}: the same Billow object was sent before with different "
                              f"details (idempotency key reused): {message}{request}")
    return StripeAppError(f"Stripe refused {doing}: {message}{request}")


class StripeApp:
    """Billow's side of one Stripe account. `api_base` points it at another address (a local stand-in)."""

    def __init__(self, api_key: str, api_base: str | None = None, *, timeout: float = 20.0,
                 max_network_retries: int = 2) -> None:
        import stripe  # here, not at module level: importing stripe takes ~0.6 s (its HTTP clients)

        base: Any = {"api": api_base.rstrip("/")} if api_base else None
        self._client = stripe.StripeClient(api_key, base_addresses=base, max_network_retries=max_network_retries,
                                           http_client=stripe.new_default_http_client(timeout=timeout))

    def _call(self, doing: str, fn: Any, *args: Any, key: str | None = None) -> Any:
        import stripe

        try:
            return fn(*args, {"idempotency_key": key} if key else None)
        except stripe.StripeError as exc:
            raise _translate(exc, doing) from exc

    def ensure_customer(self, customer: dict[str, Any], existing_id: str | None = None) -> str:
        """The Stripe customer of a Billow customer: `existing_id` if Stripe still has it, else created (with
        metadata billow_customer_id; the Idempotency-Key is derived from the Billow id, so a retry reuses it)."""
        import stripe

        v1 = self._client.v1
        if existing_id:
            try:
                found = v1.customers.retrieve(existing_id)
                if not getattr(found, "deleted", False):
                    return str(found.id)
            except stripe.InvalidRequestError as exc:
                if exc.code != "resource_missing":
                    raise _translate(exc, f"looking up customer {existing_id}") from exc
            except stripe.StripeError as exc:
                raise _translate(exc, f"looking up customer {existing_id}") from exc
        bid = str(customer["id"])
        params: dict[str, Any] = {"metadata": {"billow_customer_id": bid}}
        if customer.get("key"):
            params["metadata"]["billow_customer_key"] = str(customer["key"])
        if customer.get("name"):
            params["name"] = str(customer["name"])
        if customer.get("primaryEmail"):
            params["email"] = str(customer["primaryEmail"])
        created = self._call(f"creating the customer of {bid}", v1.customers.create, params,
                             key=f"billow-customer-{bid}")
        return str(created.id)

    def issue_invoice(self, invoice: dict[str, Any], stripe_customer_id: str, *,
                      collection_method: str = "charge_automatically",
                      days_until_due: int | None = None) -> dict[str, Any]:
        """Create the Stripe invoice of a Billow invoice (draft, items, check, finalise) and return
        {id, number, status, hostedInvoiceUrl, total}. Safe to call again after any failure."""
        if collection_method not in ("charge_automatically", "send_invoice"):
            raise ValueError(f"collection_method must be charge_automatically or send_invoice, not {collection_method!r}")
        if collection_method == "charge_automatically" and days_until_due is not None:
            raise ValueError("days_until_due applies to collection_method send_invoice only")
        items = plan_items(invoice)
        currency = Currency.of(invoice["currency"]).code
        expected = to_minor(_dec(invoice["totals"]["total"], "totals.total"), currency)
        bid = str(invoice["id"])
        label = str(invoice.get("number") or bid)
        v1 = self._client.v1
        params: dict[str, Any] = {
            "customer": stripe_customer_id, "currency": currency.lower(), "auto_advance": False,
            "collection_method": collection_method, "pending_invoice_items_behavior": "exclude",
            "metadata": {"billow_invoice_id": bid, "billow_invoice_number": label},
        }
        if collection_method == "send_invoice":
            if days_until_due is not None:
                params["days_until_due"] = days_until_due
            elif invoice.get("dueAt"):
                params["due_date"] = int(parse_rfc3339(invoice["dueAt"], "dueAt").timestamp())
            else:
                raise ValueError("send_invoice needs days_until_due or the invoice's dueAt")
        draft = self._call(f"creating the invoice of {label}", v1.invoices.create, params, key=f"billow-invoice-{bid}")
        for it in items:
            item: dict[str, Any] = {"customer": stripe_customer_id, "invoice": draft.id, "currency": currency.lower(),
                                    "amount": it.amount, "description": it.description, "metadata": it.metadata}
            if it.period is not None:
                item["period"] = {"start": it.period[0], "end": it.period[1]}
            self._call(f"adding {it.description!r} to {label}", v1.invoice_items.create, item,
                       key=f"billow-invoice-{bid}-item-{it.key}")
        current = self._call(f"reading back the invoice of {label}", v1.invoices.retrieve, draft.id)
        self._check_total(current, expected, currency, label)
        final = current
        if current.status == "draft":  # auto_advance from here: Stripe charges or e-mails as the method says
            final = self._call(f"finalizing the invoice of {label}", v1.invoices.finalize_invoice, draft.id,
                               {"auto_advance": True}, key=f"billow-invoice-{bid}-finalize")
            self._check_total(final, expected, currency, label)
        return {"id": str(final.id), "number": final.number, "status": final.status,
                "hostedInvoiceUrl": final.hosted_invoice_url, "total": format(from_minor(final.total, currency), "f")}

    @staticmethod
    def _check_total(stripe_invoice: Any, expected: int, currency: str, label: str) -> None:
        if stripe_invoice.total != expected:
            raise StripeTotalMismatch(
                f"Stripe invoice {stripe_invoice.id} for {label} totals {from_minor(stripe_invoice.total, currency)} "
                f"{currency}, Billow's total is {from_minor(expected, currency)} {currency}"
                + ("; it was left as a draft and nothing was charged" if stripe_invoice.status == "draft" else ""))

    def void_invoice(self, stripe_invoice_id: str) -> dict[str, Any]:
        """Void a finalised Stripe invoice (one already void is left as it is)."""
        v1 = self._client.v1
        current = self._call(f"reading invoice {stripe_invoice_id}", v1.invoices.retrieve, stripe_invoice_id)
        if current.status != "void":
            current = self._call(f"voiding invoice {stripe_invoice_id}", v1.invoices.void_invoice, stripe_invoice_id,
                                 None, key=f"billow-void-{stripe_invoice_id}")
        return {"id": str(current.id), "status": current.status}

    # -- the app's own set-up and the customer-facing sessions (OpenMeter's Stripe app) --------------------------
    def account(self) -> dict[str, Any]:
        """The Stripe account the API key opens ({id, livemode}); a key Stripe refuses is a 400 naming `field`."""
        import stripe

        try:
            acct = self._client.v1.accounts.retrieve_current()
        except stripe.AuthenticationError as exc:
            raise ValidationFailed.at("apiKey", f"Stripe refused the API key: {exc.user_message or exc}") from None
        except stripe.StripeError as exc:
            raise _translate(exc, "reading the Stripe account") from exc
        return {"id": str(acct.id), "livemode": bool(getattr(acct, "livemode", False))}

    def customer_exists(self, stripe_customer_id: str) -> bool:
        """Whether the Stripe account has this customer (and it is not deleted)."""
        import stripe

        try:
            found = self._client.v1.customers.retrieve(stripe_customer_id)
        except stripe.InvalidRequestError as exc:
            if exc.code == "resource_missing":
                return False
            raise _translate(exc, f"looking up customer {stripe_customer_id}") from exc
        except stripe.StripeError as exc:
            raise _translate(exc, f"looking up customer {stripe_customer_id}") from exc
        return not getattr(found, "deleted", False)

    def create_webhook_endpoint(self, url: str, app_id: str) -> dict[str, Any]:
        """The webhook endpoint Stripe sends this app's invoice events to: {id, secret} (the signing secret)."""
        params: dict[str, Any] = {"url": url, "enabled_events": sorted(WEBHOOK_STATUSES),
                                  "description": "Billow", "metadata": {"billow_app_id": app_id}}
        out = self._call("creating the webhook endpoint", self._client.v1.webhook_endpoints.create, params,
                         key=f"billow-webhook-{app_id}")
        return {"id": str(out.id), "secret": str(out.secret)}

    def delete_webhook_endpoint(self, endpoint_id: str) -> None:
        """Remove the app's webhook endpoint from Stripe (one already gone is fine)."""
        import stripe

        try:
            self._client.v1.webhook_endpoints.delete(endpoint_id)
        except stripe.InvalidRequestError as exc:
            if exc.code != "resource_missing":
                raise _translate(exc, f"deleting webhook endpoint {endpoint_id}") from exc
        except stripe.StripeError as exc:
            raise _translate(exc, f"deleting webhook endpoint {endpoint_id}") from exc

    def portal_session(self, stripe_customer_id: str, *, configuration: str | None = None,
                       locale: str | None = None, return_url: str | None = None) -> dict[str, Any]:
        """A Stripe customer portal session (billing_portal.sessions.create) as Stripe returned it."""
        params: dict[str, Any] = {"customer": stripe_customer_id}
        for k, v in (("configuration", configuration), ("locale", locale), ("return_url", return_url)):
            if v is not None:
                params[k] = v
        out = self._call(f"creating a portal session for {stripe_customer_id}",
                         self._client.v1.billing_portal.sessions.create, params)
        return dict(out.to_dict())

    def checkout_session(self, params: dict[str, Any]) -> dict[str, Any]:
        """A Stripe Checkout session (checkout.sessions.create with `params`) as Stripe returned it."""
        out = self._call("creating a checkout session", self._client.v1.checkout.sessions.create, params)
        return dict(out.to_dict())

    parse_webhook = staticmethod(parse_webhook)
