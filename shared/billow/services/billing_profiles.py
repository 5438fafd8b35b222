"""Billing profiles (supplier, workflow, apps) and customer overrides (OpenMeter's BillingProfile and
BillingProfileCustomerOverride): parsed and checked by billow.domain.billing_profiles, stored through
ports.BillingStore. The profile that applies to a customer is its override's profile, else the default one, with
the override's workflow on top."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from functools import partial
from typing import Any

from billow import jsonx
from billow.domain import fields
from billow.domain.billing_profiles import APP_TYPES as APP_TYPES  # re-exported for billow.services.billing
from billow.domain.billing_profiles import (
    WORKFLOW_DEFAULTS,
    merged_workflow,
    override_workflow,
    parse_apps,
    parse_supplier,
    parse_workflow,
)
from billow.errors import Conflict, NotFound, ValidationFailed
from billow.ids import new_id
from billow.ports import AppStore, BillingStore, MetaStore
from billow.services.edits import until_written
from billow.timeutil import as_of, format_rfc3339

bad = ValidationFailed.at


def _apps(namespace: str, body: object, apps: AppStore | None, now: datetime) -> dict[str, Any]:
    """The profile's apps: with the app store, as references to installed apps (billow.services.apps)."""
    parsed = parse_apps(body)
    if apps is None:
        return parsed
    from billow.services.apps import link_profile_apps

    return link_profile_apps(namespace, parsed, apps=apps, now=now)


def create_profile(namespace: str, body: object, *, store: BillingStore, now: datetime,
                   apps: AppStore | None = None) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise bad("body", "must be a billing profile")
    name = body.get("name")
    if not isinstance(name, str) or not name.strip():
        raise bad("name", "is required")
    stamp = format_rfc3339(now)
    # description and metadata were stored as sent (metadata 1e999999 made every later profile create a 500)
    description, metadata = fields.text(body, "description"), fields.metadata(body)
    if body.get("default") is not None and not isinstance(body["default"], bool):
        raise bad("default", "must be a boolean")
    supplier, workflow = parse_supplier(body.get("supplier")), parse_workflow(body.get("workflow"), WORKFLOW_DEFAULTS)
    linked = _apps(namespace, body.get("apps", {}), apps, now)
    doc = {"id": new_id(), "name": name, "description": description, "metadata": metadata,
           "supplier": supplier, "workflow": workflow, "apps": linked, "default": body.get("default") is True,
           "createdAt": stamp, "updatedAt": stamp, "deletedAt": None}
    # The first profile is the default one (the auto-provisioned sandbox profile does not count: it yields).
    if not [p for p in store.list_profiles(namespace) if not _provisioned(p)]:
        doc["default"] = True
    store.put_profile(namespace, doc, check=_apps_still_installed(namespace, linked, apps))
    return doc


def _apps_still_installed(namespace: str, linked: dict[str, Any],
                          apps: AppStore | None) -> Callable[[], None] | None:
    if apps is None:
        return None
    from billow.services.apps import profile_apps_installed

    return profile_apps_installed(namespace, linked, apps=apps)


def get_profile(namespace: str, id_: str, *, store: BillingStore, deleted: bool = False) -> dict[str, Any]:
    """The live profile (or, with `deleted`, a deleted one too, with its deletedAt: OpenMeter's GET by id)."""
    doc = store.get_profile(namespace, id_)
    if doc is None or (doc.get("deletedAt") and not deleted):
        raise NotFound(f"billing profile {id_!r} not found")
    return dict(doc)


def _provisioned(profile: dict[str, Any]) -> bool:
    from billow.services.apps import is_provisioned

    return is_provisioned(profile)


def _edit(namespace: str, id_: str, store: BillingStore, edit: Callable[[dict[str, Any]], None],
          deleted: Callable[[], None]) -> dict[str, Any]:
    """Read the profile, `edit` it (or raise) and write it only if it is still stored as read; a lost race
    (another container's edit, its delete, another profile made the default) reads it again, so no edit is lost and
    a deleted profile is never written back live: for one deleted (before, or by the race) `deleted` runs instead
    (raise, or return to leave it as it is)."""
    def step() -> tuple[dict[str, Any], Callable[[], None] | None]:
        doc = get_profile(namespace, id_, store=store, deleted=True)
        if doc.get("deletedAt"):
            deleted()
            return doc, None
        before = jsonx.dumps(doc)
        edit(doc)
        return doc, partial(store.put_profile, namespace, doc, expect_doc=before)

    return until_written(step)


def _already_deleted() -> None:
    # OpenMeter's UpdateProfile: ErrProfileAlreadyDeleted, a validation error (400), not a 404.
    raise bad("id", "profile already deleted")


