"""Notifications use-cases: channels, rules, events (list, get, test, resend), the producers of events
(balance thresholds and resets found by `evaluate`, invoices through `emit_invoice_event`) and `dispatch_due`,
which delivers due (event, channel) pairs with retries.

Where things run: `evaluate` and `dispatch_due` are called by functions/notify_dispatch (EventBridge every
minute, plus an SQS message whenever an event is created or a retry is due) and, in `billow serve`, by a
background thread of the same handler module. Writers call `wake(delay_s)` so a dispatcher comes soon."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from decimal import Decimal
from functools import partial
from typing import Any, Protocol

from billow import jsonx
from billow.domain import notifications as dn
from billow.domain.notifications import Delivery, Outcome, bad
from billow.errors import BillowError, Conflict, NotFound
from billow.ids import is_ulid, new_id
from billow.ports import MetaStore, UsageStore
from billow.services import pages, params
from billow.services.edits import until_written
from billow.services.entitlements import EntitlementStore
from billow.timeutil import as_of, format_rfc3339, parse_rfc3339

log = logging.getLogger("billow.notifications")

Wake = Callable[[float], None]  # "a dispatcher should run in about this many seconds"
Send = Callable[[dict[str, Any], str, str, datetime], Outcome]  # (channel, payload JSON, message id, now)
CLAIM_LEASE = timedelta(minutes=2)  # a claim lapses after this (longer than any sender's timeout)


class NotificationStore(Protocol):
    def put_channel(self, namespace: str, doc: dict[str, Any], *, live: bool = False,
                    check: Callable[[], None] | None = None, expect_doc: str | None = None) -> None:
        """With `check`, it runs (and raises to refuse) where the write is made, one such write per channel at a
        time with the writes of the rules that name it; with `expect_doc`, written only if still stored as that
        JSON (else Conflict)."""
        ...
    def get_channel(self, namespace: str, channel_id: str) -> dict[str, Any] | None: ...
    def list_channels(self, namespace: str, ids: Iterable[str] | None = None) -> list[dict[str, Any]]: ...
    def put_rule(self, namespace: str, doc: dict[str, Any], *, live: bool = False,
                 check: Callable[[], None] | None = None, expect_doc: str | None = None) -> None:
        """With `check`, it runs (and raises to refuse) where the write is made, one at a time with the deletion of
        each channel the rule names; with `expect_doc`, written only if still stored as that JSON (else Conflict)."""
        ...
    def get_rule(self, namespace: str, rule_id: str) -> dict[str, Any] | None: ...
    def list_rules(self, namespace: str) -> list[dict[str, Any]]: ...
    def active_rules(self, types: Iterable[str], namespace: str | None = None) -> list[tuple[str, dict[str, Any]]]: ...
    def add_event(self, namespace: str, doc: dict[str, Any], *, dedup_key: str | None, channel_ids: list[str],
                  now: datetime, index: dict[str, str | None]) -> bool: ...
    def get_event(self, namespace: str, event_id: str) -> dict[str, Any] | None: ...
    def list_events(self, namespace: str, *, start: datetime | None = None, end: datetime | None = None,
                    rule_ids: list[str] | None = None, subject_keys: list[str] | None = None,
                    features: list[str] | None = None, channel_ids: list[str] | None = None,
                    descending: bool = True, order_by: str = "createdAt") -> list[dict[str, Any]]: ...
    def deliveries_of(self, namespace: str, event_ids: list[str]) -> dict[str, list[Delivery]]: ...
    def due(self, now: datetime, limit: int = 100) -> list[Delivery]: ...
    def next_due(self) -> datetime | None: ...
    def claim(self, d: Delivery, *, now: datetime, lease_until: datetime) -> bool: ...
    def finish(self, d: Delivery, *, state: str, reason: str, tries: int, attempt: dict[str, Any] | None,
               due_at: datetime | None, now: datetime) -> bool: ...
    def resend(self, namespace: str, event_id: str, channel_ids: list[str] | None, now: datetime) -> int: ...


def _no_wake(_: float) -> None:
    return None


# -- query parameters ---------------------------------------------------------------------------------------
def _flag(qs: dict[str, list[str]], name: str) -> bool:
    raw = (qs.get(name) or ["false"])[0]
    if raw not in ("true", "false"):
        raise bad(name, "must be true or false")
    return raw == "true"


def _order(qs: dict[str, list[str]], keys: tuple[str, ...], default: str) -> tuple[str, bool]:
    """(orderBy, descending) from the query string."""
    order_by = params.one(qs, "orderBy") or keys[0]
    if order_by not in keys:
        raise bad("orderBy", f"one of {', '.join(keys)}")
    order = (params.one(qs, "order") or default).upper()
    if order not in ("ASC", "DESC"):
        raise bad("order", "ASC or DESC")
    return order_by, order == "DESC"


def _page(items: list[dict[str, Any]], qs: dict[str, list[str]]) -> dict[str, Any]:
    order_by, desc = _order(qs, ("id", "type", "createdAt", "updatedAt"), "ASC")
    return pages.page(sorted(items, key=lambda d: (str(d.get(order_by, "")), d["id"]), reverse=desc), qs)


def _ulid_param(value: str, field: str) -> str:
    if not is_ulid(value):
        raise bad(field, "must be an id (ULID)")
    return value


def _stamp(doc: dict[str, Any], now: datetime, previous: dict[str, Any] | None) -> dict[str, Any]:
    stamp = format_rfc3339(now)
    doc["id"] = previous["id"] if previous else new_id()
    doc["createdAt"] = previous["createdAt"] if previous else stamp
    # an update: never stamped before the edit it replaces (one by a container whose clock is ahead)
    doc["updatedAt"] = format_rfc3339(as_of(now, previous.get("updatedAt"))) if previous else stamp
    return doc


# -- channels -----------------------------------------------------------------------------------------------
def create_channel(namespace: str, body: Any, *, store: NotificationStore, now: datetime) -> dict[str, Any]:
    doc = _stamp(dn.parse_channel(body), now, None)
    store.put_channel(namespace, doc)
    return doc


def get_channel(namespace: str, channel_id: str, *, store: NotificationStore) -> dict[str, Any]:
    doc = store.get_channel(namespace, channel_id) if is_ulid(channel_id) else None
    if doc is None:
        raise NotFound(f"notification channel {channel_id!r} not found")
    return doc


def _live_channel(namespace: str, channel_id: str, store: NotificationStore) -> dict[str, Any]:
    doc = get_channel(namespace, channel_id, store=store)
    if doc.get("deletedAt"):
        raise NotFound(f"notification channel {channel_id!r} was deleted")
    return doc


def _deleted(doc: dict[str, Any], now: datetime) -> dict[str, Any]:
    """`doc` deleted now, its updatedAt never before the edit it follows (one by a container whose clock is ahead)."""
    return {**doc, "deletedAt": format_rfc3339(now), "updatedAt": format_rfc3339(as_of(now, doc.get("updatedAt")))}


def update_channel(namespace: str, channel_id: str, body: Any, *, store: NotificationStore,
                   now: datetime) -> dict[str, Any]:
    """Replace a live channel, written only as it was read (edits.until_written): another container's update or
    DELETE landing since the read makes this one read again, so it is applied whole to what that one wrote (its
    signing secret, when this body gives none; an updatedAt never before the one it replaces, stamped on a clock
    ahead) or answers 404, never writing back a mix of this body and the channel as it was before the other write."""
    def step() -> tuple[dict[str, Any], Callable[[], None]]:
        old = _live_channel(namespace, channel_id, store)
        doc = _stamp(dn.parse_channel(body, previous=old), now, old)
        return doc, partial(store.put_channel, namespace, doc, live=True, expect_doc=jsonx.dumps(old))

    return until_written(step)


def delete_channel(namespace: str, channel_id: str, *, store: NotificationStore, now: datetime) -> None:
    def unused() -> None:
        used = [r["id"] for r in store.list_rules(namespace)
                if not r.get("deletedAt") and any(c["id"] == channel_id for c in r["channels"])]
        if used:
            raise Conflict(f"notification channel {channel_id!r} is assigned to rules {', '.join(used)}; "
                           "remove it from them first")

    def step() -> tuple[None, Callable[[], None]]:
        found = _live_channel(namespace, channel_id, store)
        unused()
        # Checked again where it is written, under the lock a rule naming the channel takes (a rule written at once is
        # seen, or sees the channel deleted); only as read (an update or deletion since: read again, 404 if deleted).
        return None, partial(store.put_channel, namespace, _deleted(found, now), live=True, check=unused,
                             expect_doc=jsonx.dumps(found))

    until_written(step)


def list_channels(namespace: str, qs: dict[str, list[str]], *, store: NotificationStore) -> dict[str, Any]:
    deleted, disabled = _flag(qs, "includeDeleted"), _flag(qs, "includeDisabled")
    items = [d for d in store.list_channels(namespace)
             if (deleted or not d.get("deletedAt")) and (disabled or not d.get("disabled"))]
    return _page(items, qs)


# -- rules --------------------------------------------------------------------------------------------------
def _resolve_rule_refs(namespace: str, doc: dict[str, Any], *, store: NotificationStore,
                       features: EntitlementStore) -> dict[str, Any]:
    found = _live_channels(namespace, doc["channels"], store)
    doc["channels"] = [{"id": cid, "type": found[cid]["type"]} for cid in doc["channels"]]
    if "features" in doc:
        out = []
        for i, ref in enumerate(doc["features"]):
            f = features.get_feature(namespace, ref, include_archived=False)
            if f is None:
                raise bad(f"features[{i}]", f"feature {ref!r} not found")
            out.append({"id": f["id"], "key": f["key"]})
        doc["features"] = list({f["id"]: f for f in out}.values())
    return doc


def _live_channels(namespace: str, ids: list[str], store: NotificationStore) -> dict[str, dict[str, Any]]:
    """The channels `ids`, each live, by id (else 400 naming the first one that is not)."""
    found = {c["id"]: c for c in store.list_channels(namespace, ids)}
    for i, cid in enumerate(ids):
        ch = found.get(cid)
        if ch is None or ch.get("deletedAt"):
            raise bad(f"channels[{i}]", f"notification channel {cid!r} not found")
    return found


def _refs_still_live(namespace: str, doc: dict[str, Any], store: NotificationStore,
                     features: EntitlementStore) -> Callable[[], None]:
    """A rule write's check where it is written, under the lock of each channel it names that the channel's deletion
    takes too (its check, no live rule names the channel, would miss this rule), and of each feature that the
    feature's archive takes: a channel deleted or a feature archived meanwhile is refused as such a one is (400)."""
    def check() -> None:
        _live_channels(namespace, [c["id"] for c in doc["channels"]], store)
        for i, f in enumerate(doc.get("features") or []):
            if features.get_feature(namespace, f["id"], include_archived=False) is None:
                raise bad(f"features[{i}]", f"feature {f['key']!r} not found (archived meanwhile)")

    return check


