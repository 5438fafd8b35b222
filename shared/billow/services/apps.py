"""Apps as entities (OpenMeter's app API, issue 16): the marketplace (sandbox, Stripe by API key, custom
invoicing), installed apps with ULIDs, customer app data, and the Stripe customer portal and checkout sessions.

A namespace gets the sandbox app on first use (`ensure_sandbox`), and `provision` also gives it a default
billing profile on the sandbox app when it has none, as OpenMeter does when a namespace is created (`billow
serve` at start, `billow keys create`, the deploy's migrate function). That profile is marked in its metadata
(PROVISIONED) and yields to the first profile the user creates (billow.services.billing_profiles)."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from billow import jsonx
from billow.domain import apps as rules
from billow.domain.billing_profiles import WORKFLOW_DEFAULTS
from billow.errors import BillowError, Conflict, NotFound, ValidationFailed
from billow.ids import is_ulid, new_id
from billow.ports import AppStore, BillingStore, MetaStore, StripeAccount
from billow.services.edits import until_written
from billow.timeutil import as_of, format_rfc3339

if TYPE_CHECKING:
    from billow.services.directory import Taking

_log = logging.getLogger("billow.apps")

bad = ValidationFailed.at
PROVISIONED = "billow.provisioned"  # metadata key of the auto-provisioned default billing profile
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
StripeFor = Callable[[str], StripeAccount]  # API key -> the Stripe account it opens


# -- provisioning ---------------------------------------------------------------------------------------------------
def ensure_sandbox(namespace: str, *, apps: AppStore, now: datetime) -> dict[str, Any] | None:
    """The namespace's sandbox app, installed now if it never had one (one per namespace, also when two
    processes race); None once the user uninstalled every sandbox app."""
    live = [a for a in apps.list_apps(namespace) if a["type"] == "sandbox"]
    if live:
        return live[0]
    doc = rules.new_app(new_id(), "sandbox", "Sandbox", format_rfc3339(now),
                        description="Billow's sandbox app: invoices are issued and paid inside Billow.")
    made = apps.add_app(namespace, doc, singleton="sandbox")
    return None if made.get("deletedAt") else made


def _derived_id(base: str, salt: str) -> str:
    """A ULID with `base`'s time part and a random part derived from it: the same in every process."""
    digest = int.from_bytes(hashlib.sha256(f"{base}:{salt}".encode()).digest()[:10], "big")
    return base[:10] + "".join(_CROCKFORD[(digest >> (5 * i)) & 31] for i in range(15, -1, -1))


def provision(namespace: str, *, apps: AppStore, billing: BillingStore, now: datetime) -> dict[str, Any] | None:
    """The sandbox app, and a default billing profile on it when the namespace has no billing profile (its id
    is derived from the sandbox app's, so concurrent provisioning writes one profile). Returns the profile made."""
    sandbox = ensure_sandbox(namespace, apps=apps, now=now)
    if sandbox is None or billing.list_profiles(namespace, include_deleted=True):
        return None
    stamp = format_rfc3339(now)
    ref = {"id": sandbox["id"], "type": "sandbox"}
    doc: dict[str, Any] = {"id": _derived_id(sandbox["id"], "default-profile"), "name": "Sandbox",
           "description": "Default profile on the sandbox app (made when the namespace was first used)",
           "metadata": {PROVISIONED: "true"}, "supplier": {"name": "Billow", "addresses": [{"country": "US"}]},
           "workflow": {k: dict(v) for k, v in WORKFLOW_DEFAULTS.items()},
           "apps": {"tax": ref, "invoicing": ref, "payment": ref}, "default": True, "createdAt": stamp,
           "updatedAt": stamp, "deletedAt": None}
    try:
        billing.put_profile(namespace, doc)
    except Exception:  # another process wrote the same profile (same id) first: it is there, as it should be
        if billing.get_profile(namespace, doc["id"]) is None:
            raise
        return None
    return doc


