"""OpenMeter's v2 entitlement API: entitlements and grants addressed by customer (id or key) instead of subject.

A customer's entitlements live on its usage-attribution subjects (new ones on the first, as v1 does); the v2 shapes
name the customer (`customerId`, `customerKey`) instead of the subject, carry `issue` ({amount, priority}) beside
the deprecated `issueAfterReset`, and every list is a page object. v2 inputs add `issue` and `grants` (created
with a metered entitlement) and grants whose expiration is optional (never expiring) and whose
`maxRolloverAmount` defaults to their amount. Everything else is the v1 services' behaviour."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from billow.errors import Conflict, NotFound, ValidationFailed
from billow.ids import is_ulid
from billow.ports import MetaStore, UsageStore
from billow.services import balances, entitlements, pages, params
from billow.services.entitlements import EntitlementStore, amount, bad, both
from billow.timeutil import as_of, parse_rfc3339

ENTITLEMENT_ORDER = ("createdAt", "updatedAt")
GRANT_ORDER = ("id", "createdAt", "updatedAt")
TYPES = ("metered", "boolean", "static")


# -- customers --------------------------------------------------------------------------------------------
def customer(namespace: str, id_or_key: str, meta: MetaStore) -> dict[str, Any]:
    c = meta.get_customer(namespace, id_or_key)
    if c is None:
        raise NotFound(f"customerIdOrKey: customer {id_or_key!r} not found")
    return c


def subject_keys(c: dict[str, Any]) -> list[str]:
    return list((c.get("usageAttribution") or {}).get("subjectKeys") or [])


def _subject(c: dict[str, Any]) -> str:
    keys = subject_keys(c)
    if not keys:
        raise bad("customerIdOrKey", "the customer has no usageAttribution.subjectKeys to meter entitlements on")
    return keys[0]


def _through_customer(namespace: str, ref: str, cust: dict[str, Any], meta: MetaStore,
                      owned: str | None = None) -> entitlements.Through:
    """A write through the customer, checked where it is made under the customer's lock, which its deletion and
    update take: a customer deleted since the look is refused as a deleted one is (404); one whose update gave the
    entitlement's subject (`owned`) away is as one without the entitlement (404); for a new entitlement (no
    `owned`), one whose subject keys changed is a 409 (reload and try again). Never written through the customer
    after the deletion or update answered."""
    def check() -> None:
        now = meta.get_customer(namespace, cust["id"])
        if now is None:
            raise NotFound(f"customerIdOrKey: customer {ref!r} not found")
        if owned is not None and owned not in subject_keys(now):
            raise NotFound(f"entitlementIdOrFeatureKey: customer {ref!r} no longer has the entitlement (its subject "
                           f"{owned!r} was given up meanwhile)")
        if owned is None and subject_keys(now) != subject_keys(cust):
            raise Conflict(f"customer {ref!r}'s usageAttribution.subjectKeys changed meanwhile; reload it and try "
                           "again")

    return entitlements.Through(cust["id"], None, check)


class _Customers:
    """The customer of each entitlement's subject, looked up once per request."""

    def __init__(self, namespace: str, meta: MetaStore) -> None:
        self.namespace, self.meta = namespace, meta
        self.by_subject: dict[str, dict[str, Any] | None] = {}

    def of(self, subject: str) -> dict[str, Any] | None:
        if subject not in self.by_subject:
            cid = self.meta.customers_for_subjects(self.namespace, [subject]).get(subject)
            self.by_subject[subject] = self.meta.get_customer(self.namespace, cid) if cid else None
        return self.by_subject[subject]


def present(namespace: str, doc: dict[str, Any], cust: dict[str, Any], *, store: EntitlementStore,
            now: datetime) -> dict[str, Any]:
    out = balances.entitlement_json(namespace, doc, store=store, now=now)
    out.pop("subjectKey", None)
    out["customerId"] = cust["id"]
    if cust.get("key"):
        out["customerKey"] = cust["key"]
    if "issueAfterReset" in out:
        out["issue"] = {"amount": out["issueAfterReset"], "priority": out.get("issueAfterResetPriority", 1)}
    return out


