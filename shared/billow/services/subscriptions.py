"""Subscription use-cases: create (from a published plan or a custom plan), change plan, cancel, continue,
add-ons, the charges of a billing period, and the entitlements a subscription grants.

Timing is `immediate`, `next_billing_cycle` or an RFC 3339 instant; an instant in the past is refused (a past
invoice period is never rewritten). A customer has one subscription at a time: a new one may start only where
the previous one ends. Changing plan ends the current subscription at the change and starts the next one
there on the same billing anchor; each owes its share of the shared billing period (see
billow.domain.subscriptions). Entitlements follow the rate cards in force: `sync_entitlements` creates the
templates' entitlements for the customer's subject when their item starts and deletes them when it ends; it
runs after every change here and from the scheduled jobs."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from functools import partial
from typing import Any, Protocol

from billow import jsonx
from billow.domain import catalog as catalog_rules
from billow.domain import fields, pricing
from billow.domain import subscription_edits as sub_edits
from billow.domain import subscriptions as subs
from billow.domain.entitlements import minute
from billow.domain.usage import UsageQuery, final_value
from billow.errors import Conflict, NotFound, ValidationFailed
from billow.ids import new_id
from billow.ports import MetaStore, UsageStore
from billow.services import catalog, entitlements
from billow.services.balances import feature_filters
from billow.services.edits import until_written
from billow.services.entitlements import EntitlementStore
from billow.timeutil import as_of, format_rfc3339, parse_rfc3339

TIMINGS = ("immediate", "next_billing_cycle")
_GRACE = timedelta(minutes=1)  # clock skew between a client's "now" and ours


class SubscriptionStore(catalog.CatalogStore, Protocol):
    def put_subscription(self, namespace: str, doc: dict[str, Any], *, expect_doc: str | None = None,
                         check: Callable[[list[dict[str, Any]]], None] | None = None,
                         addon_id: str | None = None, others: Sequence[tuple[dict[str, Any], str]] = ()) -> None:
        """Save a subscription; with `expect_doc`, only if it is still stored as that JSON (else Conflict); with
        `check`, it runs (and raises to refuse) on the customer's subscriptions as they are where the write is made,
        one at a time with add_subscription's (and, with `addon_id`, with that add-on version's archive). `others`
        (each with the JSON it must still be stored as) are written with it, all or none (Conflict)."""
        ...

    def add_subscription(self, namespace: str, doc: dict[str, Any],
                         check: Callable[[list[dict[str, Any]]], None], *, ending: dict[str, Any] | None = None,
                         expect_doc: str | None = None) -> None:
        """Insert a new subscription if `check` passes (it raises when not) on the customer's subscriptions as they
        are when it is written: of two adds at once, the second is checked with the first. With `ending` (a plan
        change: the subscription it ends), that one is written in the same transaction, only if still stored as
        `expect_doc` (else Conflict, and neither is written)."""
        ...

    def get_subscription(self, namespace: str, id_: str) -> dict[str, Any] | None: ...

    def list_subscriptions(self, namespace: str, customer_id: str | None = None, *,
                           customer_ids: Sequence[str] | None = None) -> list[dict[str, Any]]: ...


bad = ValidationFailed.at


def _when(timing: Any, sub: dict[str, Any] | None, now: datetime, field: str = "timing") -> datetime:
    if timing is None or timing == "immediate":
        return now
    if timing == "next_billing_cycle":
        if sub is None:
            raise bad(field, "next_billing_cycle needs a running subscription; use immediate or an instant")
        return subs.cycle(sub).next_after(now)
    if not isinstance(timing, str):
        raise bad(field, "must be immediate, next_billing_cycle or an RFC 3339 date-time")
    try:
        at = parse_rfc3339(timing, field)
    except ValidationFailed:
        raise bad(field, "must be immediate, next_billing_cycle or an RFC 3339 date-time") from None
    if at < now - _GRACE:
        raise bad(field, f"{timing} is in the past; a change takes effect now or later")
    return max(at, now)


def _customer(namespace: str, body: dict[str, Any], meta: MetaStore) -> dict[str, Any]:
    ref = body.get("customerId") or body.get("customerKey")
    if not isinstance(ref, str):
        raise bad("customerId", "customerId or customerKey is required")
    found = meta.get_customer(namespace, ref)
    if found is None:
        raise bad("customerId" if body.get("customerId") else "customerKey", f"unknown customer {ref!r}")
    return found


def _plan_version(namespace: str, ref: Any, store: SubscriptionStore, now: datetime) -> dict[str, Any]:
    if not isinstance(ref, dict) or not isinstance(ref.get("key"), str):
        raise bad("plan", "must be {key, version?}")
    versions = store.list_versioned("plan", namespace, key=ref["key"])
    if ref.get("version") is not None:
        versions = [v for v in versions if v["version"] == ref["version"]]
    live = [v for v in versions if catalog_rules.status(v, now) == "active"]
    if not live:
        raise bad("plan", f"no active version of plan {ref['key']!r}"
                          f"{' version ' + str(ref['version']) if ref.get('version') is not None else ''}; publish it first")
    return live[-1]


def _plan_still_in_force(namespace: str, doc: dict[str, Any], store: SubscriptionStore, now: datetime) -> None:
    """Where a subscription on a plan version is written, under the lock its key's archive, deletion and next publish
    take (SqlCatalogStore.add_subscription): the version archived, deleted or replaced since the first look is
    refused as such a one is (400, `plan`), whatever this request's instant (an end stamped after it, at another
    container's clock, answered before this write): a version with an end takes no new subscription."""
    ref = doc.get("plan")
    if not ref:
        return
    found = store.get_versioned("plan", namespace, ref["id"])
    if (found is None or found.get("deletedAt") or found.get("effectiveTo") is not None
            or catalog_rules.status(found, now) != "active"):
        raise bad("plan", f"no active version of plan {ref['key']!r} version {ref['version']} (archived, replaced or "
                          "deleted meanwhile); publish it first")


def _overlap(subscriptions: list[dict[str, Any]], start: datetime, ignore: str | None = None) -> dict[str, Any] | None:
    for other in subscriptions:
        if other["id"] == ignore or other.get("deletedAt"):
            continue
        begin, end = subs.t(other["activeFrom"]), subs.t(other.get("activeTo"))
        if end is not None and begin is not None and end <= begin:
            continue  # canceled before it started: it never runs
        if end is None or end > start:
            return other
    return None


def _custom_plan(custom: Any) -> dict[str, Any]:
    """A custom plan, used at once: what a plan needs to be published (its billables aligned) is needed now.
    Errors name their field under `customPlan`."""
    if isinstance(custom, dict) and custom.get("key") is None:
        custom = {**custom, "key": "custom"}  # OpenMeter's custom plan input has no key
    try:
        plan = catalog_rules.parse_plan(custom)
        if problems := catalog_rules.alignment_problems(plan):
            raise catalog_rules.failure(problems)
    except ValidationFailed as exc:
        errors = [{**e, "field": f"customPlan.{e['field']}" if e.get("field") else "customPlan"} for e in exc.errors]
        raise ValidationFailed("; ".join(f"{e['field']}: {e['message']}" for e in errors), errors) from None
    return plan