def is_provisioned(profile: dict[str, Any]) -> bool:
    return (profile.get("metadata") or {}).get(PROVISIONED) == "true"


# -- apps -----------------------------------------------------------------------------------------------------------
def list_apps(namespace: str, *, apps: AppStore, now: datetime) -> list[dict[str, Any]]:
    ensure_sandbox(namespace, apps=apps, now=now)
    return apps.list_apps(namespace)


def get_app(namespace: str, id_: str, *, apps: AppStore) -> dict[str, Any]:
    doc = apps.get_app(namespace, id_) if is_ulid(id_) else None
    if doc is None or doc.get("deletedAt"):
        raise NotFound(f"app {id_[:64]!r} not found")
    return doc


def _edit(namespace: str, id_: str, apps: AppStore,
          edit: Callable[[dict[str, Any]], tuple[dict[str, Any], dict[str, Any] | None]], now: datetime,
          check: Callable[[], None] | None = None) -> dict[str, Any]:
    """Read the installed app, `edit` it (the new document and secrets, or None to keep them; it raises to refuse)
    and write it only if it is still stored as read, stamped never before the edit it follows: another container's
    update or uninstall landing since the read (on a clock ahead, say) makes this one read again, so it applies
    whole to what that one wrote (never this body beside the other's Stripe key, never an updatedAt moved back),
    or answers 404 (an uninstall stays, never undone)."""
    def step() -> tuple[dict[str, Any], Callable[[], None]]:
        doc = get_app(namespace, id_, apps=apps)
        new, secrets = edit(doc)
        new["updatedAt"] = format_rfc3339(as_of(now, doc.get("updatedAt")))
        return new, partial(apps.put_app, namespace, new, secrets, live=True, check=check,
                            expect_doc=jsonx.dumps(doc))

    return until_written(step)