def update_profile(namespace: str, id_: str, body: object, *, store: BillingStore, now: datetime,
                   apps: AppStore | None = None) -> dict[str, Any]:
    if get_profile(namespace, id_, store=store, deleted=True).get("deletedAt"):  # 404 (none), then this 400
        _already_deleted()
    if not isinstance(body, dict):
        raise bad("body", "must be a billing profile")
    # OpenMeter's BillingProfileReplaceUpdateWithWorkflow replaces the profile: a name, supplier and workflow left
    # out or null were answered 200 with the profile unchanged, as if replaced.
    if not isinstance(body.get("name"), str) or not body["name"].strip():
        raise bad("name", "is required (the profile is replaced)")
    for field_name in ("supplier", "workflow"):
        if not isinstance(body.get(field_name), dict):
            raise bad(field_name, "is required (the profile is replaced): an object")
    # `default` is required too (OpenMeter's request validator refuses a body without it; its service reads one
    # left out as false): one left out kept the profile's, so a PUT without it answered a default profile as if
    # replaced.
    if not isinstance(body.get("default"), bool):
        raise bad("default", "is required (the profile is replaced): true or false")
    fields.text(body, "description")
    fields.metadata(body)
    return _edit(namespace, id_, store, lambda doc: _apply(doc, body, now), _already_deleted)


def _apply(doc: dict[str, Any], body: dict[str, Any], now: datetime) -> None:
    """The replace, onto the profile as read (checked again by every retry of a lost race)."""
    if doc.get("default") and body["default"] is False:
        # OpenMeter's UpdateProfile: ErrDefaultProfileCannotBeUnset, a 400 (another profile made the default unsets
        # it); `default: false` was answered 200 and the profile stayed the default.
        raise bad("default", "the default profile cannot be unset: make another profile the default")
    doc["name"] = body["name"]
    # description and metadata are replaced as OpenMeter replaces them (a PUT's were ignored); the mark of the
    # auto-provisioned profile (Billow's, in its metadata) stays, so an edited sandbox profile still yields as before
    from billow.services.apps import PROVISIONED

    marker = {PROVISIONED: "true"} if _provisioned(doc) else {}
    metadata = {**(body.get("metadata") or {}), **marker}
    doc["description"], doc["metadata"] = body.get("description"), metadata or None
    doc["supplier"] = parse_supplier(body["supplier"])
    # the workflow is replaced too: a field left out is OpenMeter's default (fromAPIBillingWorkflow), not the
    # profile's (a PUT of {} kept every setting); subscriptionEndProrationMode left out stays (UpdateProfile)
    kept = {k: doc["workflow"]["invoicing"][k] for k in ("subscriptionEndProrationMode",)
            if k in doc["workflow"].get("invoicing", {})}
    base = {**WORKFLOW_DEFAULTS, "invoicing": {**WORKFLOW_DEFAULTS["invoicing"], **kept}}
    doc["workflow"] = parse_workflow(body["workflow"], base)
    # OpenMeter's replace body (BillingProfileReplaceUpdateWithWorkflow) has no apps: an `apps` sent is ignored and
    # the profile keeps the apps it was created with (billing/httpdriver/profile.go UpdateProfile).
    doc["default"] = body["default"]
    doc["updatedAt"] = format_rfc3339(as_of(now, doc.get("updatedAt")))  # never before the edit it follows


def delete_profile(namespace: str, id_: str, *, store: BillingStore, now: datetime) -> None:
    """A profile already deleted stays as it was (OpenMeter answers 204 again, also to the delete that loses a race
    to another); the default one is a 409."""

    def delete(doc: dict[str, Any]) -> None:
        if doc.get("default"):
            raise Conflict("the default billing profile cannot be deleted; make another one the default first")
        doc["deletedAt"] = format_rfc3339(now)

    _edit(namespace, id_, store, delete, lambda: None)


def put_override(namespace: str, customer_id: str, body: object, *, store: BillingStore, meta: MetaStore, now: datetime) -> dict[str, Any]:
    """OpenMeter's upsertBillingProfileCustomerOverride: the override stored, answered as the GET answers it."""
    customer = resolve_customer(namespace, customer_id, meta)
    if not isinstance(body, dict):
        raise bad("body", "must be {billingProfileId?, workflow?}")
    if body.get("billingProfileId") is not None:
        if not isinstance(body["billingProfileId"], str):
            raise bad("billingProfileId", "must be a billing profile's id")
        get_profile(namespace, body["billingProfileId"], store=store)
    # the override's own fields alone, as checked (merged over its profile's workflow when read): OpenMeter's only
    workflow = override_workflow(body.get("workflow"))
    stamp = format_rfc3339(now)
    doc = {"customerId": customer["id"], "billingProfileId": body.get("billingProfileId"),
           "workflow": workflow, "createdAt": stamp, "updatedAt": stamp}
    store.put_override(namespace, customer["id"], doc)
    return override_details(customer, doc, RunContext(store.list_profiles(namespace), {customer["id"]: doc}, {}))