def _labels(body: dict[str, Any]) -> None:
    """`name` and `description` strings, `metadata` an object of strings (or null): a subscription's (create,
    change) and a bought add-on's. They were stored and shown back as sent (description 1e999999 as Infinity)."""
    fields.text(body, "name")
    fields.text(body, "description")
    fields.metadata(body)


def _new(namespace: str, body: dict[str, Any], customer: dict[str, Any], *, start: datetime, store: SubscriptionStore,
         now: datetime, anchor: datetime | None = None) -> dict[str, Any]:
    _labels(body)
    if "customPlan" in body:
        plan = _custom_plan(body["customPlan"])
        plan_ref = None
    else:
        plan = _plan_version(namespace, body.get("plan"), store, now)
        plan_ref = {"id": plan["id"], "key": plan["key"], "version": plan["version"]}
    if customer.get("currency") and customer["currency"] != plan["currency"]:
        raise bad("plan", f"the plan bills in {plan['currency']}, the customer in {customer['currency']}")
    if body.get("billingAnchor") is not None:
        anchor = parse_rfc3339(str(body["billingAnchor"]), "billingAnchor")
    stamp = format_rfc3339(now)
    return {
        "id": new_id(), "name": body.get("name") or plan["name"], "description": body.get("description"),
        "metadata": body.get("metadata"), "customerId": customer["id"], "plan": plan_ref,
        "currency": plan["currency"], "billingCadence": plan["billingCadence"],
        "billingAnchor": format_rfc3339(anchor or start), "proRatingConfig": plan["proRatingConfig"],
        "alignment": plan["alignment"], "settlementMode": plan.get("settlementMode", "credit_then_invoice"),
        "costBasisMode": "dynamic", "costBasisPins": [], "activeFrom": format_rfc3339(start), "activeTo": None,
        "phases": subs.phase_timeline(plan["phases"], start, body.get("startingPhase")), "addons": [],
        "entitlements": {}, "createdAt": stamp, "updatedAt": stamp, "deletedAt": None,
    }


def create(namespace: str, body: Any, *, store: SubscriptionStore, meta: MetaStore, ents: EntitlementStore,
           now: datetime) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise bad("body", "must be a subscription object")
    customer = _customer(namespace, body, meta)
    start = _when(body.get("timing"), None, now)
    doc = _new(namespace, body, customer, start=start, store=store, now=now)

    def no_clash(subscriptions: list[dict[str, Any]]) -> None:
        clash = _overlap(subscriptions, start)
        if clash is not None:
            raise Conflict(f"customer {customer.get('key') or customer['id']!r} already has subscription {clash['id']} "
                           "in that time; change it (POST /api/v1/subscriptions/{id}/change) or cancel it first")

    def still_there(subscriptions: list[dict[str, Any]]) -> None:
        # Under the lock a deletion of the customer takes too (its check, no running subscription, would miss this
        # one): the customer deleted meanwhile is refused as a deleted one is.
        if meta.get_customer(namespace, customer["id"]) is None:
            raise bad("customerId" if body.get("customerId") else "customerKey", f"unknown customer {customer['id']!r}")
        _plan_still_in_force(namespace, doc, store, now)
        no_clash(subscriptions)
        _refuse_held(namespace, doc, "customPlan" if "customPlan" in body else "plan", ents=ents, store=store,
                     meta=meta, now=now)

    # checked again where it is written: another subscription or a hand-made entitlement may be there now
    store.add_subscription(namespace, doc, _guarded(namespace, store, customer["id"], still_there))
    return sync_entitlements(namespace, doc, store=store, meta=meta, ents=ents, now=now)


def check_customer_deletable(namespace: str, customer_id: str, *, store: SubscriptionStore, now: datetime) -> None:
    """A customer whose subscription still runs (or is scheduled) cannot be deleted, as OpenMeter's customer validator
    refuses it: the subscription would stay active with nobody to invoice, its usage never billed (409)."""
    live = [d["id"] for d in store.list_subscriptions(namespace, customer_id)
            if not d.get("deletedAt") and subs.status(d, now) in ("active", "canceled", "scheduled")]
    if live:
        raise Conflict(f"customer {customer_id} still has subscription(s) {', '.join(live)} running or scheduled: cancel "
                       "them (POST /api/v1/subscriptions/{id}/cancel) before deleting the customer")


def customers_on_plan(namespace: str, plan_key: str, *, store: SubscriptionStore, now: datetime) -> set[str]:
    """Ids of the customers whose subscription running now (active, or canceled and not yet ended) is on the plan
    with key `plan_key` (OpenMeter's `GET /customers?planKey=`)."""
    return {d["customerId"] for d in store.list_subscriptions(namespace)
            if not d.get("deletedAt") and (d.get("plan") or {}).get("key") == plan_key
            and subs.status(d, now) in ("active", "canceled")}


def with_running(namespace: str, customers: list[dict[str, Any]], *, expand: bool, store: SubscriptionStore,
                 now: datetime) -> list[dict[str, Any]]:
    """The customers with their subscriptions running now (active, or canceled and not yet ended; OpenMeter's
    ActiveAt: now) as OpenMeter's customer handlers show them: `currentSubscriptionId` (the first), and with `expand`
    (expand=subscriptions) `subscriptions`, each OpenMeter's Subscription (not expanded); both left out when none
    runs. (OpenMeter's list always shows currentSubscriptionId; its GET by id, only with expand=subscriptions.)"""
    wanted = {c["id"] for c in customers}
    # the page's customers' subscriptions only (not the namespace's: a list call stays as cheap as its page)
    docs = store.list_subscriptions(namespace, customer_ids=sorted(wanted)) if customers else []
    running: dict[str, list[dict[str, Any]]] = {}
    for d in sorted(docs, key=lambda d: (d["activeFrom"], d["id"])):
        if d["customerId"] in wanted and not d.get("deletedAt") and subs.status(d, now) in ("active", "canceled"):
            running.setdefault(d["customerId"], []).append(d)
    out = []
    for c in customers:
        if found := running.get(c["id"]):
            c = {**c, "currentSubscriptionId": found[0]["id"]}
            if expand:
                c["subscriptions"] = [present(d, now, expanded=False) for d in found]
        out.append(c)
    return out


def get(namespace: str, id_: str, *, store: SubscriptionStore) -> dict[str, Any]:
    doc = store.get_subscription(namespace, id_)
    if doc is None or doc.get("deletedAt"):
        raise NotFound(f"subscription {id_!r} not found")
    return doc


Check = Callable[[list[dict[str, Any]]], None]
"""A subscription write's check: it runs on the customer's subscriptions and raises to refuse."""