def update_app(namespace: str, id_: str, body: object, *, apps: AppStore, stripe: StripeFor,
               now: datetime) -> dict[str, Any]:
    new, key = rules.replace_update(get_app(namespace, id_, apps=apps), body)  # refused before Stripe is asked
    if key is not None:
        _check_key(new, key, "secretAPIKey", stripe)

    def edit(doc: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
        new, _ = rules.replace_update(doc, body)
        return _with_key(namespace, new, key, apps) if key is not None else (new, None)

    return _edit(namespace, id_, apps, edit, now)


def update_stripe_api_key(namespace: str, id_: str, body: object, *, apps: AppStore, stripe: StripeFor,
                          now: datetime) -> None:
    doc = get_app(namespace, id_, apps=apps)
    if doc["type"] != "stripe":
        raise bad("id", f"app {id_} is a {doc['type']} app, not a Stripe app")
    if not isinstance(body, dict):
        raise bad("body", "must be {secretAPIKey}")
    key = rules.stripe_key(body.get("secretAPIKey"), "secretAPIKey")
    _check_key(doc, key, "secretAPIKey", stripe)
    _edit(namespace, id_, apps, lambda doc: _with_key(namespace, doc, key, apps), now)


def _check_key(doc: dict[str, Any], key: str, field: str, stripe: StripeFor) -> None:
    """A Stripe app's new API key must open the app's Stripe account."""
    try:
        account = stripe(key).account()
    except ValidationFailed:
        raise bad(field, "Stripe refused the API key") from None
    if account["id"] != doc.get("stripeAccountId"):
        raise bad(field, f"the key opens Stripe account {account['id']}, not this app's {doc.get('stripeAccountId')}")


def _with_key(namespace: str, doc: dict[str, Any], key: str, apps: AppStore) -> tuple[dict[str, Any], dict[str, Any]]:
    """A Stripe app's document and secrets with a new API key (checked: _check_key)."""
    secrets = {**apps.app_secrets(namespace, doc["id"]), "apiKey": key}
    return {**doc, "maskedAPIKey": rules.masked_api_key(key), "livemode": rules.key_livemode(key),
            "status": "ready"}, secrets


def uninstall_app(namespace: str, id_: str, *, apps: AppStore, billing: BillingStore, stripe: StripeFor,
                  now: datetime) -> None:
    """Uninstall an app no billing profile uses; a Stripe app's secrets are forgotten (its webhook path answers 404
    from then on) and, once that is written, its webhook endpoint is removed from Stripe (with the key as the
    uninstall found it: one set by an update at once is the one read again)."""
    def unused() -> None:
        users = [p["name"] for p in billing.list_profiles(namespace) if id_ in _profile_app_ids(p)]
        if users:
            raise Conflict(f"app {id_} is used by billing profile(s) {', '.join(users)}: change or delete them first")

    key: list[Any] = []

    def edit(doc: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
        unused()  # first where no lock is held (a 409 answered at once), then again under the lock
        key[:] = [apps.app_secrets(namespace, id_).get("apiKey")] if doc["type"] == "stripe" else []
        return {**doc, "deletedAt": format_rfc3339(now)}, {} if doc["type"] == "stripe" else None

    # Checked again where it is written, under the lock a profile naming the app takes (a profile written at once is
    # seen, or sees the app uninstalled); only as read (uninstalled meanwhile: 404, as after).
    doc = _edit(namespace, id_, apps, edit, now, check=unused)
    # Only once the uninstall is written: removed before, an uninstall refused under the lock (a profile made at once)
    # left an installed app whose Stripe events (payments) no longer came. Not inside the lock: on SQLite it is the
    # database's write lock, held for a call to Stripe. If Stripe fails now, the app is uninstalled all the same (its
    # webhook path answers 404) and the endpoint is left at Stripe, which stops calling an endpoint that keeps failing.
    webhook = doc.get("stripeWebhookId")
    if key and key[0] and webhook:
        try:
            stripe(str(key[0])).delete_webhook_endpoint(str(webhook))
        except BillowError:
            _log.warning("app %s uninstalled; its Stripe webhook endpoint %s was not removed", id_, webhook,
                         exc_info=True)


def _profile_app_ids(profile: dict[str, Any]) -> set[str]:
    return {a["id"] for a in (profile.get("apps") or {}).values() if isinstance(a, dict) and a.get("id")}


# -- marketplace ----------------------------------------------------------------------------------------------------
def listings() -> list[dict[str, Any]]:
    return list(rules.LISTINGS.values())


def install(namespace: str, app_type: str, body: object, *, apps: AppStore, billing: BillingStore,
            now: datetime) -> dict[str, Any]:
    """POST /marketplace/listings/{type}/install: apps that need no credentials (sandbox, custom invoicing)."""
    found = rules.listing(app_type)
    if "no_credentials_required" not in found["installMethods"]:
        raise bad("type", f"{found['name']} needs credentials: install it with POST "
                          f"/api/v1/marketplace/listings/{app_type}/install/apikey")
    name, create_profile, _ = rules.install_options(body, api_key=False)
    extra: dict[str, Any] = ({"enableDraftSyncHook": False, "enableIssuingSyncHook": False}
                             if app_type == "custom_invoicing" else {})
    doc = rules.new_app(new_id(), app_type, name or found["name"], format_rfc3339(now), **extra)
    apps.add_app(namespace, doc)
    return _installed(namespace, doc, create_profile, billing=billing, now=now)


def install_with_api_key(namespace: str, app_type: str, body: object, *, apps: AppStore, billing: BillingStore,
                         stripe: StripeFor, webhook_url: Callable[[str], str], now: datetime) -> dict[str, Any]:
    """POST /marketplace/listings/{type}/install/apikey (Stripe): the key is checked against Stripe (the account
    it opens), a webhook endpoint is registered at this app's webhook URL and its signing secret kept."""
    found = rules.listing(app_type)
    if "with_api_key" not in found["installMethods"]:
        raise bad("type", f"{found['name']} is installed without an API key: POST "
                          f"/api/v1/marketplace/listings/{app_type}/install")
    name, create_profile, key = rules.install_options(body, api_key=True)
    assert key is not None
    client = stripe(key)
    account = client.account()
    id_ = new_id()
    endpoint = client.create_webhook_endpoint(webhook_url(id_), id_)
    doc = rules.new_app(id_, "stripe", name or found["name"], format_rfc3339(now),
                        description=f"Stripe account {account['id']}", stripeAccountId=account["id"],
                        livemode=rules.key_livemode(key), maskedAPIKey=rules.masked_api_key(key),
                        stripeWebhookId=endpoint["id"])
    apps.add_app(namespace, doc, {"apiKey": key, "webhookSecret": endpoint["secret"]})
    return _installed(namespace, doc, create_profile, billing=billing, now=now)


def _installed(namespace: str, doc: dict[str, Any], create_profile: bool, *, billing: BillingStore,
               now: datetime) -> dict[str, Any]:
    """MarketplaceInstallResponse; with createBillingProfile, a profile on the app, made the default one when
    the default is on a sandbox app (or there is none), as OpenMeter does."""
    default_for: list[str] = []
    if create_profile:
        profiles = billing.list_profiles(namespace)
        current = next((p for p in profiles if p.get("default")), None)
        make_default = current is None or all(
            isinstance(a, dict) and a.get("type") == "sandbox" or a == "sandbox"
            for a in (current.get("apps") or {}).values())
        ref = {"id": doc["id"], "type": doc["type"]}
        stamp = format_rfc3339(now)
        supplier = (current or {}).get("supplier") or {"name": doc["name"]}
        profile = {"id": new_id(), "name": doc["name"], "description": f"Billing profile of app {doc['name']}",
                   "metadata": None, "supplier": supplier,
                   "workflow": {k: dict(v) for k, v in WORKFLOW_DEFAULTS.items()},
                   "apps": {"tax": ref, "invoicing": ref, "payment": ref}, "default": make_default,
                   "createdAt": stamp, "updatedAt": stamp, "deletedAt": None}
        billing.put_profile(namespace, profile)
        if make_default:
            default_for = list(rules.CAPABILITIES)
    return {"app": doc, "defaultForCapabilityTypes": default_for}


def oauth2_unavailable(app_type: str) -> None:
    rules.listing(app_type)
    raise bad("type", f"{app_type} cannot be installed with OAuth2 on Billow (it has no Stripe Connect platform "
                      "registration): install it with an API key, POST "
                      f"/api/v1/marketplace/listings/{app_type}/install/apikey")


# -- billing profiles' app references ----------------------------------------------------------------------------------
def link_profile_apps(namespace: str, parsed: dict[str, str], *, apps: AppStore, now: datetime) -> dict[str, Any]:
    """A profile's apps (billow.domain.billing_profiles.parse_apps: an app id or a type name per role) as
    OpenMeter's references {id, type}: an id must be an installed app with the role's capability; a type name
    is the namespace's first installed app of that type (custom invoicing is installed if it is not, waiting for
    the issuing call-back as it always did), or stays the type name: Stripe with the settings' key."""
    if "sandbox" in parsed.values():
        ensure_sandbox(namespace, apps=apps, now=now)
    installed = apps.list_apps(namespace)
    out: dict[str, Any] = {}
    for role, ref in parsed.items():
        if is_ulid(ref):
            doc = next((a for a in installed if a["id"] == ref), None)
            if doc is None:
                raise bad(f"apps.{role}", f"app {ref} is not installed")
            capability = rules.ROLE_CAPABILITY[role]
            if capability not in {c["type"] for c in doc["listing"]["capabilities"]}:
                raise bad(f"apps.{role}", f"app {ref} ({doc['type']}) cannot {capability}")
            out[role] = {"id": ref, "type": doc["type"]}
        else:
            doc = next((a for a in installed if a["type"] == ref), None)
            if doc is None and ref == "custom_invoicing":  # named by type before apps were entities: install it,
                doc = rules.new_app(new_id(), ref, "Custom Invoicing", format_rfc3339(now),  # waiting for the
                                    enableDraftSyncHook=False, enableIssuingSyncHook=True)  # issuing call-back
                apps.add_app(namespace, doc)
                installed.append(doc)
            out[role] = {"id": doc["id"], "type": ref} if doc else ref
    return out


def profile_apps_installed(namespace: str, linked: dict[str, Any], *, apps: AppStore) -> Callable[[], None]:
    """A profile write's check where it is written, under the lock of each app it names that the app's uninstall
    takes too (its check, no profile uses the app, would miss this profile): an app uninstalled since
    link_profile_apps found it is refused as one not installed is (400, `apps.ROLE`)."""
    def check() -> None:
        installed = {a["id"] for a in apps.list_apps(namespace)}
        for role, ref in linked.items():
            if isinstance(ref, dict) and ref.get("id") and ref["id"] not in installed:
                raise bad(f"apps.{role}", f"app {ref['id']} is not installed")

    return check


def profiles_view(namespace: str, profiles: list[dict[str, Any]], qs: dict[str, list[str]], *,
                  apps: AppStore) -> list[dict[str, Any]]:
    """Billing profiles as served: with `expand=apps` each app reference {id, type} is the app itself
    (OpenMeter's BillingProfileApps); any other expand value is a 400 naming it."""
    wanted = {v for raw in qs.get("expand", []) for v in raw.split(",")}
    if wanted - {"apps"}:
        raise bad("expand", "must be apps")
    if not wanted:
        return profiles
    return [{**profile, "apps": expanded_apps(namespace, profile.get("apps") or {}, apps=apps)} for profile in profiles]


def expanded_apps(namespace: str, refs: dict[str, Any], *, apps: AppStore) -> dict[str, Any]:
    """A profile's app references {id, type}, each as the app itself (OpenMeter's BillingProfileApps); a reference
    to no app stored (or a bare app type) as it is."""
    docs = {role: apps.get_app(namespace, ref["id"]) if isinstance(ref, dict) and ref.get("id") else None
            for role, ref in refs.items()}
    return {role: docs[role] or ref for role, ref in refs.items()}


# -- customer app data ------------------------------------------------------------------------------------------------
class StripeCustomerData:
    """One Stripe app's customer data as the Stripe invoicing app reads and records it (the Stripe customer of a
    Billow customer: the one set with PUT /customers/{c}/stripe or made by Checkout, else the one issuing made)."""

    def __init__(self, namespace: str, app_id: str, apps: AppStore) -> None:
        self.namespace, self.app_id, self.apps = namespace, app_id, apps

    def get(self, customer_id: str) -> str | None:
        found = self.apps.customer_apps(self.namespace, customer_id).get(self.app_id) or {}
        return found.get("stripeCustomerId")

    def put(self, customer_id: str, stripe_customer_id: str) -> None:
        found = self.apps.customer_apps(self.namespace, customer_id).get(self.app_id) or {}
        self.apps.put_customer_app(self.namespace, customer_id, self.app_id,
                                   {**found, "stripeCustomerId": stripe_customer_id})


def _customer(namespace: str, id_or_key: str, meta: MetaStore) -> dict[str, Any]:
    found = meta.get_customer(namespace, id_or_key)
    if found is None:
        raise NotFound(f"customer {id_or_key[:64]!r} not found")
    return found


def _data(app: dict[str, Any], stored: dict[str, Any] | None) -> dict[str, Any]:
    return {"id": app["id"], "type": app["type"], **(stored or {}), "app": app}


def list_customer_apps(namespace: str, customer_ref: str, app_type: str | None, *, apps: AppStore, meta: MetaStore,
                       now: datetime) -> list[dict[str, Any]]:
    """The customer's data for every installed app (Stripe apps only where the customer has a Stripe customer)."""
    if app_type is not None and app_type not in rules.APP_TYPES:
        raise bad("type", f"must be one of {', '.join(rules.APP_TYPES)}")
    customer = _customer(namespace, customer_ref, meta)
    stored = apps.customer_apps(namespace, customer["id"])
    out = []
    for app in list_apps(namespace, apps=apps, now=now):
        if app_type is not None and app["type"] != app_type:
            continue
        if app["type"] == "stripe" and app["id"] not in stored:
            continue
        out.append(_data(app, stored.get(app["id"])))
    return out


def _app_for(namespace: str, app_type: str, app_id: str | None, field: str, *, apps: AppStore,
             now: datetime) -> dict[str, Any]:
    if app_id is not None:
        doc = apps.get_app(namespace, app_id)
        if doc is None or doc.get("deletedAt"):
            raise bad(field, f"app {app_id} is not installed")
        if doc["type"] != app_type:
            raise bad(field, f"app {app_id} is a {doc['type']} app, not {app_type}")
        return doc
    found = next((a for a in list_apps(namespace, apps=apps, now=now) if a["type"] == app_type), None)
    if found is None:
        raise bad(field, f"no {app_type} app is installed")
    return found


def _check_stripe_customer(namespace: str, app: dict[str, Any], stripe_customer_id: str, field: str, *,
                           apps: AppStore, stripe: StripeFor) -> None:
    """The Stripe customer must exist in the app's Stripe account (as OpenMeter checks)."""
    key = apps.app_secrets(namespace, app["id"]).get("apiKey")
    if not key:
        raise Conflict(f"Stripe app {app['id']} has no API key")
    if not stripe(str(key)).customer_exists(stripe_customer_id):
        raise bad(field, f"Stripe customer {stripe_customer_id[:64]!r} not found in Stripe account "
                         f"{app.get('stripeAccountId')}")


def put_customer_apps(namespace: str, customer_ref: str, body: object, *, apps: AppStore, meta: MetaStore,
                      stripe: StripeFor, now: datetime) -> list[dict[str, Any]]:
    customer = _customer(namespace, customer_ref, meta)
    items = rules.customer_app_items(body)
    resolved = [(_app_for(namespace, it["type"], it.get("id"), f"[{i}].id" if it.get("id") else f"[{i}].type",
                          apps=apps, now=now), it) for i, it in enumerate(items)]
    for i, (app, item) in enumerate(resolved):
        if app["type"] == "stripe":
            _check_stripe_customer(namespace, app, item["stripeCustomerId"], f"[{i}].stripeCustomerId", apps=apps,
                                   stripe=stripe)
    out = []
    for app, item in resolved:
        data = {k: v for k, v in item.items() if k not in ("id", "type")}
        apps.put_customer_app(namespace, customer["id"], app["id"], data)
        out.append(_data(app, data))
    return out


def delete_customer_app(namespace: str, customer_ref: str, app_id: str, *, apps: AppStore, meta: MetaStore) -> None:
    customer = _customer(namespace, customer_ref, meta)
    get_app(namespace, app_id, apps=apps)
    apps.put_customer_app(namespace, customer["id"], app_id, None)


def _customer_stripe_app(namespace: str, customer: dict[str, Any], *, apps: AppStore, billing: BillingStore,
                         now: datetime) -> dict[str, Any]:
    """The Stripe app a customer pays through: its billing profile's Stripe app, else the first installed one."""
    from billow.services.billing_profiles import resolved_profile

    profile = resolved_profile(namespace, customer["id"], store=billing) or {}
    for role in ("payment", "invoicing"):
        ref = (profile.get("apps") or {}).get(role)
        if isinstance(ref, dict) and ref.get("type") == "stripe" and ref.get("id"):
            return get_app(namespace, ref["id"], apps=apps)
    found = next((a for a in apps.list_apps(namespace) if a["type"] == "stripe"), None)
    if found is None:
        raise Conflict("no Stripe app is installed: POST /api/v1/marketplace/listings/stripe/install/apikey")
    return found


def get_customer_stripe(namespace: str, customer_ref: str, *, apps: AppStore, billing: BillingStore,
                        meta: MetaStore, now: datetime) -> dict[str, Any]:
    customer = _customer(namespace, customer_ref, meta)
    app = _customer_stripe_app(namespace, customer, apps=apps, billing=billing, now=now)
    data = apps.customer_apps(namespace, customer["id"]).get(app["id"])
    if data is None:
        raise NotFound(f"customer {customer['id']} has no Stripe customer data for app {app['id']}")
    return _data(app, data)


def put_customer_stripe(namespace: str, customer_ref: str, body: object, *, apps: AppStore, billing: BillingStore,
                        meta: MetaStore, stripe: StripeFor, now: datetime) -> dict[str, Any]:
    customer = _customer(namespace, customer_ref, meta)
    data = rules.stripe_customer_data(body)
    app = _customer_stripe_app(namespace, customer, apps=apps, billing=billing, now=now)
    _check_stripe_customer(namespace, app, data["stripeCustomerId"], "stripeCustomerId", apps=apps, stripe=stripe)
    apps.put_customer_app(namespace, customer["id"], app["id"], data)
    return _data(app, data)


def portal_session(namespace: str, customer_ref: str, body: object, *, apps: AppStore, billing: BillingStore,
                   meta: MetaStore, stripe: StripeFor, now: datetime) -> dict[str, Any]:
    """POST /customers/{c}/stripe/portal: a Stripe customer portal session for the customer's Stripe customer."""
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise bad("body", "must be {configurationId?, locale?, returnUrl?}")
    configuration = rules.optional_text(body, "configurationId")
    locale = rules.optional_text(body, "locale")
    return_url = rules.optional_text(body, "returnUrl", url=True)
    data = get_customer_stripe(namespace, customer_ref, apps=apps, billing=billing, meta=meta, now=now)
    key = apps.app_secrets(namespace, data["id"]).get("apiKey")
    if not key:
        raise Conflict(f"Stripe app {data['id']} has no API key")
    s = stripe(str(key)).portal_session(data["stripeCustomerId"], configuration=configuration, locale=locale,
                                        return_url=return_url)
    return {"id": s["id"], "stripeCustomerId": s["customer"], "configurationId": s.get("configuration"),
            "livemode": bool(s.get("livemode")), "createdAt": _ts(s.get("created")),
            "returnUrl": s.get("return_url"), "locale": s.get("locale"), "url": s["url"]}


def _ts(seconds: Any) -> str | None:
    from datetime import UTC

    return format_rfc3339(datetime.fromtimestamp(int(seconds), UTC)) if isinstance(seconds, int) else None


_CHECKOUT_TEXT = {"cancelURL": "cancel_url", "successURL": "success_url", "returnURL": "return_url",
                  "clientReferenceID": "client_reference_id", "locale": "locale"}


def _checkout_options(body: dict[str, Any]) -> dict[str, Any]:
    opts = body.get("options")
    if not isinstance(opts, dict):
        raise bad("options", "is required: an object (CreateStripeCheckoutSessionRequestOptions)")
    params: dict[str, Any] = {"mode": "setup"}
    for key, stripe_key in _CHECKOUT_TEXT.items():
        value = rules.optional_text(opts, key, f"options.{key}", url=key.endswith("URL"))
        if value is not None:
            params[stripe_key] = value
    currency = opts.get("currency")
    if currency is not None:
        if not isinstance(currency, str) or len(currency) != 3 or not currency.isascii() or not currency.isalpha():
            raise bad("options.currency", "must be a three-letter ISO 4217 currency code")
        params["currency"] = currency.lower()
    else:
        params["allowed_payment_method_types"] = ["card"]
    ui = opts.get("uiMode")
    if ui is not None:
        if ui not in ("embedded", "hosted"):
            raise bad("options.uiMode", "must be embedded or hosted")
        params["ui_mode"] = f"{ui}_page"  # Stripe's names in the pinned API version: embedded_page, hosted_page
    address = opts.get("billingAddressCollection")
    if address is not None:
        if address not in ("auto", "required"):
            raise bad("options.billingAddressCollection", "must be auto or required")
        params["billing_address_collection"] = address
    expires = opts.get("expiresAt")
    if expires is not None:
        if not isinstance(expires, int) or isinstance(expires, bool) or not 0 < expires < 1 << 40:
            raise bad("options.expiresAt", "must be a Unix time in seconds")
        params["expires_at"] = expires
    meta = opts.get("metadata")
    if meta is not None:
        params["metadata"] = rules.metadata(meta, "options.metadata")
    return params


def checkout_session(namespace: str, body: object, *, apps: AppStore, meta: MetaStore, stripe: StripeFor,
                     now: datetime, taking: Taking | None = None) -> dict[str, Any]:
    """POST /stripe/checkout/sessions: a Stripe Checkout session in setup mode (the customer saves a payment
    method) for a Billow customer (by id or key, or created from `customer`, as POST /customers: `taking`), its
    Stripe customer made when it has none and remembered as its Stripe app data."""
    from billow.services import directory

    if not isinstance(body, dict):
        raise bad("body", "must be {customer, options, appId?, stripeCustomerId?}")
    params = _checkout_options(body)
    app = _app_for(namespace, "stripe", rules.app_id(body["appId"], "appId") if body.get("appId") is not None
                   else None, "appId", apps=apps, now=now)
    ref = body.get("customer")
    if not isinstance(ref, dict):
        raise bad("customer", "is required: {id}, {key} or a customer to create")
    if set(ref) == {"id"} or set(ref) == {"key"}:
        value = ref.get("id") or ref.get("key")
        if not isinstance(value, str) or not value:
            raise bad(f"customer.{next(iter(ref))}", "must be a string")
        found = meta.get_customer(namespace, value)
        if found is None:
            raise bad(f"customer.{next(iter(ref))}", f"customer {value[:64]!r} not found")
        customer = found
    else:
        customer = directory.create_customer(namespace, ref, meta=meta, now=now, taking=taking)
    given = body.get("stripeCustomerId")
    if given is not None and (not isinstance(given, str) or not given.startswith("cus_")):
        raise bad("stripeCustomerId", "must be a Stripe customer id (cus_...)")
    key = apps.app_secrets(namespace, app["id"]).get("apiKey")
    if not key:
        raise Conflict(f"Stripe app {app['id']} has no API key")
    client = stripe(str(key))
    if given is not None and not client.customer_exists(given):
        raise bad("stripeCustomerId", f"Stripe customer {given[:64]!r} not found in Stripe account "
                                      f"{app.get('stripeAccountId')}")
    stored = apps.customer_apps(namespace, customer["id"]).get(app["id"]) or {}
    stripe_customer = given or client.ensure_customer(customer, stored.get("stripeCustomerId"))
    if stored.get("stripeCustomerId") != stripe_customer:
        apps.put_customer_app(namespace, customer["id"], app["id"], {**stored, "stripeCustomerId": stripe_customer})
    params["customer"] = stripe_customer
    params.setdefault("metadata", {})
    params["metadata"] = {**params["metadata"], "billow_customer_id": customer["id"], "billow_app_id": app["id"]}
    s = client.checkout_session(params)
    out = {"customerId": customer["id"], "stripeCustomerId": stripe_customer, "sessionId": s["id"],
           "setupIntentId": s.get("setup_intent"), "clientSecret": s.get("client_secret"),
           "clientReferenceId": s.get("client_reference_id"), "customerEmail": s.get("customer_email"),
           "currency": s["currency"].upper() if s.get("currency") else None, "createdAt": _ts(s.get("created")),
           "expiresAt": _ts(s.get("expires_at")), "metadata": s.get("metadata"), "status": s.get("status"),
           "url": s.get("url"), "mode": s.get("mode"), "cancelURL": s.get("cancel_url"),
           "successURL": s.get("success_url"), "returnURL": s.get("return_url")}
    return {k: v for k, v in out.items() if v is not None}