def create_rule(namespace: str, body: Any, *, store: NotificationStore, features: EntitlementStore,
                now: datetime) -> dict[str, Any]:
    doc = _resolve_rule_refs(namespace, dn.parse_rule(body), store=store, features=features)
    doc = _stamp(doc, now, None)
    store.put_rule(namespace, doc, check=_refs_still_live(namespace, doc, store, features))
    return doc


def get_rule(namespace: str, rule_id: str, *, store: NotificationStore) -> dict[str, Any]:
    doc = store.get_rule(namespace, rule_id) if is_ulid(rule_id) else None
    if doc is None:
        raise NotFound(f"notification rule {rule_id!r} not found")
    return doc


def _live_rule(namespace: str, rule_id: str, store: NotificationStore) -> dict[str, Any]:
    doc = get_rule(namespace, rule_id, store=store)
    if doc.get("deletedAt"):
        raise NotFound(f"notification rule {rule_id!r} was deleted")
    return doc


def update_rule(namespace: str, rule_id: str, body: Any, *, store: NotificationStore, features: EntitlementStore,
                now: datetime) -> dict[str, Any]:
    """Replace a live rule, written only as it was read, as update_channel: another update or DELETE landing since
    the read makes this one read again (applied whole to what that one wrote, its updatedAt never earlier; or 404);
    a channel deleted since the read: 400."""
    def step() -> tuple[dict[str, Any], Callable[[], None]]:
        old = _live_rule(namespace, rule_id, store)
        doc = _stamp(_resolve_rule_refs(namespace, dn.parse_rule(body, previous=old), store=store, features=features),
                     now, old)
        return doc, partial(store.put_rule, namespace, doc, live=True, expect_doc=jsonx.dumps(old),
                            check=_refs_still_live(namespace, doc, store, features))

    return until_written(step)