def _guarded(namespace: str, store: SubscriptionStore, customer_id: str, check: Check) -> Check:
    """The one way a subscription write is checked: `check` runs now, on the customer's subscriptions as read, and is
    returned to be the write's `check` (add_subscription, put_subscription), run again where the write is made under
    the customer's lock, which every subscription write of the customer, a new entitlement's write through the
    customer or its subjects and the customer's update take too: a subscription, a hand-made entitlement or a subject
    joined by another request meanwhile is seen, never written past."""
    check(store.list_subscriptions(namespace, customer_id))
    return check


def _update(namespace: str, id_: str, store: SubscriptionStore,
            edit: Callable[[dict[str, Any]], dict[str, Any]], *, live: bool = True,
            guard: Callable[[dict[str, Any], dict[str, Any], list[dict[str, Any]]], None] | None = None,
            addon_id: str | None = None) -> dict[str, Any]:
    """Read the subscription, `edit` it (it returns the document to write, or raises to refuse) and write it back
    only if it is still stored as it was read. Another container may edit it in between (two add-on adds at
    once): the lost race reads it again and edits what the other wrote, so neither edit is lost; `edit` checks
    afresh on each read (an add-on added meanwhile is a 409, as it would be one after the other). `live=False`
    edits a deleted one too (the entitlements it records). `guard` (the edited document, the one it was edited from
    as read, the customer's subscriptions) is the write's check (_guarded): run after the edit and again where the
    write is made (SubscriptionStore.put_subscription)."""
    def step() -> tuple[dict[str, Any], Callable[[], None]]:
        found = store.get_subscription(namespace, id_) if not live else get(namespace, id_, store=store)
        if found is None:
            raise NotFound(f"subscription {id_!r} not found")
        before = jsonx.dumps(found)
        edited = edit(found)
        check = None if guard is None else _guarded(namespace, store, edited["customerId"],
                                                    partial(guard, edited, jsonx.loads(before)))
        return edited, partial(store.put_subscription, namespace, edited, expect_doc=before, check=check,
                               addon_id=addon_id)

    return until_written(step)


