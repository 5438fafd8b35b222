"""`GET /api/v1/billing/customers` (OpenMeter's listBillingProfileCustomerOverrides): customers with their override
(if any), the profile that applies to them (`baseBillingProfileId`) and its merged supplier, workflow and apps
(`customerProfile`), filtered and ordered as OpenMeter's adapter does:

- `includeAllCustomers` (the spec's default: true): every customer, else only those with an override;
  `customersWithoutPinnedProfile`: only customers without an override;
- `billingProfile` (repeatable): overrides pinning one of these profiles, plus customers without an override when
  the default profile is one of them (they are billed by it);
- `customerId` (repeatable), `customerKey` (equal), `customerName` / `customerPrimaryEmail` (contains, case-folded);
- `orderBy` customerId (default) | customerName | customerKey | customerPrimaryEmail | customerCreatedAt, `order`
  ASC (default) | DESC; `expand` apps | customer; page / pageSize."""

from __future__ import annotations

from typing import Any

from billow.errors import ValidationFailed
from billow.ids import ULID_RE
from billow.ports import AppStore, BillingStore, MetaStore
from billow.services import pages, params
from billow.services.billing_profiles import RunContext, app_view, override_details

bad = ValidationFailed.at
ORDER_BY = {"customerId": "id", "customerName": "name", "customerKey": "key", "customerPrimaryEmail": "primaryEmail",
            "customerCreatedAt": "createdAt"}


def _ulids(qs: dict[str, list[str]], name: str) -> list[str]:
    values = qs.get(name) or []
    for v in values:
        if not ULID_RE.fullmatch(v):
            raise bad(name, f"{v[:64]!r} is not an id (a ULID)")
    return values


def list_customer_overrides(namespace: str, qs: dict[str, list[str]], *, store: BillingStore,
                            meta: MetaStore, apps: AppStore | None = None) -> dict[str, Any]:
    profiles_filter = _ulids(qs, "billingProfile")
    customer_ids = set(_ulids(qs, "customerId"))
    include_all = params.flag(qs, "includeAllCustomers", default=True)
    unpinned = params.flag(qs, "customersWithoutPinnedProfile")
    expand = set(params.choices(qs, "expand", ("apps", "customer")) or [])
    order_by = params.one(qs, "orderBy") or "customerId"
    if order_by not in ORDER_BY:
        raise bad("orderBy", f"must be one of {', '.join(ORDER_BY)}")
    order = params.one(qs, "order") or "ASC"
    if order not in ("ASC", "DESC"):
        raise bad("order", "must be ASC or DESC")
    key, name, email = params.one(qs, "customerKey"), params.one(qs, "customerName"), params.one(qs, "customerPrimaryEmail")
    pages.page([], qs)  # page and pageSize are checked before anything is read

    profiles = store.list_profiles(namespace)
    overrides = store.list_overrides(namespace)
    default_id = next((p["id"] for p in profiles if p.get("default")), None)
    customers = [c for c in meta.list_customers(namespace) if not c.get("deletedAt")]
    if customer_ids:
        customers = [c for c in customers if c["id"] in customer_ids]
    if key is not None:
        customers = [c for c in customers if c.get("key") == key]
    if name is not None:
        customers = [c for c in customers if name.casefold() in str(c.get("name") or "").casefold()]
    if email is not None:
        customers = [c for c in customers if email.casefold() in str(c.get("primaryEmail") or "").casefold()]

    def pinned(c: dict[str, Any]) -> bool:  # an override matching the billingProfile filter
        o = overrides.get(c["id"])
        return o is not None and (not profiles_filter or o.get("billingProfileId") in profiles_filter)

    if unpinned:
        customers = [c for c in customers if c["id"] not in overrides]
    elif not include_all:
        customers = [c for c in customers if pinned(c)]
    elif profiles_filter and default_id not in profiles_filter:
        customers = [c for c in customers if pinned(c)]
    else:
        customers = [c for c in customers if pinned(c) or c["id"] not in overrides]
    field = ORDER_BY[order_by]
    customers.sort(key=lambda c: (str(c.get(field) or ""), c["id"]), reverse=order == "DESC")

    ctx = RunContext(profiles, overrides, {})
    view = app_view(namespace, apps)
    items = [override_details(c, overrides.get(c["id"]), ctx, expand=sorted(expand), apps=view) for c in customers]
    return pages.page(items, qs)