def delete_rule(namespace: str, rule_id: str, *, store: NotificationStore, now: datetime) -> None:
    def step() -> tuple[None, Callable[[], None]]:
        found = _live_rule(namespace, rule_id, store)  # only as read: one deleted meanwhile is 404, as after
        return None, partial(store.put_rule, namespace, _deleted(found, now), live=True, expect_doc=jsonx.dumps(found))

    until_written(step)


def list_rules(namespace: str, qs: dict[str, list[str]], *, store: NotificationStore) -> dict[str, Any]:
    deleted, disabled = _flag(qs, "includeDeleted"), _flag(qs, "includeDisabled")
    feats, chans = set(qs.get("feature") or []), set(qs.get("channel") or [])
    items = [d for d in store.list_rules(namespace)
             if (deleted or not d.get("deletedAt")) and (disabled or not d.get("disabled"))
             and (not feats or any(f["id"] in feats or f["key"] in feats for f in d.get("features", [])))
             and (not chans or any(c["id"] in chans for c in d["channels"]))]
    return _page(items, qs)


# -- events -------------------------------------------------------------------------------------------------
def _emit(namespace: str, rule: dict[str, Any], data: Any, *, store: NotificationStore, now: datetime,
          dedup_key: str | None, index: dict[str, str | None] | None = None,
          annotations: dict[str, Any] | None = None) -> str | None:
    """Create one event of `rule` for its enabled channels; None if its dedup key was already used."""
    eid = new_id()
    payload = {"id": eid, "type": rule["type"], "timestamp": format_rfc3339(now), "data": data}
    doc: dict[str, Any] = {"id": eid, "type": rule["type"], "createdAt": format_rfc3339(now), "rule": rule,
                           "payload": payload, "annotations": annotations or {}}
    live = {c["id"]: c for c in store.list_channels(namespace, [c["id"] for c in rule["channels"]])}
    targets = [c["id"] for c in rule["channels"]
               if c["id"] in live and not live[c["id"]].get("deletedAt") and not live[c["id"]].get("disabled")]
    idx = {"subject_key": None, "feature_id": None, "feature_key": None, **(index or {})}
    return eid if store.add_event(namespace, doc, dedup_key=dedup_key, channel_ids=targets, now=now, index=idx) else None