def present(doc: dict[str, Any], now: datetime, *, expanded: bool,
            feature_of: Callable[[str], dict[str, Any] | None] | None = None) -> dict[str, Any]:
    """The served subscription; expanded (OpenMeter's SubscriptionExpanded): its phases and items, each item's
    `included.feature` (looked up with `feature_of`) and entitlement, and `alignment.currentAlignedBillingPeriod`
    while it runs."""
    out = {k: v for k, v in doc.items() if k not in ("phases", "addons", "entitlements")}
    out["status"] = subs.status(doc, now)
    if expanded:
        features: dict[str, dict[str, Any] | None] = {}

        def item(ph: dict[str, Any], rc: dict[str, Any], span: dict[str, Any] | None = None) -> dict[str, Any]:
            fk = rc.get("featureKey")
            if fk and feature_of is not None and fk not in features:
                features[fk] = feature_of(fk)
            out = _item_json(doc, ph, rc, features.get(fk or ""))
            if span is not None:  # an edited item's own span within its phase
                out["activeFrom"], out["activeTo"] = span.get("activeFrom") or ph["activeFrom"], span.get("activeTo")
            return out

        def timelines(ph: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
            spans = ph.get("itemSpans") or []
            out: dict[str, list[dict[str, Any]]] = {}
            for i, rc in enumerate(ph["rateCards"]):
                out.setdefault(rc["key"], []).append(item(ph, rc, spans[i] if i < len(spans) else None))
            return out

        if out["status"] in ("active", "canceled"):
            start, end = subs.cycle(doc).containing(now)
            out["alignment"] = {**(doc.get("alignment") or {}), "currentAlignedBillingPeriod": {
                "from": format_rfc3339(start), "to": format_rfc3339(end)}}
        out["phases"] = [{
            "id": subs.phase_id(doc, ph["key"]), "key": ph["key"], "name": ph["name"], "description": ph.get("description"),
            "metadata": ph.get("metadata"), "activeFrom": ph["activeFrom"], "activeTo": ph.get("activeTo"),
            "createdAt": doc["createdAt"], "updatedAt": doc["updatedAt"],
            "items": [versions[-1] for versions in timelines(ph).values()],
            "itemTimelines": timelines(ph),
        } for ph in doc["phases"]]
    return out


def _item_json(sub: dict[str, Any], phase: dict[str, Any], rc: dict[str, Any],
               feature: dict[str, Any] | None) -> dict[str, Any]:
    out = {"id": subs.item_id(sub, phase["key"], rc["key"]), "key": rc["key"], "name": rc["name"],
           "description": rc.get("description"), "metadata": rc.get("metadata"), "featureKey": rc.get("featureKey"),
           "billingCadence": rc.get("billingCadence"), "price": rc.get("price"), "discounts": rc.get("discounts"),
           "taxConfig": rc.get("taxConfig"), "currency": sub["currency"], "activeFrom": phase["activeFrom"],
           "activeTo": phase.get("activeTo"), "createdAt": sub["createdAt"], "updatedAt": sub["updatedAt"]}
    ent_id = (sub.get("entitlements") or {}).get(rc.get("featureKey") or "")
    included: dict[str, Any] = {}
    if feature is not None:
        included["feature"] = feature
    if ent_id:
        included["entitlement"] = {"id": ent_id}
    if included:
        out["included"] = included
    return out


def _as_of(doc: dict[str, Any], now: datetime) -> datetime:
    """The subscription judged as of its last written change when that is later than `now` (timeutil.as_of): a
    subscription another request ended at once is ended (409), not running until an end still ahead, and nothing
    this request writes is stamped before that change."""
    return as_of(now, doc.get("updatedAt"))


def _running_at(doc: dict[str, Any], now: datetime) -> datetime:
    """The instant an add-on change is made at (_as_of); a subscription ended by then is a 409."""
    instant = _as_of(doc, now)
    if subs.status(doc, instant) == "inactive":
        raise Conflict(f"subscription {doc['id']} has ended; its add-ons are no longer changed")
    return instant


def _end(doc: dict[str, Any], at: datetime, now: datetime) -> dict[str, Any]:
    if subs.status(doc, now) == "inactive":
        raise Conflict(f"subscription {doc['id']} has ended")
    start = parse_rfc3339(doc["activeFrom"], "activeFrom")
    doc["activeTo"] = format_rfc3339(max(at, start))
    doc["updatedAt"] = format_rfc3339(now)
    return doc


def cancel(namespace: str, id_: str, body: Any, *, store: SubscriptionStore, meta: MetaStore, ents: EntitlementStore,
           now: datetime) -> dict[str, Any]:
    timing = body.get("timing") if isinstance(body, dict) else None

    def end(doc: dict[str, Any]) -> dict[str, Any]:
        # A change written after this request's instant (another cancel at once, read again after losing the race):
        # ending it as of `now` would put this cancel before that change, e.g. move an immediate cancel's end
        # earlier than the one already answered.
        changed = subs.t(doc.get("updatedAt"))
        if changed is not None and changed > now:
            raise Conflict(f"subscription {id_} changed meanwhile; reload it and try again")
        return _end(doc, _when(timing, doc, now), now)

    def held(ended: dict[str, Any], read: dict[str, Any], _: list[dict[str, Any]]) -> None:
        # a canceled one canceled again later grants again what its first end cut off
        _refuse_held(namespace, ended, "subscriptionId", before=read, ents=ents, store=store, meta=meta, now=now)

    doc = _update(namespace, id_, store, end, guard=held)
    return sync_entitlements(namespace, doc, store=store, meta=meta, ents=ents, now=now)


def unschedule_cancelation(namespace: str, id_: str, *, store: SubscriptionStore, meta: MetaStore,
                           ents: EntitlementStore, now: datetime) -> dict[str, Any]:
    """Continue a subscription whose cancelation is scheduled (it runs on without an end)."""
    doc = until_written(partial(_continued, namespace, id_, store, now, deleting=False, ents=ents, meta=meta))
    return sync_entitlements(namespace, doc, store=store, meta=meta, ents=ents, now=now)


def _continued(namespace: str, id_: str, store: SubscriptionStore, now: datetime, *, deleting: bool,
               ents: EntitlementStore, meta: MetaStore) -> tuple[dict[str, Any], Callable[[], None]]:
    """A step of until_written: the canceled subscription continued (409 unless canceled) and its guarded write,
    checked where the write is made, under the lock a new subscription of the customer takes (its check, no other
    running then, would miss this one continuing): none of the customer's other subscriptions may start where this
    one (as stored) ends, and none of the features it grants again (those its cancelation cut off) may be held by
    the customer outside its subscriptions (_check_entitlements, 409 naming subscriptionId; under that lock, which
    the entitlement APIs' check of a new one takes too). `deleting` (a restore): the customer's subscriptions
    scheduled to start later are deleted in that write, each only as it was read, so that a refused continuation
    deletes none."""
    doc = get(namespace, id_, store=store)
    before = jsonx.dumps(doc)
    canceled = copy.deepcopy(doc)
    at = _as_of(doc, now)
    if subs.status(doc, at) != "canceled":
        raise Conflict(f"subscription {id_} is {subs.status(doc, at)}, not canceled: only a canceled one is "
                       "continued")
    later = [o for o in store.list_subscriptions(namespace, doc["customerId"]) if deleting and o["id"] != id_
             and not o.get("deletedAt") and subs.status(o, at) == "scheduled"]
    gone = {o["id"] for o in later}

    def no_next(subscriptions: list[dict[str, Any]]) -> None:
        me = next((d for d in subscriptions if d["id"] == id_), None)
        end = subs.t(me.get("activeTo")) if me is not None else None
        nxt = _overlap([d for d in subscriptions if d["id"] not in gone], end or now, ignore=id_)
        if nxt is not None:
            raise Conflict(f"subscription {nxt['id']} starts when this one ends; cancel or delete it first")
        _refuse_held(namespace, doc, "subscriptionId", before=canceled, ents=ents, store=store, meta=meta, now=at)

    deleted = [({**o, "deletedAt": format_rfc3339(now)}, jsonx.dumps(o)) for o in later]
    doc["activeTo"] = None
    doc["updatedAt"] = format_rfc3339(at)
    return doc, partial(store.put_subscription, namespace, doc, expect_doc=before,
                        check=_guarded(namespace, store, doc["customerId"], no_next), others=deleted)


def change(namespace: str, id_: str, body: Any, *, store: SubscriptionStore, meta: MetaStore, ents: EntitlementStore,
           now: datetime) -> dict[str, Any]:
    """End the subscription at the change and start the new plan there, on the same billing anchor."""
    if not isinstance(body, dict):
        raise bad("body", "must be {timing, plan | customPlan, ...}")
    if body.get("timing") is None:
        raise bad("timing", "is required: immediate, next_billing_cycle or an RFC 3339 date-time")
    current = get(namespace, id_, store=store)
    read_as = jsonx.dumps(current)
    now = _as_of(current, now)
    if subs.status(current, now) in ("inactive", "scheduled"):
        raise Conflict(f"subscription {id_} is {subs.status(current, now)}; only a running one can be changed")
    at = _when(body["timing"], current, now)
    customer = meta.get_customer(namespace, current["customerId"])
    if customer is None:
        raise NotFound(f"customer {current['customerId']} of the subscription was deleted")
    nxt = _new(namespace, body, customer, start=at, store=store, now=now,
               anchor=parse_rfc3339(current["billingAnchor"], "billingAnchor"))
    if nxt["currency"] != current["currency"]:
        raise bad("plan", f"the new plan bills in {nxt['currency']}, the subscription in {current['currency']}")

    def no_clash_nor_held(subscriptions: list[dict[str, Any]]) -> None:
        # Another subscription of the customer in the new one's time (one scheduled where this one ends, made by a
        # request beside this one or before it) refuses the change, as it refuses a new subscription.
        clash = _overlap(subscriptions, at, ignore=id_)
        if clash is not None:
            raise Conflict(f"customer {customer.get('key') or customer['id']!r} already has subscription "
                           f"{clash['id']} in the new plan's time; cancel or delete it first")
        if meta.get_customer(namespace, customer["id"]) is None:  # deleted meanwhile, under the deletion's lock
            raise NotFound(f"customer {current['customerId']} of the subscription was deleted")
        _plan_still_in_force(namespace, nxt, store, now)
        # Entitlements of features both plans grant move over (same entitlement, same balance) rather than being
        # deleted and re-created: the next subscription adopts them first, then the ended one lets go of the rest.
        _refuse_held(namespace, nxt, "customPlan" if "customPlan" in body else "plan",
                     ignore=set(current.get("entitlements", {}).values()), ents=ents, store=store, meta=meta, now=now)

    # Ended only as it was read, and in one transaction with the next one's insert under the customer's lock: a
    # change, add-on or cancel another container wrote meanwhile makes this one a 409 (reload and change again) rather
    # than being overwritten, and a subscription or hand-made entitlement made meanwhile is seen; neither is half
    # written.
    store.add_subscription(namespace, nxt, _guarded(namespace, store, customer["id"], no_clash_nor_held),
                           ending=_end(current, at, now), expect_doc=read_as)
    nxt = sync_entitlements(namespace, nxt, store=store, meta=meta, ents=ents, now=now)
    current = sync_entitlements(namespace, get(namespace, id_, store=store), store=store, meta=meta, ents=ents, now=now)
    return {"current": current, "next": nxt}


def edit(namespace: str, id_: str, body: Any, *, store: SubscriptionStore, meta: MetaStore, ents: EntitlementStore,
         now: datetime) -> dict[str, Any]:
    """OpenMeter's subscription edit (SubscriptionEdit: `customizations` applied in order at `timing`, default
    immediate; see billow.domain.subscription_edits). Added rate cards are checked as publishing a plan checks
    them (their feature exists and has a meter; aligned with the subscription's cadence when its billables must
    align). Nothing is stored unless every operation applies. Applied to the subscription as stored when it is
    written: an edit another container wrote meanwhile is kept, and this one is applied after it."""
    def apply(doc: dict[str, Any]) -> dict[str, Any]:
        instant = _as_of(doc, now)
        if subs.status(doc, instant) == "inactive":
            raise Conflict(f"subscription {id_} has ended; only a running or scheduled one can be edited")
        at = _when(body.get("timing") if isinstance(body, dict) else None, doc, instant)
        must_align = (doc.get("alignment") or {}).get("billablesMustAlign", True)

        def rate_card(raw: Any, field: str) -> dict[str, Any]:
            problems: catalog_rules.Problems = []
            rc = catalog_rules.parse_rate_card(raw, field, problems)
            if not problems and must_align and rc.get("billingCadence") not in (None, doc["billingCadence"]):
                problems.append((f"{field}.billingCadence", f"must equal the subscription's billingCadence "
                                                            f"({doc['billingCadence']}) while its billables must align"))
            if not problems and rc.get("featureKey"):
                problems = catalog_rules.publish_problems(
                    [(field, rc)], {rc["featureKey"]: ents.get_feature(namespace, rc["featureKey"])})
            if problems:
                raise catalog_rules.failure(problems)
            return rc

        edited, _ = sub_edits.apply(doc, body, at, rate_card)  # `doc` left as it was
        edited["updatedAt"] = format_rfc3339(instant)
        return edited

    def held(edited: dict[str, Any], read: dict[str, Any], _: list[dict[str, Any]]) -> None:
        _refuse_held(namespace, edited, "customizations", before=read,
                     ignore=set((read.get("entitlements") or {}).values()), ents=ents, store=store, meta=meta,
                     now=_as_of(read, now))

    edited = _update(namespace, id_, store, apply, guard=held)
    return sync_entitlements(namespace, edited, store=store, meta=meta, ents=ents, now=now)


def migrate(namespace: str, id_: str, body: Any, *, store: SubscriptionStore, meta: MetaStore, ents: EntitlementStore,
            now: datetime) -> dict[str, Any]:
    """OpenMeter's migrate: change to a later version of the subscription's own plan (`targetVersion`, default the
    latest), at `timing` (default immediate), as a plan change does (same billing anchor unless `billingAnchor`)."""
    body = {} if body is None else body
    if not isinstance(body, dict):
        raise bad("body", "must be {timing?, targetVersion?, startingPhase?, billingAnchor?}")
    current = get(namespace, id_, store=store)
    ref = current.get("plan")
    if not ref:
        raise bad("subscriptionId", f"subscription {id_} is on a custom plan: there is no plan version to migrate to")
    target = body.get("targetVersion")
    if target is not None and (isinstance(target, bool) or not isinstance(target, int) or target < 1):
        raise bad("targetVersion", "must be an integer of at least 1")
    if target is None:
        live = [v for v in store.list_versioned("plan", namespace, key=ref["key"])
                if catalog_rules.status(v, now) == "active"]
        target = live[-1]["version"] if live else ref["version"]
    if target <= ref["version"]:
        raise bad("targetVersion", f"subscription {id_} is on version {ref['version']} of plan {ref['key']!r}: "
                                   f"it migrates to a later version only")
    change_body = {"timing": body.get("timing") or "immediate", "plan": {"key": ref["key"], "version": target}}
    for key in ("startingPhase", "billingAnchor"):
        if body.get(key) is not None:
            change_body[key] = body[key]
    try:
        return change(namespace, id_, change_body, store=store, meta=meta, ents=ents, now=now)
    except ValidationFailed as exc:
        if exc.errors and exc.errors[0].get("field") == "plan":
            raise bad("targetVersion", exc.errors[0]["message"]) from None
        raise


def restore(namespace: str, id_: str, *, store: SubscriptionStore, meta: MetaStore, ents: EntitlementStore,
            now: datetime) -> dict[str, Any]:
    """OpenMeter's restore: a canceled subscription runs on without end; the customer's subscriptions scheduled to
    start later (e.g. the next plan of a change at the next billing cycle) are deleted, in one transaction with it
    under the customer's lock: they were deleted first, on their own, and a cancel landing before the restore's
    write made it a 409 that had deleted them all the same."""
    doc = until_written(partial(_continued, namespace, id_, store, now, deleting=True, ents=ents, meta=meta))
    return sync_entitlements(namespace, doc, store=store, meta=meta, ents=ents, now=now)


def delete(namespace: str, id_: str, *, store: SubscriptionStore, now: datetime) -> None:
    def mark(doc: dict[str, Any]) -> dict[str, Any]:
        if subs.status(doc, now) != "scheduled":
            raise Conflict(f"subscription {id_} has started; cancel it instead")
        doc["deletedAt"] = format_rfc3339(now)
        return doc

    _update(namespace, id_, store, mark)


# -- add-ons -----------------------------------------------------------------------------------------------
def add_addon(namespace: str, id_: str, body: Any, *, store: SubscriptionStore, meta: MetaStore,
              ents: EntitlementStore, now: datetime) -> dict[str, Any]:
    """Buy an add-on the subscription's plan version offers (by id, as OpenMeter's GetPlanAddon: a plan offers one
    version of a key, so a subscription never holds two). A subscription on a custom plan takes none: OpenMeter's
    "cannot add addon to a custom subscription" (400); it took any active add-on, v1 and then v2 of one key too."""
    current = get(namespace, id_, store=store)
    if not isinstance(body, dict):
        raise bad("body", "must be {addon: {id}, quantity, timing}")
    _labels(body)
    ref = body.get("addon")
    addon = store.get_versioned("addon", namespace, str(ref.get("id"))) if isinstance(ref, dict) else None
    if addon is None or catalog_rules.status(addon, now) != "active":
        raise bad("addon.id", "unknown or unpublished add-on")
    if current.get("plan") is None:
        raise bad("subscriptionId", f"subscription {id_} is on a custom plan: add-ons are bought through a plan "
                                    "that offers them, a custom subscription takes none")
    item_id = new_id()

    def add(doc: dict[str, Any]) -> dict[str, Any]:
        instant = _running_at(doc, now)
        if addon["currency"] != doc["currency"]:
            raise bad("addon.id", f"the add-on bills in {addon['currency']}, the subscription in {doc['currency']}")
        if any(a["addon"]["id"] == addon["id"] for a in doc["addons"]):
            raise Conflict(f"add-on {addon['key']!r} is already on the subscription; change its quantity instead")
        quantity = _quantity(body.get("quantity"), addon, _allowed_max(namespace, doc, addon, store))
        at = _when(body.get("timing"), doc, instant)
        stamp = format_rfc3339(instant)
        doc["addons"].append({
            "id": item_id, "subscriptionId": doc["id"], "name": body.get("name") or addon["name"],
            "description": body.get("description"), "metadata": body.get("metadata"),
            "addon": {"id": addon["id"], "key": addon["key"], "version": addon["version"],
                      "instanceType": addon["instanceType"]},
            "rateCards": addon["rateCards"], "timeline": [{"quantity": quantity, "activeFrom": format_rfc3339(at),
                                                           "activeTo": None}],
            "createdAt": stamp, "updatedAt": stamp})
        doc["updatedAt"] = stamp
        return doc

    def still_active_nor_held(doc: dict[str, Any], read: dict[str, Any], _: list[dict[str, Any]]) -> None:
        # Under the lock the add-on's archive takes: archived since the look, it is refused as an archived one is,
        # whatever this request's instant (an archive stamped after it, at another container's clock or a thread's
        # that read it later, answered before this write): an add-on version with an end is no longer added.
        found = store.get_versioned("addon", namespace, addon["id"])
        if found is None or catalog_rules.status(found, now) != "active" or found.get("effectiveTo") is not None:
            raise bad("addon.id", "unknown or unpublished add-on (archived meanwhile)")
        _refuse_held(namespace, doc, "addon.id", before=read, ents=ents, store=store, meta=meta, now=_as_of(read, now))

    doc = _update(namespace, id_, store, add, guard=still_active_nor_held, addon_id=addon["id"])
    item = next(a for a in doc["addons"] if a["id"] == item_id)
    sync_entitlements(namespace, doc, store=store, meta=meta, ents=ents, now=now)
    return present_addon(item, _as_of(doc, now))


def _allowed_max(namespace: str, doc: dict[str, Any], addon: dict[str, Any], store: SubscriptionStore) -> int | None:
    if doc.get("plan") is None:
        return None
    # The add-on version the plan offers (by id, as OpenMeter's GetPlanAddon is asked): another version of the key
    # (published after the plan took this one) is not offered, nor its maximum the one of this version.
    for pa in store.list_plan_addons(namespace, doc["plan"]["id"]):
        if pa["addon"]["id"] == addon["id"]:
            return pa.get("maxQuantity")
    raise bad("addon.id", f"plan {doc['plan']['key']!r} version {doc['plan']['version']} does not offer add-on "
                          f"{addon['key']!r} version {addon['version']}")


def _quantity(value: Any, addon: dict[str, Any], maximum: int | None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise bad("quantity", "must be an integer of at least 0 (0 removes the add-on)")
    if addon["instanceType"] == "single" and value > 1:
        raise bad("quantity", "a single-instance add-on has quantity 0 or 1")
    if maximum is not None and value > maximum:
        raise bad("quantity", f"the plan allows at most {maximum}")
    return value


def update_addon(namespace: str, id_: str, addon_id: str, body: Any, *, store: SubscriptionStore, meta: MetaStore,
                 ents: EntitlementStore, now: datetime) -> dict[str, Any]:
    """A new quantity from `timing` on (0 removes the add-on); the timeline keeps the earlier quantities."""
    def requantify(doc: dict[str, Any]) -> dict[str, Any]:
        instant = _running_at(doc, now)
        item = next((a for a in doc["addons"] if a["id"] == addon_id), None)
        if item is None:
            raise NotFound(f"add-on {addon_id!r} is not on subscription {id_}")
        if not isinstance(body, dict):
            raise bad("body", "must be {quantity, timing}")
        addon = store.get_versioned("addon", namespace, item["addon"]["id"]) or item["addon"]
        quantity = _quantity(body.get("quantity"), addon, _allowed_max(namespace, doc, addon, store))
        at = _when(body.get("timing"), doc, instant)
        last = item["timeline"][-1]
        if parse_rfc3339(last["activeFrom"], "activeFrom") >= at:
            last["quantity"] = quantity  # not started yet: replace it
        else:
            last["activeTo"] = format_rfc3339(at)
            item["timeline"].append({"quantity": quantity, "activeFrom": format_rfc3339(at), "activeTo": None})
        item["updatedAt"] = doc["updatedAt"] = format_rfc3339(instant)
        return doc

    def held(doc: dict[str, Any], read: dict[str, Any], _: list[dict[str, Any]]) -> None:
        _refuse_held(namespace, doc, "quantity", before=read, ents=ents, store=store, meta=meta, now=_as_of(read, now))

    doc = _update(namespace, id_, store, requantify, guard=held)
    item = next(a for a in doc["addons"] if a["id"] == addon_id)
    sync_entitlements(namespace, doc, store=store, meta=meta, ents=ents, now=now)
    return present_addon(item, _as_of(doc, now))


def present_addon(item: dict[str, Any], now: datetime) -> dict[str, Any]:
    current = [s for s in item["timeline"] if parse_rfc3339(s["activeFrom"], "activeFrom") <= now] or item["timeline"][:1]
    seg = current[-1]
    live = [s for s in item["timeline"] if s["quantity"] > 0]
    return {**item, "quantity": seg["quantity"], "quantityAt": seg["activeFrom"],
            "activeFrom": item["timeline"][0]["activeFrom"],
            "activeTo": live[-1]["activeTo"] if live else item["timeline"][0]["activeFrom"]}


# -- charges -----------------------------------------------------------------------------------------------
def charges(namespace: str, id_: str, at: datetime, *, store: SubscriptionStore, meta: MetaStore, ents: EntitlementStore,
            usage: UsageStore) -> dict[str, Any]:
    """What the subscription owes for the billing period holding `at`: detailed lines and exact totals."""
    doc = get(namespace, id_, store=store)
    start, end = subs.cycle(doc).containing(at)
    subjects = entitlements.customer_subject_keys(namespace, doc["customerId"], meta)

    def used(feature_key: str, s: datetime, e: datetime) -> Decimal:
        return usage_of(namespace, feature_key, subjects, s, e, meta=meta, ents=ents, usage=usage)

    lines = subs.charges(doc, start, end, usage=used)
    total = pricing.totals(c.line for c in lines)
    return {"subscriptionId": doc["id"], "customerId": doc["customerId"], "currency": doc["currency"],
            "period": {"from": format_rfc3339(start), "to": format_rfc3339(end)},
            "lines": [c.to_json() for c in lines],
            "totals": {"amount": total.amount, "discountsTotal": total.discounts, "total": total.total}}


def usage_of(namespace: str, feature_key: str, subjects: list[str], start: datetime, end: datetime, *,
             meta: MetaStore, ents: EntitlementStore, usage: UsageStore) -> Decimal:
    """The feature's meter value for the subjects over [start, end), whole minutes (the usage resolution)."""
    feature = ents.get_feature(namespace, feature_key, include_archived=True)
    if feature is None or not feature.get("meterSlug"):
        raise NotFound(f"feature {feature_key!r} has no meter")
    meter = meta.get_meter(namespace, feature["meterSlug"])
    if meter is None:
        raise NotFound(f"meter {feature['meterSlug']!r} of feature {feature_key!r} was deleted")
    s, e = entitlements.minute(start), entitlements.minute(end)
    if not subjects or e <= s:
        return Decimal(0)
    rows = usage.aggregate(UsageQuery(
        namespace=namespace, meter_id=meter.id, aggregation=meter.aggregation, start=s,
        end=e - timedelta(milliseconds=1), window_size=None, window_tz="UTC", subjects=subjects, group_by=[],
        by_subject=False, subject_customers=None, filters=feature_filters(feature)))
    return sum((final_value(meter.aggregation, r) or Decimal(0) for r in rows), Decimal(0))


# -- entitlements ------------------------------------------------------------------------------------------
def _grants(doc: dict[str, Any], now: datetime, *, later: bool = False) -> dict[str, tuple[dict[str, Any], subs.Item]]:
    """The features whose entitlement the subscription grants, each with its rate card's template and the item it
    comes from: those in force at `now` (the last in force, its item's template the one to make), or with `later`,
    those in force at or after `now` too (the first from `now` on)."""
    if doc.get("deletedAt") or subs.status(doc, now) == "inactive":
        return {}
    out: dict[str, tuple[dict[str, Any], subs.Item]] = {}
    for item in subs.items(doc):
        tmpl, feature_key = item.rate_card.get("entitlementTemplate"), item.rate_card.get("featureKey")
        if tmpl is None or not feature_key or (item.end is not None and item.end <= now):
            continue
        if not later and item.start > now:
            continue
        if later and feature_key in out and out[feature_key][1].start <= item.start:
            continue
        out[feature_key] = (tmpl, item)
    return out


def _subject(namespace: str, customer: dict[str, Any]) -> str | None:
    keys = (customer.get("usageAttribution") or {}).get("subjectKeys") or []
    return keys[0] if keys else None


def _granted(doc: dict[str, Any], now: datetime) -> dict[str, datetime]:
    """The features whose entitlement the subscription grants now or later (rate cards with an entitlement template
    in force at or after `now`), each with when it first does from `now` on."""
    return {feature_key: max(item.start, now) for feature_key, (_, item) in _grants(doc, now, later=True).items()}


def refuse_granted(namespace: str, *, store: SubscriptionStore, now: datetime) -> entitlements.Reserved:
    """The entitlement APIs' check of a new entitlement (entitlements.Reserved): refused (409 naming the field, the
    subscription as conflictingEntityId) while one of the customer's subscriptions grants the feature's entitlement,
    now or later (a later start, phase, add-on or edit, or the next plan of a change). OpenMeter's sync schedules that
    entitlement as the subscription is written, and a new one (from now, without end) overlaps it: its uniqueness
    check refuses it (AlreadyExistsError, 409 with the scheduled one's id). Billow makes the subscription's
    entitlement when its item starts; taken before, the hand-made one left the subscription without it."""
    def refuse(customer_id: str, feature_key: str, field: str) -> None:
        for doc in store.list_subscriptions(namespace, customer_id):
            when = _granted(doc, now).get(feature_key)
            if when is not None:
                raise Conflict(f"{field}: subscription {doc['id']} of the customer grants feature {feature_key!r} from "
                               f"{format_rfc3339(when)} (a customer has one entitlement per feature); change or "
                               "cancel the subscription first", extensions={"conflictingEntityId": doc["id"]})

    return refuse


def _refuse_held(namespace: str, doc: dict[str, Any], field: str, *, before: dict[str, Any] | None = None,
                 ignore: set[str] | None = None, ents: EntitlementStore, store: SubscriptionStore, meta: MetaStore,
                 now: datetime) -> None:
    """_check_entitlements of the subscription `doc` on its customer's subjects as they are now (one joined since
    the customer was first read is seen; none when the customer is gone): with `before`, the features the write adds
    to it."""
    customer = meta.get_customer(namespace, doc["customerId"])
    if customer is not None:
        _check_entitlements(namespace, doc, customer, ents=ents, store=store, meta=meta, now=now, field=field,
                            before=before, ignore=ignore)


def _check_entitlements(namespace: str, doc: dict[str, Any], customer: dict[str, Any], *, ents: EntitlementStore,
                        store: SubscriptionStore, meta: MetaStore, now: datetime, field: str,
                        before: dict[str, Any] | None = None, ignore: set[str] | None = None) -> None:
    """Refuse (409 naming `field`, the feature and the entitlement, as conflictingEntityId), before anything is
    stored, a subscription that would grant, now or in a later phase, an entitlement of a feature the customer
    already holds one of outside its subscriptions (made through the entitlement APIs): a customer has one live
    entitlement per feature, and OpenMeter's subscription sync schedules each item's entitlement from its start,
    refused by the uniqueness check (AlreadyExistsError, 409 with conflictingEntityId). It was accepted (an
    add-on, a subscription or change starting later, a later phase) and the subscription then left that feature
    without its entitlement. With `before` (the subscription as it was), only the features the write adds are
    checked. Entitlements in `ignore` and those of the customer's subscriptions (handed over on a change) pass."""
    keys = list((customer.get("usageAttribution") or {}).get("subjectKeys") or [])
    if not keys:
        return
    granted = _granted(doc, now)
    wanted = [k for k in granted if before is None or k not in _granted(before, now)]
    if not wanted:
        return
    party = entitlements.party_subject_keys(namespace, keys, meta)
    mine: set[str] | None = None
    for feature_key in wanted:
        found = ents.find_entitlement(namespace, party, feature_key)  # on any of the customer's subjects
        if found is None or found["id"] in (ignore or set()):
            continue
        mine = _customer_subscriptions(namespace, doc, store) if mine is None else mine
        if (found.get("metadata") or {}).get("subscriptionId") in mine:
            continue
        raise Conflict(f"{field}: the subscription would grant feature {feature_key!r} from "
                       f"{format_rfc3339(granted[feature_key])}, and subject {found['subjectKey']!r} of the customer "
                       f"already has entitlement {found['id']} of it (a customer has one per feature); delete that "
                       "one first, or leave the feature out", extensions={"conflictingEntityId": found["id"]})


def sync_entitlements(namespace: str, doc: dict[str, Any], *, store: SubscriptionStore, meta: MetaStore,
                      ents: EntitlementStore, now: datetime) -> dict[str, Any]:
    """Make the subject's entitlements match the rate cards in force now: create missing ones, delete those
    whose item ended. Idempotent; the subscription remembers which entitlements are its own."""
    customer = meta.get_customer(namespace, doc["customerId"])
    subject = _subject(namespace, customer) if customer else None
    had: dict[str, str] = dict(doc.get("entitlements") or {})
    own = dict(had)
    wanted = _grants(doc, now) if subject else {}
    changed = _drop_ended(namespace, own, wanted, subject, meta=meta, ents=ents, now=now)
    for feature_key, (tmpl, item) in wanted.items():
        if feature_key in own:
            continue
        assert subject is not None
        ent_id = _entitlement_for(namespace, doc, subject, feature_key, tmpl, item, store=store, meta=meta,
                                  ents=ents, now=now)
        if ent_id is not None:
            own[feature_key] = ent_id
            changed = True
    if changed:
        _release_handed_over(namespace, doc, own, store)
        doc["entitlements"] = own
        # Recorded on the subscription as it is stored now (an add-on or edit another container wrote since `doc`
        # was read stays): the entitlements forgotten and made here, over whatever the stored one records.
        gone = set(had) - set(own)
        made = {k: v for k, v in own.items() if had.get(k) != v}

        def record(stored: dict[str, Any]) -> dict[str, Any]:
            stored["entitlements"] = {**{k: v for k, v in (stored.get("entitlements") or {}).items()
                                         if k not in gone}, **made}
            return stored

        doc["entitlements"] = _update(namespace, doc["id"], store, record, live=False)["entitlements"]
    return doc


def _drop_ended(namespace: str, own: dict[str, str], wanted: dict[str, Any], subject: str | None, *,
                meta: MetaStore, ents: EntitlementStore, now: datetime) -> bool:
    """Forget (in `own`) the entitlements whose item ended, deleting those the subject still holds. True if any."""
    changed = False
    for feature_key, ent_id in list(own.items()):
        if feature_key not in wanted:
            existing = ents.get_entitlement(namespace, ent_id)
            if existing is not None and subject and existing.get("subjectKey") == subject:
                try:
                    entitlements.delete_entitlement(namespace, subject, ent_id, store=ents, meta=meta, now=now,
                                                    by_subscription=True)
                except NotFound:
                    pass  # deleted meanwhile (a sync beside this one): gone, as wanted
            del own[feature_key]
            changed = True
    return changed


def _entitlement_for(namespace: str, doc: dict[str, Any], subject: str, feature_key: str, tmpl: dict[str, Any],
                     item: subs.Item, *, store: SubscriptionStore, meta: MetaStore, ents: EntitlementStore,
                     now: datetime) -> str | None:
    """The id of the entitlement this subscription owns for `feature_key`: one of the customer's subscriptions
    already made (adopted) or a new one; None if the subject has its own, made by hand (never taken over: the
    subscription's writes refuse one held before them, _check_entitlements; this is one made after, or at once)."""
    party = entitlements.party_subject_keys(namespace, [subject], meta)

    def existing() -> tuple[bool, str | None]:
        """(whether the party has a live one of the feature, its id if this subscription may own it)."""
        found = ents.find_entitlement(namespace, party, feature_key)
        if found is None:
            return False, None
        if (found.get("metadata") or {}).get("subscriptionId") not in _customer_subscriptions(namespace, doc, store):
            return True, None  # the subject's own entitlement (made by hand): left alone, never taken over
        return True, str(found["id"])  # this one's (a concurrent pass made it) or handed over on a change

    there, ent_id = existing()
    if there:
        return ent_id
    body = _entitlement_body(doc, feature_key, tmpl, item)
    try:
        return str(entitlements.create_entitlement(namespace, subject, body, store=ents, meta=meta, now=now)["id"])
    except Conflict:
        # Made since the look (by hand, or by a sync beside this one): the subscription, stored, is not answered
        # with a 409 as if it were not; the one made meanwhile is taken as the look would have taken it.
        there, ent_id = existing()
        if not there:
            raise
        return ent_id


def _entitlement_body(doc: dict[str, Any], feature_key: str, tmpl: dict[str, Any], item: subs.Item) -> dict[str, Any]:
    """The entitlement a rate card's template makes: a metered one's usage period is the template's interval (else
    the rate card's, else the subscription's billing cadence) from the subscription's billing anchor, and its usage
    counts from when the rate card came into force, to the minute (OpenMeter's sync: measureUsageFrom is the phase
    start), not from the anchor's period start: usage from before the subscription is not the subscription's."""
    body = {**{k: v for k, v in tmpl.items() if k != "usagePeriod"}, "featureKey": feature_key,
            "metadata": {**(tmpl.get("metadata") or {}), "subscriptionId": doc["id"]}}
    if tmpl["type"] == "metered":
        body["usagePeriod"] = {"interval": tmpl.get("usagePeriod") or item.rate_card.get("billingCadence")
                               or doc["billingCadence"], "anchor": doc["billingAnchor"]}
        body["measureUsageFrom"] = format_rfc3339(minute(item.start))
    return body


def _release_handed_over(namespace: str, doc: dict[str, Any], own: dict[str, str], store: SubscriptionStore) -> None:
    """A hand-over leaves the old subscription: the customer's other subscriptions forget the entitlements `doc`
    now owns."""
    def forget(other: dict[str, Any]) -> dict[str, Any]:
        other["entitlements"] = {k: v for k, v in (other.get("entitlements") or {}).items() if v not in own.values()}
        return other

    for other in store.list_subscriptions(namespace, doc["customerId"]):
        if other["id"] != doc["id"] and set(other.get("entitlements", {}).values()) & set(own.values()):
            _update(namespace, other["id"], store, forget, live=False)


def _customer_subscriptions(namespace: str, doc: dict[str, Any], store: SubscriptionStore) -> set[str]:
    """Ids of the customer's subscriptions: an entitlement one of them made (its metadata says which) may be
    adopted by another, e.g. across a plan change."""
    return {doc["id"]} | {other["id"] for other in store.list_subscriptions(namespace, doc["customerId"])}


def sync_all(namespace: str, *, store: SubscriptionStore, meta: MetaStore, ents: EntitlementStore, now: datetime,
             on_error: Callable[[dict[str, Any], Exception], None] | None = None) -> int:
    """The scheduled pass: entitlements of every subscription brought up to date (phase changes, scheduled
    cancelations and add-on changes that came due). Returns how many subscriptions it looked at. With `on_error`,
    a subscription that fails is handed to it and the pass goes on with the others."""
    docs = [d for d in store.list_subscriptions(namespace) if not d.get("deletedAt")]
    # Running subscriptions first, so that one starting where another ends adopts the entitlements they share.
    docs.sort(key=lambda d: subs.status(d, now) not in ("active", "canceled"))
    for doc in docs:
        if set(_grants(doc, now)) == set(doc.get("entitlements") or {}):
            continue  # nothing came due for this one (the common case: no store round trip)
        fresh = store.get_subscription(namespace, doc["id"])  # an adoption may have rewritten it
        if fresh is None:
            continue
        try:
            sync_entitlements(namespace, fresh, store=store, meta=meta, ents=ents, now=now)
        except Conflict:
            continue  # a concurrent pass created that entitlement first; its subscription records it
        except Exception as exc:
            if on_error is None:
                raise
            on_error(fresh, exc)
    return len(docs)
