"""Apps (OpenMeter's app API): the marketplace listings (sandbox, Stripe, custom invoicing), an installed app's
document, and the request bodies of the app and customer-app operations parsed into what the service stores.
Pure functions, no I/O; a bad field is a ValidationFailed naming it."""

from __future__ import annotations

from typing import Any, Final

from billow.domain import fields
from billow.errors import NotFound, ValidationFailed
from billow.ids import is_ulid

bad = ValidationFailed.at

APP_TYPES: Final = ("sandbox", "stripe", "custom_invoicing")
CAPABILITIES: Final = ("collectPayments", "calculateTax", "invoiceCustomers")
ROLE_CAPABILITY: Final = {"tax": "calculateTax", "invoicing": "invoiceCustomers", "payment": "collectPayments"}


def _capabilities(prefix: str) -> list[dict[str, str]]:
    return [{"type": "collectPayments", "key": f"{prefix}_collect_payment", "name": "Payment",
             "description": "Process payments"},
            {"type": "calculateTax", "key": f"{prefix}_calculate_tax", "name": "Calculate Tax",
             "description": "Calculate tax for a payment"},
            {"type": "invoiceCustomers", "key": f"{prefix}_invoice_customer", "name": "Invoice Customer",
             "description": "Invoice a customer"}]


LISTINGS: Final[dict[str, dict[str, Any]]] = {
    "stripe": {"type": "stripe", "name": "Stripe", "description": "Send invoices, calculate tax and collect payments.",
               "capabilities": _capabilities("stripe"), "installMethods": ["with_api_key"]},
    "sandbox": {"type": "sandbox", "name": "Sandbox",
                "description": "Sandbox can be used to test Billow without external connections.",
                "capabilities": _capabilities("sandbox"), "installMethods": ["no_credentials_required"]},
    "custom_invoicing": {"type": "custom_invoicing", "name": "Custom Invoicing",
                         "description": "Custom Invoicing can be used to interface with third party invoicing and "
                                        "payment systems",
                         "capabilities": _capabilities("custom_invoicing"),
                         "installMethods": ["no_credentials_required"]},
}


def listing(app_type: str, field: str = "type") -> dict[str, Any]:
    """The marketplace listing of `app_type`; an unknown type is a 404 (a path parameter) naming it."""
    found = LISTINGS.get(app_type)
    if found is None:
        raise NotFound(f"no marketplace listing {app_type[:64]!r}: {field} must be one of {', '.join(APP_TYPES)}")
    return found


def new_app(id_: str, app_type: str, name: str, stamp: str, *, metadata: dict[str, Any] | None = None,
            **extra: Any) -> dict[str, Any]:
    """An installed app's document (OpenMeter's App: StripeApp, SandboxApp or CustomInvoicingApp)."""
    return {"id": id_, "type": app_type, "name": name, "description": extra.pop("description", None),
            "metadata": metadata, "createdAt": stamp, "updatedAt": stamp, "listing": LISTINGS[app_type],
            "status": "ready", **extra}


def masked_api_key(key: str) -> str:
    """OpenMeter's mask: the first 8 and the last 3 characters."""
    return f"{key[:8]}***{key[-3:]}"


def stripe_key(value: object, field: str) -> str:
    """A Stripe secret or restricted API key (sk_... / rk_...)."""
    if not isinstance(value, str) or not value.strip():
        raise bad(field, "is required: a Stripe secret key (sk_...) or restricted key (rk_...)")
    if not value.startswith(("sk_", "rk_")) or len(value) < 12 or len(value) > 255 or not value.isascii() \
            or any(c.isspace() for c in value):
        raise bad(field, "must be a Stripe secret key (sk_...) or restricted key (rk_...)")
    return value


def key_livemode(key: str) -> bool:
    return not key.startswith(("sk_test", "rk_test"))


def name(value: object, field: str = "name") -> str:
    if not isinstance(value, str) or not value.strip():
        raise bad(field, "is required (1 to 256 characters)")
    if len(value) > 256:
        raise bad(field, "must be at most 256 characters")
    return value


def metadata(value: object, field: str = "metadata") -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise bad(field, "must be an object of string values")
    return dict(value)