def _delivery_json(d: Delivery, channel_type: str) -> dict[str, Any]:
    out: dict[str, Any] = {"state": d.state, "reason": d.reason, "updatedAt": format_rfc3339(d.updated_at),
                           "channel": {"id": d.channel_id, "type": channel_type}, "attempts": d.attempts}
    if d.due_at is not None and d.state != dn.SENDING:
        out["nextAttempt"] = format_rfc3339(d.due_at)
    return out


def _events_json(namespace: str, docs: list[dict[str, Any]], store: NotificationStore) -> list[dict[str, Any]]:
    per_event = store.deliveries_of(namespace, [d["id"] for d in docs])
    types = {c["id"]: c["type"] for d in docs for c in d["rule"]["channels"]}
    return [{**d, "deliveryStatus": [_delivery_json(x, types.get(x.channel_id, dn.WEBHOOK))
                                     for x in per_event.get(d["id"], [])]} for d in docs]


def get_event(namespace: str, event_id: str, *, store: NotificationStore) -> dict[str, Any]:
    doc = store.get_event(namespace, event_id) if is_ulid(event_id) else None
    if doc is None:
        raise NotFound(f"notification event {event_id!r} not found")
    return _events_json(namespace, [doc], store)[0]


def list_events(namespace: str, qs: dict[str, list[str]], *, store: NotificationStore,
                meta: MetaStore) -> dict[str, Any]:
    start = parse_rfc3339(qs["from"][0], "from") if qs.get("from") else None
    end = parse_rfc3339(qs["to"][0], "to") if qs.get("to") else None
    if start is not None and end is not None and start > end:
        raise bad("from", "must not be after to")
    rule_ids = [_ulid_param(r, "rule") for r in qs.get("rule") or []]
    channel_ids = [_ulid_param(c, "channel") for c in qs.get("channel") or []]
    subjects: list[str] | None = None
    if qs.get("subject"):
        subjects = []
        for ref in qs["subject"]:
            s = meta.get_subject(namespace, ref)
            subjects.append(str(s["key"]) if s else ref)
    order_by, desc = _order(qs, ("createdAt", "id"), "DESC")
    docs = store.list_events(namespace, start=start, end=end, rule_ids=rule_ids or None, subject_keys=subjects,
                             features=qs.get("feature") or None, channel_ids=channel_ids or None,
                             descending=desc, order_by=order_by)
    page = pages.page(docs, qs)
    page["items"] = _events_json(namespace, page["items"], store)
    return page