def get_override(namespace: str, customer_id: str, *, store: BillingStore, meta: MetaStore,
                 expand: list[str] | None = None, apps: AppStore | None = None) -> dict[str, Any]:
    """OpenMeter's getBillingProfileCustomerOverride (BillingProfileCustomerOverrideWithDetails): the customer's
    override (if any), the profile that applies to it and that profile's supplier, workflow and apps with the
    override's workflow on top; with expand=customer, the customer; with expand=apps (and the app store), the
    profile's apps as the apps themselves."""
    customer = resolve_customer(namespace, customer_id, meta)
    override = store.get_override(namespace, customer["id"])
    ctx = RunContext(store.list_profiles(namespace), {customer["id"]: override} if override else {}, {})
    return override_details(customer, override, ctx, expand=expand, apps=app_view(namespace, apps))


def app_view(namespace: str, apps: AppStore | None) -> Callable[[dict[str, Any]], dict[str, Any]] | None:
    """A profile's app references -> the apps (services/apps.expanded_apps), or None without the app store."""
    if apps is None:
        return None
    from billow.services.apps import expanded_apps

    return partial(expanded_apps, namespace, apps=apps)


def override_details(customer: dict[str, Any], override: dict[str, Any] | None, ctx: RunContext, *,
                     expand: list[str] | None = None,
                     apps: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> dict[str, Any]:
    """BillingProfileCustomerOverrideWithDetails: `customerOverride` (with the override's own `workflow`, a
    Billow field, when it has one), `baseBillingProfileId`, `customerProfile` {supplier, workflow, apps} merged
    (with expand=apps, `apps` given, each app itself: OpenMeter's BillingProfileApps, as a profile's expand=apps
    shows them; the references {id, type} before, whatever was asked)."""
    item: dict[str, Any] = {}
    if override is not None:
        item["customerOverride"] = {k: v for k, v in {
            "customerId": customer["id"], "billingProfileId": override.get("billingProfileId"),
            "workflow": override.get("workflow"), "createdAt": override.get("createdAt"),
            "updatedAt": override.get("updatedAt")}.items() if v is not None}
    merged = ctx.profile(customer["id"])
    item["baseBillingProfileId"] = merged["id"] if merged else None
    if merged is not None:
        item["customerProfile"] = {"supplier": merged["supplier"], "workflow": merged["workflow"],
                                   "apps": apps(merged["apps"]) if apps and "apps" in (expand or []) else merged["apps"]}
    if "customer" in (expand or []):
        item["customer"] = customer
    return item


def delete_override(namespace: str, customer_id: str, *, store: BillingStore, meta: MetaStore) -> None:
    store.put_override(namespace, resolve_customer(namespace, customer_id, meta)["id"], None)


def resolved_profile(namespace: str, customer_id: str, *, store: BillingStore) -> dict[str, Any] | None:
    """The customer's override applied to its profile (the override's, else the default one)."""
    override = store.get_override(namespace, customer_id)
    return RunContext(store.list_profiles(namespace), {customer_id: override} if override else {}, {}).profile(customer_id)


def resolve_customer(namespace: str, id_or_key: str, meta: MetaStore) -> dict[str, Any]:
    found = meta.get_customer(namespace, id_or_key)
    if found is None:
        raise NotFound(f"customer {id_or_key!r} not found")
    return found


@dataclass
class RunContext:
    """What every customer of a run needs, read once: profiles, overrides, invoice counts (for numbers)."""

    profiles: list[dict[str, Any]]
    overrides: dict[str, dict[str, Any]]
    counts: dict[str, int]
    credits: dict[tuple[str, str], Decimal] = field(default_factory=dict)  # (customer, currency) -> balance

    def profile(self, customer_id: str) -> dict[str, Any] | None:
        override = self.overrides.get(customer_id) or {}
        found = next((p for p in self.profiles if p["id"] == override.get("billingProfileId")), None) or \
            next((p for p in self.profiles if p.get("default")), None)
        if found is not None and override.get("workflow"):
            found = {**found, "workflow": merged_workflow(override["workflow"], found["workflow"])}
        return found