def install_options(body: object, *, api_key: bool) -> tuple[str | None, bool, str | None]:
    """(name or None, createBillingProfile, apiKey) of MarketplaceInstallRequestPayload / the API-key install."""
    if body is None and not api_key:
        body = {}
    if not isinstance(body, dict):
        raise bad("body", "must be an object")
    given = body.get("name")
    fields.not_null(body, ("name",))  # left out: the listing's name
    out_name = name(given) if given is not None else None
    create = body.get("createBillingProfile", True)
    if not isinstance(create, bool):
        raise bad("createBillingProfile", "must be a boolean")
    key = stripe_key(body.get("apiKey"), "apiKey") if api_key else None
    return out_name, create, key


def replace_update(doc: dict[str, Any], body: object) -> tuple[dict[str, Any], str | None]:
    """An AppReplaceUpdate applied to an app's document: (new document without its timestamps changed, the new
    Stripe secret API key or None)."""
    if not isinstance(body, dict):
        raise bad("body", "must be an app update: {type, name, metadata, ...}")
    if body.get("type") != doc["type"]:
        raise bad("type", f"must be {doc['type']!r}, the app's type")
    out = {**doc, "name": name(body.get("name")), "metadata": metadata(body.get("metadata"))}
    key = None
    if doc["type"] == "custom_invoicing":
        for flag in ("enableDraftSyncHook", "enableIssuingSyncHook"):
            if not isinstance(body.get(flag), bool):
                raise bad(flag, "is required: a boolean")
            out[flag] = body[flag]
    elif doc["type"] == "stripe" and body.get("secretAPIKey") is not None:
        key = stripe_key(body["secretAPIKey"], "secretAPIKey")
    return out, key


def app_id(value: object, field: str) -> str:
    if not isinstance(value, str) or not is_ulid(value):
        raise bad(field, "must be an app id (a ULID)")
    return value


def customer_app_items(body: object) -> list[dict[str, Any]]:
    """The items of PUT /customers/{c}/apps (CustomerAppDataCreateOrUpdateItem: {type, id?, ...})."""
    if not isinstance(body, list):
        raise bad("body", "must be a list of customer app data items")
    out = []
    for i, item in enumerate(body):
        at = f"[{i}]"
        if not isinstance(item, dict):
            raise bad(at, "must be an object")
        kind = item.get("type")
        if kind not in APP_TYPES:
            raise bad(f"{at}.type", f"must be one of {', '.join(APP_TYPES)}")
        clean: dict[str, Any] = {"type": kind}
        if item.get("id") is not None:
            clean["id"] = app_id(item["id"], f"{at}.id")
        if kind == "stripe":
            clean.update(stripe_customer_data(item, at))
        elif kind == "custom_invoicing" and item.get("metadata") is not None:
            clean["metadata"] = metadata(item["metadata"], f"{at}.metadata")
        out.append(clean)
    return out


def stripe_customer_data(body: object, at: str = "") -> dict[str, Any]:
    """StripeCustomerAppDataBase: {stripeCustomerId, stripeDefaultPaymentMethodId?}."""
    prefix = f"{at}." if at else ""
    if not isinstance(body, dict):
        raise bad(at or "body", "must be {stripeCustomerId, stripeDefaultPaymentMethodId?}")
    cid = body.get("stripeCustomerId")
    if not isinstance(cid, str) or not cid.startswith("cus_") or len(cid) > 255:
        raise bad(f"{prefix}stripeCustomerId", "is required: a Stripe customer id (cus_...)")
    out = {"stripeCustomerId": cid}
    pm = body.get("stripeDefaultPaymentMethodId")
    if pm is not None:
        if not isinstance(pm, str) or not pm.strip() or len(pm) > 255:
            raise bad(f"{prefix}stripeDefaultPaymentMethodId", "must be a Stripe payment method id")
        out["stripeDefaultPaymentMethodId"] = pm
    return out


def optional_text(body: dict[str, Any], key: str, field: str | None = None, *, url: bool = False) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > 2048:
        raise bad(field or key, "must be a non-empty string")
    if url and not value.startswith(("https://", "http://")):
        raise bad(field or key, "must be an http(s) URL")
    return value