def resend_event(namespace: str, event_id: str, body: Any, *, store: NotificationStore, now: datetime,
                 wake: Wake = _no_wake) -> None:
    get_event(namespace, event_id, store=store)
    body = body if body is not None else {}
    if not isinstance(body, dict):
        raise bad("", "resend request must be a JSON object")
    chans = body.get("channels")
    if chans is not None:
        if not isinstance(chans, list) or not all(isinstance(c, str) and is_ulid(c) for c in chans):
            raise bad("channels", "must be a list of channel ids")
    if store.resend(namespace, event_id, chans, now) == 0 and chans:
        raise bad("channels", "the event has no delivery to these channels (or it is being sent right now)")
    wake(0)


def _sample(rule: dict[str, Any], now: datetime) -> tuple[Any, dict[str, str | None]]:
    """Random but well-formed data for a test event of the rule's type."""
    rnd = random.Random()
    stamp = format_rfc3339(now)
    feature = (rule.get("features") or [{"id": new_id(), "key": "test_feature"}])[0]
    if rule["type"] in (dn.THRESHOLD, dn.RESET):
        used = Decimal(rnd.randint(50, 150))
        ent = {"id": new_id(), "type": "metered", "subjectKey": "test-subject", "featureKey": feature["key"],
               "featureId": feature["id"], "isSoftLimit": False, "isUnlimited": False, "createdAt": stamp,
               "updatedAt": stamp, "measureUsageFrom": stamp, "preserveOverageAtReset": False,
               "usagePeriod": {"interval": "MONTH", "anchor": stamp}, "lastReset": stamp,
               "currentUsagePeriod": {"from": stamp, "to": stamp}}
        value = {"hasAccess": used < 100, "balance": max(Decimal(100) - used, Decimal(0)), "usage": used,
                 "overage": max(used - 100, Decimal(0)), "totalAvailableGrantAmount": Decimal(100)}
        data: dict[str, Any] = {"entitlement": ent, "feature": {**feature, "name": feature["key"], "createdAt": stamp,
                                                                "updatedAt": stamp},
                                "subject": {"key": "test-subject", "id": new_id()}, "value": value}
        if rule["type"] == dn.THRESHOLD:
            data["threshold"] = rule["thresholds"][0]
        return data, {"subject_key": "test-subject", "feature_id": feature["id"], "feature_key": feature["key"]}
    invoice = {"id": new_id(), "number": f"TEST-{rnd.randint(1000, 9999)}", "status": "issued", "currency": "USD",
               "createdAt": stamp, "updatedAt": stamp, "totals": {"total": str(rnd.randint(1, 10_000))}}
    return invoice, {}