# -- create, override -------------------------------------------------------------------------------------
def _v1_body(body: Any) -> tuple[dict[str, Any], list[Any]]:
    """The v2 input as the v1 builder reads it, and the grants to create with it."""
    if not isinstance(body, dict):
        raise bad("", "entitlement must be a JSON object")
    out = dict(body)
    grants = out.pop("grants", None)
    issue = out.pop("issue", None)
    if grants is not None and not isinstance(grants, list):
        raise bad("grants", "must be an array of grants")
    if issue is not None:
        if not isinstance(issue, dict):
            raise bad("issue", "must be an object with an amount")
        if "amount" not in issue:
            raise bad("issue.amount", "required")
        out["issueAfterReset"] = amount(issue["amount"], "issue.amount")
        prio = issue.get("priority", 1)
        if isinstance(prio, bool) or not isinstance(prio, int) or not 1 <= prio <= 255:
            raise bad("issue.priority", "must be an integer from 1 to 255")
        out["issueAfterResetPriority"] = prio
    if grants and out.get("issueAfterReset") is not None:
        raise bad("grants", "issue (issueAfterReset) and grants cannot be used together")
    if grants and body.get("type") != "metered":
        raise bad("grants", "only a metered entitlement has grants")
    return out, grants or []


def _feature_exists(namespace: str, body: dict[str, Any], store: EntitlementStore) -> None:
    """An unknown feature is a 404 (as OpenMeter's); an archived or unsuitable one stays the builder's 400."""
    for field in ("featureId", "featureKey"):
        ref = body.get(field)
        if isinstance(ref, str) and ref and store.get_feature(namespace, ref, include_archived=True) is None:
            raise NotFound(f"{field}: feature {ref!r} not found")


def _build(namespace: str, key: str, body: Any, *, store: EntitlementStore, meta: MetaStore,
           now: datetime) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    v1, grant_inputs = _v1_body(body)
    _feature_exists(namespace, v1, store)
    doc, issued = entitlements.build_entitlement(namespace, key, v1, store=store, meta=meta, now=now)
    grants = [entitlements.build_grant(namespace, doc, g, store=store, now=now, v2=True, at=f"grants[{i}].")
              for i, g in enumerate(grant_inputs)]
    return doc, ([issued] if issued is not None else []) + grants


def create(namespace: str, customer_ref: str, body: Any, *, store: EntitlementStore, meta: MetaStore,
           now: datetime, reserved: entitlements.Reserved | None = None) -> dict[str, Any]:
    """A new entitlement of the customer; with `reserved`, refused for a feature its subscriptions grant
    (entitlements.create_entitlement)."""
    cust = customer(namespace, customer_ref, meta)
    doc, grants = _build(namespace, _subject(cust), body, store=store, meta=meta, now=now)
    granted = entitlements.reserved_check(reserved, cust["id"], body, doc)

    def refuse_second() -> None:
        existing = store.find_entitlement(namespace, subject_keys(cust), doc["featureKey"])
        if existing is not None:
            raise Conflict(f"customer {customer_ref!r} already has an entitlement for feature {doc['featureKey']!r}",
                           extensions={"conflictingEntityId": existing["id"]})

    refuse_second()
    granted()
    try:  # checked again where it is written: another container may have created it through another subject
        store.put_entitlement(namespace, doc, created_at=now, party=subject_keys(cust), customer_id=cust["id"],
                              check=both(entitlements.feature_still_live(namespace, body, doc, store),
                                         _through_customer(namespace, customer_ref, cust, meta).check, granted),
                              grants=grants)
    except Conflict:  # created since the look: its 409 names that one, as the look's does
        refuse_second()
        raise
    return present(namespace, doc, cust, store=store, now=now)


def override(namespace: str, customer_ref: str, ref: str, body: Any, *, store: EntitlementStore, meta: MetaStore,
             now: datetime, reserved: entitlements.Reserved | None = None) -> dict[str, Any]:
    """A new entitlement in place of the customer's current one (which keeps its history); with `reserved`, refused
    as create's for a feature its subscriptions grant (checked before and where it is written)."""
    cust, old = resolve(namespace, customer_ref, ref, store=store, meta=meta, write=True)
    entitlements.not_managed(old)
    now = as_of(now, old.get("updatedAt"))  # made by a request begun after this one: replaced there, not before
    doc, grants = _build(namespace, old["subjectKey"], body, store=store, meta=meta, now=now)
    if doc["featureKey"] != old["featureKey"]:
        raise bad("featureKey", "an override must keep the feature of the entitlement it replaces")
    stamp = doc["createdAt"]
    old.update(deletedAt=stamp, updatedAt=stamp, activeTo=stamp)
    via = _through_customer(namespace, customer_ref, cust, meta, owned=old["subjectKey"])
    granted = entitlements.reserved_check(reserved, cust["id"], body, doc)
    granted()
    store.replace_entitlement(namespace, old["id"], doc, at=now, old_doc=old, grants=grants, customer_id=cust["id"],
                              check=both(entitlements.feature_still_live(namespace, body, doc, store), via.check,
                                         granted))
    return present(namespace, doc, cust, store=store, now=now)