def test_rule(namespace: str, rule_id: str, *, store: NotificationStore, now: datetime,
              wake: Wake = _no_wake) -> dict[str, Any]:
    rule = get_rule(namespace, rule_id, store=store)
    if rule.get("deletedAt"):
        raise NotFound(f"notification rule {rule_id!r} was deleted")
    data, index = _sample(rule, now)
    eid = _emit(namespace, rule, data, store=store, now=now, dedup_key=None, index=index,
                annotations={"notification.rule.test": True})
    assert eid is not None
    wake(0)
    return get_event(namespace, eid, store=store)


def emit_invoice_event(namespace: str, event_type: str, invoice_doc: dict[str, Any], *, store: NotificationStore,
                       now: datetime, wake: Wake = _no_wake) -> list[str]:
    """What billing calls when an invoice is created, updated or paid: one event per enabled rule of that type
    (invoice.created / invoice.updated / invoice.paid), carrying the invoice as served. Idempotent: created
    and paid once per invoice and rule, updated once per invoice `updatedAt` and rule."""
    if event_type not in dn.INVOICE_TYPES:
        raise bad("type", f"one of {', '.join(dn.INVOICE_TYPES)}")
    if not isinstance(invoice_doc, dict) or not invoice_doc.get("id"):
        raise bad("invoice", "must be an invoice document with an id")
    version = invoice_doc.get("updatedAt", "") if event_type == dn.INVOICE_UPDATED else ""
    created = []
    for _, rule in store.active_rules([event_type], namespace):
        eid = _emit(namespace, rule, invoice_doc, store=store, now=now,
                    dedup_key=f"{rule['id']}:{event_type}:{invoice_doc['id']}:{version}")
        if eid is not None:
            created.append(eid)
    if created:
        wake(0)
    return created


# -- producers: balance thresholds and resets ----------------------------------------------------------------
def evaluate(*, store: NotificationStore, entitlements: EntitlementStore, meta: MetaStore, usage: UsageStore,
             now: datetime, namespace: str | None = None, wake: Wake = _no_wake) -> list[str]:
    """Check every metered entitlement an active threshold or reset rule covers and create the events due:
    one per threshold reached per usage period (dedup: rule, entitlement, threshold, period start) and one
    per reset (dedup: rule, entitlement, reset time; resets before the rule existed are not reported).
    Returns the new event ids."""
    from billow.services import balances
    from billow.services.entitlements import current_period, reset_schedule

    created: list[str] = []
    values: dict[tuple[str, str], tuple[dict[str, Any], dict[str, Any], datetime]] = {}
    for ns, rule in store.active_rules([dn.THRESHOLD, dn.RESET], namespace):
        keys = [f["key"] for f in rule.get("features", [])] or None
        for ent in entitlements.list_entitlements(ns, feature_keys=keys):
            if ent["type"] != "metered" or ent.get("deletedAt"):
                continue
            try:
                if (ns, ent["id"]) not in values:
                    value = balances.value(ns, [ent["subjectKey"]], ent["id"], None, store=entitlements, meta=meta,
                                           usage=usage, now=now)
                    start = current_period(ent, store=entitlements, namespace=ns, at=now)[0]
                    values[(ns, ent["id"])] = (value, balances.entitlement_json(ns, ent, store=entitlements, now=now),
                                               start)
                value, ent_json, period_start = values[(ns, ent["id"])]
                data = _entitlement_data(ns, ent_json, value, entitlements=entitlements, meta=meta)
                index: dict[str, str | None] = {"subject_key": ent["subjectKey"], "feature_id": ent["featureId"],
                                                "feature_key": ent["featureKey"]}
                if rule["type"] == dn.THRESHOLD:
                    for th in rule["thresholds"]:
                        if not dn.threshold_reached(th, value):
                            continue
                        key = f"{rule['id']}:{ent['id']}:{dn.threshold_key(th)}:{format_rfc3339(period_start)}"
                        eid = _emit(ns, rule, {**data, "threshold": th}, store=store, now=now, dedup_key=key,
                                    index=index)
                        created += [eid] if eid else []
                else:
                    resets, _ = reset_schedule(ent, entitlements.list_resets(ns, ent["id"]), now)
                    since = max(parse_rfc3339(rule["createdAt"], "createdAt"),
                                parse_rfc3339(ent["createdAt"], "createdAt"))
                    if resets and resets[-1].at >= since.replace(second=0, microsecond=0):
                        key = f"{rule['id']}:{ent['id']}:reset:{format_rfc3339(resets[-1].at)}"
                        eid = _emit(ns, rule, data, store=store, now=now, dedup_key=key, index=index)
                        created += [eid] if eid else []
            except BillowError as exc:  # e.g. the feature's meter was deleted: skip it, keep the rest going
                log.warning("notification rule %s: entitlement %s skipped: %s", rule["id"], ent["id"], exc.detail)
    if created:
        wake(0)
    return created