# -- reads, delete, reset -----------------------------------------------------------------------------------
def resolve(namespace: str, customer_ref: str, ref: str, *, store: EntitlementStore, meta: MetaStore,
            write: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """The customer and its active entitlement with this id or feature key (404 for either unknown); to be written
    (`write`), refused while the customer holds another of its feature (entitlements.sole)."""
    cust = customer(namespace, customer_ref, meta)
    keys = subject_keys(cust)
    if not keys:
        raise NotFound(f"entitlementIdOrFeatureKey: customer {customer_ref!r} has no entitlement {ref!r}")
    try:
        doc = entitlements.resolve(namespace, keys, ref, store=store)
    except NotFound:
        raise NotFound(f"entitlementIdOrFeatureKey: customer {customer_ref!r} has no entitlement {ref!r}") from None
    return cust, entitlements.sole(namespace, keys, doc, store=store) if write else doc


def get(namespace: str, customer_ref: str, ref: str, *, store: EntitlementStore, meta: MetaStore,
        now: datetime) -> dict[str, Any]:
    cust, doc = resolve(namespace, customer_ref, ref, store=store, meta=meta)
    return present(namespace, doc, cust, store=store, now=now)


def delete(namespace: str, customer_ref: str, ref: str, *, store: EntitlementStore, meta: MetaStore,
           now: datetime) -> None:
    """By id, always (ending one of two of a feature is their repair); by the feature's key, refused while the
    customer holds two of it (entitlements.sole)."""
    cust, doc = resolve(namespace, customer_ref, ref, store=store, meta=meta)
    if doc["id"] != ref:
        entitlements.sole(namespace, subject_keys(cust), doc, store=store)
    entitlements.end_entitlement(namespace, doc, store=store, now=now, by_subscription=False,
                                 via=_through_customer(namespace, customer_ref, cust, meta, owned=doc["subjectKey"]))


def value(namespace: str, customer_ref: str, ref: str, at: datetime | None, *, store: EntitlementStore,
          meta: MetaStore, usage: UsageStore, now: datetime, cache: balances.BalanceCache | None) -> dict[str, Any]:
    cust, doc = resolve(namespace, customer_ref, ref, store=store, meta=meta)
    return balances.value(namespace, subject_keys(cust), doc["id"], at, store=store, meta=meta, usage=usage, now=now,
                          cache=cache)


def history(namespace: str, customer_ref: str, ref: str, qs: dict[str, list[str]], *, store: EntitlementStore,
            meta: MetaStore, usage: UsageStore, now: datetime) -> dict[str, Any]:
    cust, doc = resolve(namespace, customer_ref, ref, store=store, meta=meta)
    return balances.history(namespace, subject_keys(cust), doc["id"], qs, store=store, meta=meta, usage=usage, now=now)


def reset(namespace: str, customer_ref: str, ref: str, body: Any, *, store: EntitlementStore, meta: MetaStore,
          now: datetime) -> None:
    cust, doc = resolve(namespace, customer_ref, ref, store=store, meta=meta, write=True)
    entitlements.write_reset(namespace, doc, body, store=store, now=now,
                             via=_through_customer(namespace, customer_ref, cust, meta, owned=doc["subjectKey"]))


def get_by_id(namespace: str, entitlement_id: str, *, store: EntitlementStore, meta: MetaStore,
              now: datetime) -> dict[str, Any]:
    if not is_ulid(entitlement_id):
        raise ValidationFailed.at("entitlementId", "must be an entitlement id (a ULID)")
    doc = store.get_entitlement(namespace, entitlement_id, include_deleted=True)
    cust = _Customers(namespace, meta).of(doc["subjectKey"]) if doc is not None else None
    if doc is None or cust is None:
        raise NotFound(f"entitlementId: entitlement {entitlement_id!r} of a customer not found")
    return present(namespace, doc, cust, store=store, now=now)


# -- lists ----------------------------------------------------------------------------------------------------
def page(items: list[dict[str, Any]], qs: dict[str, list[str]], order_by: tuple[str, ...]) -> dict[str, Any]:
    """OpenMeter's v2 page object, ordered by `orderBy` (`order` ASC/DESC); page/pageSize, or limit/offset."""
    field = params.one(qs, "orderBy") or "createdAt"
    if field not in order_by:
        raise bad("orderBy", f"one of {', '.join(order_by)}")
    direction = params.one(qs, "order") or "ASC"
    if direction not in ("ASC", "DESC"):
        raise bad("order", "one of ASC, DESC")
    sort_key: Callable[[dict[str, Any]], Any] = (
        (lambda d: d["id"]) if field == "id" else (lambda d: parse_rfc3339(d[field], field)))
    return pages.v2_page(sorted(items, key=sort_key, reverse=direction == "DESC"), qs)


def list_for_customer(namespace: str, customer_ref: str, qs: dict[str, list[str]], *, store: EntitlementStore,
                      meta: MetaStore, now: datetime) -> dict[str, Any]:
    cust = customer(namespace, customer_ref, meta)
    keys = subject_keys(cust)
    docs = store.list_entitlements(namespace, keys, include_deleted=params.flag(qs, "includeDeleted")) if keys else []
    return page([present(namespace, d, cust, store=store, now=now) for d in docs], qs, ENTITLEMENT_ORDER)


def list_all(namespace: str, qs: dict[str, list[str]], *, store: EntitlementStore, meta: MetaStore,
             now: datetime) -> dict[str, Any]:
    kinds = params.choices(qs, "entitlementType", TYPES)
    exclude_inactive = params.flag(qs, "excludeInactive")
    wanted = _subjects_of_customers(namespace, qs, meta)
    features = set(qs.get("feature") or [])
    docs = store.list_entitlements(namespace, wanted) if wanted is None or wanted else []
    customers = _Customers(namespace, meta)
    out = []
    for d in docs:
        cust = customers.of(d["subjectKey"])
        if cust is None or not _listed(d, kinds, features, exclude_inactive, now):
            continue
        out.append(present(namespace, d, cust, store=store, now=now))
    return page(out, qs, ENTITLEMENT_ORDER)


def _subjects_of_customers(namespace: str, qs: dict[str, list[str]], meta: MetaStore) -> list[str] | None:
    """The subjects of the customers `customerKeys` and `customerIds` name (unknown ones name none); None when the
    query names no customer (every subject)."""
    if not (qs.get("customerKeys") or qs.get("customerIds")):
        return None
    wanted: list[str] = []
    for field in ("customerKeys", "customerIds"):
        for ref in qs.get(field) or []:
            c = meta.get_customer(namespace, ref)
            if c is not None and (c.get("key") == ref if field == "customerKeys" else c["id"] == ref):
                wanted += subject_keys(c)
    return wanted


def _listed(d: dict[str, Any], kinds: list[str] | None, features: set[str], exclude_inactive: bool, now: datetime) -> bool:
    """Whether an entitlement passes the list's filters: entitlementType, feature (key or id), excludeInactive."""
    if kinds and d["type"] not in kinds:
        return False
    if features and d["featureKey"] not in features and d["featureId"] not in features:
        return False
    return not (exclude_inactive and (parse_rfc3339(d["activeFrom"], "activeFrom") > now or (
        d.get("activeTo") and parse_rfc3339(d["activeTo"], "activeTo") <= now)))


# -- grants ---------------------------------------------------------------------------------------------------
def create_grant(namespace: str, customer_ref: str, ref: str, body: Any, *, store: EntitlementStore,
                 meta: MetaStore, now: datetime) -> dict[str, Any]:
    cust, ent = resolve(namespace, customer_ref, ref, store=store, meta=meta, write=True)
    doc = entitlements.build_grant(namespace, ent, body, store=store, now=now, v2=True)
    return entitlements.write_grant(namespace, ent, doc, store=store, now=now,
                                    via=_through_customer(namespace, customer_ref, cust, meta, owned=ent["subjectKey"]))


def list_grants(namespace: str, customer_ref: str, ref: str, qs: dict[str, list[str]], *,
                store: EntitlementStore, meta: MetaStore, now: datetime) -> dict[str, Any]:
    _, ent = resolve(namespace, customer_ref, ref, store=store, meta=meta)
    include = params.flag(qs, "includeDeleted")
    docs = [entitlements.grant_json(g, now) for g in store.list_grants(namespace, [ent["id"]])
            if include or not g.get("deletedAt")]
    return page(docs, qs, GRANT_ORDER)


def list_all_grants(namespace: str, qs: dict[str, list[str]], *, store: EntitlementStore, meta: MetaStore,
                    now: datetime) -> dict[str, Any]:
    include = params.flag(qs, "includeDeleted")
    ents: list[str] | None = None
    if qs.get("customer") or qs.get("feature"):
        keys: list[str] | None = None
        if qs.get("customer"):
            keys = [k for ref in qs["customer"] for k in subject_keys(customer(namespace, ref, meta))]
        features = set(qs.get("feature") or [])
        ents = [e["id"] for e in store.list_entitlements(namespace, keys, include_deleted=True)
                if not features or e["featureKey"] in features or e["featureId"] in features] if keys != [] else []
    docs = store.list_grants(namespace, ents) if ents is None or ents else []
    return page([entitlements.grant_json(g, now) for g in docs if include or not g.get("deletedAt")], qs,
                GRANT_ORDER)