def _entitlement_data(namespace: str, ent_json: dict[str, Any], value: dict[str, Any], *,
                      entitlements: EntitlementStore, meta: MetaStore) -> dict[str, Any]:
    feature = entitlements.get_feature(namespace, ent_json["featureId"], include_archived=True) or {
        "id": ent_json["featureId"], "key": ent_json["featureKey"]}
    subject = meta.get_subject(namespace, ent_json["subjectKey"])
    data: dict[str, Any] = {
        "entitlement": ent_json, "feature": feature, "value": value,
        "subject": {k: v for k, v in subject.items() if v is not None} if subject else {"key": ent_json["subjectKey"]},
    }
    customer_id = meta.customers_for_subjects(namespace, [ent_json["subjectKey"]]).get(ent_json["subjectKey"])
    if customer_id:
        customer = meta.get_customer(namespace, customer_id)
        if customer:
            data["customer"] = customer
    return data


# -- delivery -----------------------------------------------------------------------------------------------
def dispatch_due(*, store: NotificationStore, send: Send, clock: Callable[[], datetime], limit: int = 100,
                 wake: Wake = _no_wake) -> int:
    """Attempt every delivery that is due (up to `limit`): claim it (a conditional UPDATE, so a concurrent
    dispatcher skips it), send, record the attempt and the next state. Returns how many were attempted."""
    done = 0
    for d in store.due(clock(), limit):
        now = clock()
        if not store.claim(d, now=now, lease_until=now + CLAIM_LEASE):
            continue  # another dispatcher has it, or it changed since it was read
        doc = store.get_event(d.namespace, d.event_id)
        channel = store.get_channel(d.namespace, d.channel_id)
        if doc is None or channel is None or channel.get("deletedAt") or channel.get("disabled"):
            why = "channel deleted" if channel is None or channel.get("deletedAt") else "channel disabled"
            store.finish(d, state=dn.FAILED, reason=why if doc else "event not found", tries=d.tries,
                         attempt=None, due_at=None, now=now)
            continue
        outcome = send(channel, jsonx.dumps(doc["payload"]), d.event_id, now)
        end = clock()
        tries = d.tries + 1
        state, due_at = dn.after_attempt(outcome, tries, end, f"{d.event_id}:{d.channel_id}:{len(d.attempts)}")
        attempt: dict[str, Any] = {"state": dn.SUCCESS if outcome.ok else dn.FAILED, "timestamp": format_rfc3339(now),
                                   "reason": outcome.reason,
                                   "response": {"body": outcome.body, "durationMs": outcome.duration_ms}}
        if outcome.status_code is not None:
            attempt["response"]["statusCode"] = outcome.status_code
        if outcome.url:
            attempt["response"]["url"] = outcome.url
        reason = outcome.reason if state != dn.PENDING else f"{outcome.reason}; retry {tries} of {dn.MAX_ATTEMPTS - 1}"
        store.finish(d, state=state, reason=reason, tries=tries, attempt=attempt, due_at=due_at, now=end)
        if due_at is not None:
            wake((due_at - end).total_seconds())
        done += 1
    return done
