"""Entitlements (boolean, static, metered) and their grants: create, list, override, delete, void, reset, and
the value/history reads that run the balance engine over usage from the usage store."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

from billow import jsonx
from billow.domain import fields
from billow.domain.entitlements import Reset as Reset  # re-exported for balances, notifications
from billow.domain.entitlements import (
    amount,
    measure_usage_from,
    minute,
    optional_grant_fields,
    parse_expiration,
    parse_period,
    period_at,
    period_of,
)
from billow.domain.entitlements import parse_instant as _time
from billow.domain.entitlements import reset_schedule as reset_schedule
from billow.errors import Conflict, Forbidden, NotFound, ValidationFailed
from billow.ids import is_ulid, new_id
from billow.ports import MetaStore
from billow.services.features import FeatureStore, bad, valid_key
from billow.timeutil import as_of, format_rfc3339, parse_rfc3339


class EntitlementStore(FeatureStore, Protocol):
    generation: int  # bumped by every write

    def put_entitlement(self, namespace: str, doc: dict[str, Any], *, created_at: datetime,
                        deleted_at: datetime | None = None, party: Sequence[str] | None = None,
                        check: Callable[[], None] | None = None, customer_id: str | None = None,
                        grants: Sequence[dict[str, Any]] = (), subject: str | None = None) -> None:
        """Save an entitlement, and the `grants` it issues as it is made in its write; with `party` (its customer's
        subject keys) only if none of them has a live one of its feature where it is written (else Conflict naming
        it); with `check`, it runs (and raises to refuse) where the write is made, one at a time with the archive of
        the feature (and, with `customer_id`, with the deletion and update of that customer; with `subject`, a
        subject no customer owns, with its deletion)."""
        ...

    def replace_entitlement(self, namespace: str, old_id: str, doc: dict[str, Any], *, at: datetime,
                            old_doc: dict[str, Any], check: Callable[[], None] | None = None,
                            grants: Sequence[dict[str, Any]] = (), customer_id: str | None = None,
                            subject: str | None = None) -> None: ...

    def get_entitlement(self, namespace: str, entitlement_id: str, include_deleted: bool = False) -> dict[str, Any] | None: ...

    def find_entitlement(self, namespace: str, subject_keys: list[str], feature_key: str) -> dict[str, Any] | None:
        """The live entitlement of the feature among the subjects'; of several (a customer's, made before one per
        feature per customer was enforced: `sole`), the first created, by createdAt, then id, on every store."""
        ...

    def list_entitlements(self, namespace: str, subject_keys: list[str] | None = None, include_deleted: bool = False,
                          feature_keys: list[str] | None = None) -> list[dict[str, Any]]: ...

    def put_grant(self, namespace: str, doc: dict[str, Any], *, created_at: datetime,
                  expect_doc: str | None = None, check: Callable[[], None] | None = None,
                  customer_id: str | None = None, subject: str | None = None) -> None:
        """With `check`, it runs (and raises to refuse) where the grant is written, one at a time with the deletion,
        override and resets of its entitlement (and, with `customer_id`, with the deletion and update of that
        customer; with `subject`, with that subject's deletion)."""
        ...

    def get_grant(self, namespace: str, grant_id: str) -> dict[str, Any] | None: ...

    def list_grants(self, namespace: str, entitlement_ids: list[str] | None = None) -> list[dict[str, Any]]: ...

    def add_reset(self, namespace: str, entitlement_id: str, at: datetime, *, retain_anchor: bool,
                  preserve_overage: bool | None, now: datetime, check: Callable[[], None] | None = None,
                  customer_id: str | None = None, subject: str | None = None) -> None: ...

    def list_resets(self, namespace: str, entitlement_id: str) -> list[dict[str, Any]]: ...

    def latest_snapshot(self, namespace: str, entitlement_id: str, not_after: datetime) -> dict[str, Any] | None: ...

    def ledger_rows(self, namespace: str, entitlement_id: str, snapshot_not_after: datetime
                    ) -> tuple[list[dict[str, Any]], dict[str, Any] | None, list[dict[str, Any]]]:
        """(list_resets, latest_snapshot up to `snapshot_not_after`, list_grants) of one entitlement, read at once."""
        ...

    def save_snapshot(self, namespace: str, entitlement_id: str, subject_key: str, at: datetime,
                      doc: dict[str, Any], *, computed_from: datetime) -> bool: ...


# -- subjects ------------------------------------------------------------------------------------------
def subject_key(namespace: str, id_or_key: str, meta: MetaStore) -> str:
    """A subject known to Billow: upserted through /subjects or attributed to a customer."""
    s = meta.get_subject(namespace, id_or_key)
    if s is not None:
        return str(s["key"])
    if meta.customers_for_subjects(namespace, [id_or_key]):
        return id_or_key
    if not fields.fits_subject_key(id_or_key):  # counted by meters, but no subject or customer can have it
        raise ValidationFailed.at("subjectIdOrKey", f"{id_or_key[:64]!r}... is longer than a subject key may be (at "
                                                    f"most {fields.SUBJECT_KEY_MAX_CHARS} characters and "
                                                    f"{fields.SUBJECT_KEY_MAX_BYTES} bytes of UTF-8): usage under it is "
                                                    "counted by meters, but it cannot have entitlements")
    raise NotFound(f"subject {id_or_key!r} not found; create it with POST /api/v1/subjects or attribute it to a customer")


def customer_subject_keys(namespace: str, id_or_key: str, meta: MetaStore) -> list[str]:
    c = meta.get_customer(namespace, id_or_key)
    if c is None:
        raise NotFound(f"customer {id_or_key!r} not found")
    return list(c.get("usageAttribution", {}).get("subjectKeys", []))


def party_subject_keys(namespace: str, keys: list[str], meta: MetaStore) -> list[str]:
    """The subjects given and every other subject of the customers owning them: a customer with several subjects
    is one billable party, so its entitlements are reachable through, and count the usage of, each of them."""
    return list(dict.fromkeys([*keys, *meta.fellow_subjects(namespace, keys)]))


def party_keys(namespace: str, subject: str, meta: MetaStore) -> list[str]:
    """The subject's key (by id or key) and those of the other subjects of its customer."""
    return party_subject_keys(namespace, [subject_key(namespace, subject, meta)], meta)


@dataclass(frozen=True)
class Through:
    """Whom a write through a subject or a customer goes through: the lock it takes where it is written (its
    customer's, `customer_id`; a subject no customer owns, `subject`'s), which that customer's deletion and update
    (that subject's deletion) take too, and the check it runs under that lock (raising to refuse)."""
    customer_id: str | None
    subject: str | None
    check: Callable[[], None]


def through_subject(namespace: str, subject: str, owned: str, meta: MetaStore,
                    party: Sequence[str] | None = None) -> Through:
    """A v1 write through `subject` (its id or key) on subject `owned`'s entitlement (a new one: `owned` is the
    subject's key, `party` the subjects the one-per-party check looked at). Checked under the lock: `subject` still
    known (404), `owned` still reached through it (404), still owned by the customer found now (409: moved
    meanwhile), and the party still `party` (409). A customer's update or a subject's deletion answering in between
    is seen, never written past."""
    owner = meta.customers_for_subjects(namespace, [owned]).get(owned)

    def check() -> None:
        now = party_keys(namespace, subject, meta)
        if owned not in now:
            raise NotFound(f"subject {subject!r} no longer has subject {owned!r}'s entitlements (its customer "
                           "changed meanwhile)")
        if meta.customers_for_subjects(namespace, [owned]).get(owned) != owner or (
                party is not None and set(now) != set(party)):
            raise Conflict(f"the customer of subject {owned!r} changed meanwhile (usageAttribution.subjectKeys); "
                           "reload it and try again")

    return Through(owner, None if owner else owned, check)


def customer_takes(namespace: str, keys: Sequence[str], taken: Sequence[str], customer_id: str | None = None, *,
                   store: EntitlementStore, meta: MetaStore, reserved: Reserved | None = None) -> None:
    """A customer's create or update giving it the subject keys `taken` (its keys after the write: `keys`), checked
    where it is written (directory.Taking), under the lock of the customer's subscriptions. Refused (409, nothing
    written) where a taken subject is another customer's, or has a live entitlement of a feature that another of
    `keys` has one of too: a customer is one billable party, with one entitlement per feature (OpenMeter keeps
    entitlements on the customer, one per feature), reached and checked through each of its subjects. Delete one of
    the two first. With `reserved` (and the customer's id), refused too where a taken subject's entitlement is of a
    feature the customer's subscriptions grant now or later, as a new entitlement of it is (Reserved, naming the
    subscription): the subscription's would be refused by OpenMeter's uniqueness check, and Billow's sync left it
    without the feature, the subject's own answering."""
    owners = meta.customers_for_subjects(namespace, taken)
    if owned := [k for k in taken if k in owners]:
        raise Conflict(f"usageAttribution.subjectKeys: subject {owned[0]!r} is already customer "
                       f"{owners[owned[0]]!r}'s", extensions={"conflictingEntityId": owners[owned[0]]})
    theirs = store.list_entitlements(namespace, list(taken))
    if not theirs:
        return
    if reserved is not None and customer_id is not None:
        for e in theirs:
            try:
                reserved(customer_id, e["featureKey"], "usageAttribution.subjectKeys")
            except Conflict as exc:
                raise Conflict(f"{exc.detail} (subject {e['subjectKey']!r} has its own entitlement {e['id']} of it: "
                               "or delete that one first)", extensions=exc.extensions) from None
    by_feature: dict[str, list[dict[str, Any]]] = {}
    for e in store.list_entitlements(namespace, list(keys), feature_keys=sorted({e["featureKey"] for e in theirs})):
        by_feature.setdefault(e["featureKey"], []).append(e)
    mine = set(taken)
    for feature, found in sorted(by_feature.items()):
        if len(found) > 1:
            one = next(e for e in found if e["subjectKey"] in mine)
            other = next(e for e in found if e is not one)
            raise Conflict(f"usageAttribution.subjectKeys: subject {one['subjectKey']!r} has an entitlement of "
                           f"feature {feature!r} ({one['id']}), and so has subject {other['subjectKey']!r} "
                           f"({other['id']}); a customer has one entitlement per feature: delete one of them first",
                           extensions={"conflictingEntityId": one["id"]})


def both(*checks: Callable[[], None]) -> Callable[[], None]:
    def check() -> None:
        for one in checks:
            one()

    return check


# -- entitlements --------------------------------------------------------------------------------------
Reserved = Callable[[str, str, str], None]
"""(customer id, feature key, field): raises Conflict, naming `field`, where one of the customer's subscriptions grants
the feature's entitlement now or later (subscriptions.refuse_granted): a new entitlement of it made through the
entitlement APIs is refused, as OpenMeter's scheduled one refuses it."""


def reserved_check(reserved: Reserved | None, customer_id: str | None, body: dict[str, Any],
                   doc: dict[str, Any]) -> Callable[[], None]:
    """`reserved` of the new entitlement `doc` of the customer (none without a customer or `reserved`), naming the
    field the request gave its feature by."""
    def check() -> None:
        if reserved is not None and customer_id is not None:
            reserved(customer_id, doc["featureKey"], "featureId" if body.get("featureId") is not None else "featureKey")

    return check


def create_entitlement(namespace: str, subject: str, body: Any, *, store: EntitlementStore, meta: MetaStore,
                       now: datetime, reserved: Reserved | None = None) -> dict[str, Any]:
    """A new entitlement of the subject; with `reserved`, refused for a feature the subject's customer's subscriptions
    grant (checked before and where it is written, under the customer's lock a subscription's write takes too)."""
    key = subject_key(namespace, subject, meta)
    doc, grant = build_entitlement(namespace, key, body, store=store, meta=meta, now=now)
    party = party_subject_keys(namespace, [key], meta)
    via = through_subject(namespace, subject, key, meta, party)
    granted = reserved_check(reserved, via.customer_id, body, doc)

    def refuse_second() -> None:
        existing = store.find_entitlement(namespace, party, doc["featureKey"])
        if existing is not None:
            raise Conflict(f"subject {existing['subjectKey']!r} already has an entitlement for feature "
                           f"{doc['featureKey']!r}", extensions={"conflictingEntityId": existing["id"]})

    refuse_second()
    granted()
    try:  # checked again where it is written: another container may have created it through another subject
        store.put_entitlement(namespace, doc, created_at=now, party=party, customer_id=via.customer_id,
                              subject=via.subject, grants=[grant] if grant is not None else [],
                              check=both(feature_still_live(namespace, body, doc, store), via.check, granted))
    except Conflict:  # created since the look: its 409 names that one, as the look's does
        refuse_second()
        raise
    return doc


def build_entitlement(namespace: str, key: str, body: Any, *, store: EntitlementStore, meta: MetaStore,
                      now: datetime) -> tuple[dict[str, Any], dict[str, Any] | None]:
    if not isinstance(body, dict):
        raise bad("", "entitlement must be a JSON object")
    etype = body.get("type")
    if etype not in ("metered", "static", "boolean"):
        raise bad("type", "required: metered, static or boolean")
    feature = _feature_of(namespace, body, store)
    stamp = format_rfc3339(now)
    doc: dict[str, Any] = {"id": new_id(), "type": etype, "subjectKey": key, "featureKey": feature["key"],
                           "featureId": feature["id"], "createdAt": stamp, "updatedAt": stamp, "activeFrom": stamp}
    if (md := fields.metadata(body)) is not None:
        doc["metadata"] = md
    grant = None
    if etype == "metered":
        if not feature.get("meterSlug"):
            raise bad("featureKey", f"feature {feature['key']!r} has no meter; a metered entitlement needs one")
        if body.get("usagePeriod") is None:
            raise bad("usagePeriod", "required for a metered entitlement")
        doc["usagePeriod"] = parse_period(body["usagePeriod"], "usagePeriod", now)
        doc["isSoftLimit"] = fields.flag(body, "isSoftLimit")
        if fields.flag(body, "isUnlimited"):
            raise bad("isUnlimited", "is deprecated and not supported; use a boolean entitlement")
        doc["isUnlimited"] = False
        doc["preserveOverageAtReset"] = fields.flag(body, "preserveOverageAtReset")
        doc["measureUsageFrom"] = format_rfc3339(measure_usage_from(body.get("measureUsageFrom"), doc["usagePeriod"], now))
        if body.get("issueAfterReset") is not None:
            issue = amount(body["issueAfterReset"], "issueAfterReset")
            prio = body.get("issueAfterResetPriority", 1)
            if isinstance(prio, bool) or not isinstance(prio, int) or not 1 <= prio <= 255:
                raise bad("issueAfterResetPriority", "must be an integer from 1 to 255")
            doc["issueAfterReset"], doc["issueAfterResetPriority"] = issue, prio
            if issue > 0:
                # OpenMeter: a grant whose rollover bounds both equal its amount, so every reset refills it.
                grant = {"id": new_id(), "entitlementId": doc["id"], "amount": issue, "priority": prio,
                         "effectiveAt": doc["measureUsageFrom"], "minRolloverAmount": issue,
                         "maxRolloverAmount": issue, "createdAt": stamp, "updatedAt": stamp,
                         "annotations": {"issueAfterReset": True}}
    elif etype == "static":
        config = body.get("config")
        if not isinstance(config, str):
            raise bad("config", "required: a JSON document encoded as a string")
        try:
            jsonx.loads(config)
        except (ValueError, RecursionError, ArithmeticError):  # malformed, nested past the parser, 1e99999999999999999999
            raise bad("config", "must be valid JSON") from None
        doc["config"] = config
    if etype != "metered" and body.get("usagePeriod") is not None:
        doc["usagePeriod"] = parse_period(body["usagePeriod"], "usagePeriod", now)
    return doc, grant


def feature_still_live(namespace: str, body: dict[str, Any], doc: dict[str, Any],
                       store: FeatureStore) -> Callable[[], None]:
    """A new entitlement's check where it is written, under the lock its feature's archive takes too: the feature
    archived since build_entitlement found it live is refused as an archived one is (400), never an entitlement
    written after the archive answered."""
    def check() -> None:
        if store.get_feature(namespace, doc["featureId"], include_archived=False) is None:
            field = "featureId" if body.get("featureId") is not None else "featureKey"
            raise bad(field, f"feature {body.get(field)!r} is archived; new entitlements cannot be created for it")

    return check


def _feature_of(namespace: str, body: dict[str, Any], store: FeatureStore) -> dict[str, Any]:
    fkey, fid = body.get("featureKey"), body.get("featureId")
    if fkey is None and fid is None:
        raise bad("featureKey", "featureKey or featureId is required")
    if fkey is not None:
        valid_key(fkey, "featureKey")
    if fid is not None and (not isinstance(fid, str) or not is_ulid(fid)):
        raise bad("featureId", "must be a feature id")
    ref = str(fid or fkey)
    feature = store.get_feature(namespace, ref, include_archived=False)
    if feature is None:
        archived = store.get_feature(namespace, ref, include_archived=True)
        why = "is archived; new entitlements cannot be created for it" if archived else "does not exist"
        raise bad("featureId" if fid else "featureKey", f"feature {ref!r} {why}")
    if fkey is not None and fid is not None and feature["key"] != fkey:
        raise bad("featureKey", "does not match featureId")
    return feature


def get_entitlement(namespace: str, entitlement_id: str, *, store: EntitlementStore,
                    subject_keys: list[str] | None = None, include_deleted: bool = False) -> dict[str, Any]:
    doc = store.get_entitlement(namespace, entitlement_id, include_deleted=include_deleted)
    if doc is None or (subject_keys is not None and doc["subjectKey"] not in subject_keys):
        raise NotFound(f"entitlement {entitlement_id!r} not found")
    return doc


def resolve(namespace: str, subject_keys: list[str], id_or_feature_key: str, *, store: EntitlementStore) -> dict[str, Any]:
    """An entitlement of the subject(s) by id, or by the key of its feature."""
    if is_ulid(id_or_feature_key):
        doc = store.get_entitlement(namespace, id_or_feature_key)
        if doc is not None and doc["subjectKey"] in subject_keys:
            return doc
    doc = store.find_entitlement(namespace, subject_keys, id_or_feature_key)
    if doc is None:
        raise NotFound(f"no entitlement {id_or_feature_key!r} for this subject")
    return doc


def sole(namespace: str, subject_keys: list[str], ent: dict[str, Any], *, store: EntitlementStore,
         field: str = "entitlementIdOrFeatureKey") -> dict[str, Any]:
    """`ent`, about to be written (overridden, granted, reset, or deleted by its feature's key), refused (409 naming
    every one) while the party `subject_keys` has another live entitlement of its feature. A customer has one per
    feature (OpenMeter; entitlements.customer_takes), but one whose subjects were joined before that was enforced may
    hold two: reads by the feature's key answer the first created (createdAt, then id: the store's find_entitlement)
    and never add them up, and a write to either would be shadowed by the other (an override by key replaced the
    first and the reads then answered the second) or leave the customer's access other than the write meant (a
    delete by key ended one, the other then answered). Deleting one by its id is the repair, and is not refused."""
    found = store.list_entitlements(namespace, subject_keys, feature_keys=[ent["featureKey"]])
    if len(found) > 1:
        ids = ", ".join(f"{e['id']} (subject {e['subjectKey']!r})" for e in found)
        raise Conflict(f"{field}: the customer has {len(found)} live entitlements of feature {ent['featureKey']!r}, "
                       f"{ids}, made before one entitlement per feature per customer was enforced; checks answer "
                       f"the first. Delete the one(s) not wanted by id, then try again",
                       extensions={"conflictingEntityId": next(e["id"] for e in found if e["id"] != ent["id"])})
    return ent


def delete_entitlement(namespace: str, subject: str, entitlement_id: str, *, store: EntitlementStore,
                       meta: MetaStore, now: datetime, by_subscription: bool = False) -> None:
    """Delete (end) the entitlement. One a subscription manages (its metadata names the subscription) is the
    subscription's to end (OpenMeter: 403 through the entitlement APIs)."""
    doc = get_entitlement(namespace, entitlement_id, store=store, subject_keys=party_keys(namespace, subject, meta))
    end_entitlement(namespace, doc, store=store, now=now, by_subscription=by_subscription,
                    via=through_subject(namespace, subject, doc["subjectKey"], meta))


def not_managed(doc: dict[str, Any]) -> None:
    """Refuse (403) ending or replacing, through the entitlement APIs, an entitlement a subscription manages (its
    metadata names the subscription): OpenMeter's subscription hook (PreDelete, which its delete and its override's
    SupersedeEntitlement run) forbids it."""
    managed_by = (doc.get("metadata") or {}).get("subscriptionId")
    if managed_by:
        raise Forbidden(f"entitlement {doc['id']} is managed by subscription {managed_by}; change or cancel the "
                        "subscription instead")


def end_entitlement(namespace: str, doc: dict[str, Any], *, store: EntitlementStore, now: datetime,
                    by_subscription: bool, via: Through) -> None:
    """Delete `doc`, checking `via`'s party under its lock (a customer's update or a subject's deletion at once is
    seen: the entitlement is ended through whom it still belongs to, or refused)."""
    if not by_subscription:
        not_managed(doc)
    now = as_of(now, doc.get("updatedAt"))  # made by a request begun after this one: ended there, not before
    stamp = format_rfc3339(now)
    doc.update(deletedAt=stamp, updatedAt=stamp, activeTo=stamp)
    store.put_entitlement(namespace, doc, created_at=parse_rfc3339(doc["createdAt"], "createdAt"), deleted_at=now,
                          customer_id=via.customer_id, subject=via.subject, check=via.check)


def override_entitlement(namespace: str, subject: str, id_or_feature_key: str, body: Any, *,
                         store: EntitlementStore, meta: MetaStore, now: datetime,
                         reserved: Reserved | None = None) -> dict[str, Any]:
    """Replace the entitlement with a new one (a new id, fresh grants). The old one keeps its history. With
    `reserved`, refused as a new entitlement is (create_entitlement) for a feature the customer's subscriptions grant:
    OpenMeter's override schedules the new one through the same uniqueness check."""
    keys = party_keys(namespace, subject, meta)
    old = sole(namespace, keys, resolve(namespace, keys, id_or_feature_key, store=store), store=store)
    not_managed(old)
    now = as_of(now, old.get("updatedAt"))  # made by a request begun after this one: replaced there, not before
    doc, grant = build_entitlement(namespace, old["subjectKey"], body, store=store, meta=meta, now=now)
    if doc["featureKey"] != old["featureKey"]:
        raise bad("featureKey", "an override must keep the feature of the entitlement it replaces")
    stamp = format_rfc3339(now)
    old.update(deletedAt=stamp, updatedAt=stamp, activeTo=stamp)
    via = through_subject(namespace, subject, old["subjectKey"], meta)
    granted = reserved_check(reserved, via.customer_id, body, doc)
    granted()
    store.replace_entitlement(namespace, old["id"], doc, at=now, old_doc=old, customer_id=via.customer_id,
                              subject=via.subject, grants=[grant] if grant is not None else [],
                              check=both(feature_still_live(namespace, body, doc, store), via.check, granted))
    return doc


# -- grants --------------------------------------------------------------------------------------------
def create_grant(namespace: str, subject: str, id_or_feature_key: str, body: Any, *, store: EntitlementStore,
                 meta: MetaStore, now: datetime) -> dict[str, Any]:
    keys = party_keys(namespace, subject, meta)
    ent = sole(namespace, keys, resolve(namespace, keys, id_or_feature_key, store=store), store=store)
    doc = build_grant(namespace, ent, body, store=store, now=now)
    return write_grant(namespace, ent, doc, store=store, now=now,
                       via=through_subject(namespace, subject, ent["subjectKey"], meta))


def write_grant(namespace: str, ent: dict[str, Any], doc: dict[str, Any], *, store: EntitlementStore,
                now: datetime, via: Through) -> dict[str, Any]:
    """Store a new grant (build_grant's) of `ent`, checking under the locks a deletion, a reset and `via`'s party
    take that the entitlement is live, that its current usage period has not begun after the grant's effectiveAt
    (a reset at once), and `via`'s check."""
    def in_period() -> None:
        open_period(namespace, ent, parse_rfc3339(doc["effectiveAt"], "effectiveAt"), field="effectiveAt",
                    what="a grant", store=store, now=now)

    store.put_grant(namespace, doc, created_at=now, customer_id=via.customer_id, subject=via.subject,
                    check=both(entitlement_still_live(namespace, ent["id"], store), via.check, in_period))
    return grant_json(doc, now)


def open_period(namespace: str, ent: dict[str, Any], when: datetime, *, field: str, what: str,
                store: EntitlementStore, now: datetime) -> None:
    """Refuse (400 `field`) an instant before the current usage period: `what` may not rewrite a closed period."""
    period_start = current_period(ent, store=store, namespace=namespace, at=now)[0]
    if when < period_start:
        raise bad(field, f"before the current usage period ({format_rfc3339(period_start)}): {what} may not "
                         "rewrite the balance of a closed period")


def entitlement_still_live(namespace: str, entitlement_id: str, store: EntitlementStore) -> Callable[[], None]:
    """A new grant's check where it is written, under the lock its entitlement's deletion (or override) takes too:
    the entitlement ended since the grant's look is refused as an ended one is (404), never granted after the
    deletion answered."""
    def check() -> None:
        if store.get_entitlement(namespace, entitlement_id) is None:
            raise NotFound(f"entitlement {entitlement_id!r} not found (deleted or replaced meanwhile)")

    return check


def build_grant(namespace: str, ent: dict[str, Any], body: Any, *, store: EntitlementStore, now: datetime,
                v2: bool = False, at: str = "") -> dict[str, Any]:
    """A grant of the (metered) entitlement, validated, not stored. `v2`: OpenMeter's v2 input, where expiration
    is optional (the grant never expires), maxRolloverAmount defaults to the amount, and annotations are accepted.
    `at` prefixes the field names of errors (e.g. `grants[0].`)."""
    try:
        return _build_grant(namespace, ent, body, store=store, now=now, v2=v2)
    except ValidationFailed as e:
        if not at:
            raise
        raise ValidationFailed(f"{at}{e.detail}", [{**err, "field": f"{at}{err['field']}".rstrip(".")}
                                                   for err in e.errors]) from None


# OpenMeter's entitlement create inputs (v1 and v2; metered, static, boolean) make none of these nullable. Checked on
# request bodies (the routes), not in build_entitlement: subscription sync builds its bodies from plan templates.
ENTITLEMENT_NOT_NULL = ("type", "featureKey", "featureId", "metadata", "usagePeriod", "isSoftLimit", "isUnlimited",
                        "measureUsageFrom", "issueAfterReset", "issueAfterResetPriority", "preserveOverageAtReset",
                        "config", "issue", "grants")


def requested(body: Any) -> Any:
    """An entitlement create (or override) request's body: a null in a field OpenMeter's schema does not make nullable
    is a 400 naming it, never taken for the field left out."""
    if isinstance(body, dict):
        fields.not_null(body, ENTITLEMENT_NOT_NULL)
    return body


_GRANT_NOT_NULL = ("priority", "expiration", "maxRolloverAmount", "minRolloverAmount", "metadata", "recurrence")


def _build_grant(namespace: str, ent: dict[str, Any], body: Any, *, store: EntitlementStore, now: datetime,
                 v2: bool) -> dict[str, Any]:
    if ent["type"] != "metered":
        raise bad("entitlementIdOrFeatureKey", "grants apply to metered entitlements only")
    if not isinstance(body, dict):
        raise bad("", "grant must be a JSON object")
    # OpenMeter's grant inputs make none of these nullable: never a null taken for the field left out (a v2 grant with
    # expiration null never expired).
    fields.not_null(body, _GRANT_NOT_NULL + (("annotations",) if v2 else ()))
    amt = amount(body.get("amount"), "amount", positive=True)
    prio = body.get("priority", 1)
    if isinstance(prio, bool) or not isinstance(prio, int) or not 1 <= prio <= 255:
        raise bad("priority", "must be an integer from 1 to 255")
    if body.get("effectiveAt") is None:
        raise bad("effectiveAt", "required")
    effective = minute(_time(body["effectiveAt"], "effectiveAt"))
    open_period(namespace, ent, effective, field="effectiveAt", what="a grant", store=store, now=now)
    expires, expiration = parse_expiration(body.get("expiration"), effective, v2)
    max_roll = amount(body.get("maxRolloverAmount", amt if v2 else 0), "maxRolloverAmount")
    min_roll = amount(body.get("minRolloverAmount", 0), "minRolloverAmount")
    if min_roll > max_roll:
        raise bad("minRolloverAmount", "must not exceed maxRolloverAmount")
    stamp = format_rfc3339(now)
    doc: dict[str, Any] = {
        "id": new_id(), "entitlementId": ent["id"], "amount": amt, "priority": prio,
        "effectiveAt": format_rfc3339(effective), "maxRolloverAmount": max_roll, "minRolloverAmount": min_roll,
        "createdAt": stamp, "updatedAt": stamp,
    }
    if expires is not None:
        doc.update(expiration=expiration, expiresAt=format_rfc3339(expires))
    optional_grant_fields(doc, body, effective, v2)
    return doc


def grant_json(doc: dict[str, Any], now: datetime) -> dict[str, Any]:
    out = dict(doc)
    if (doc.get("annotations") or {}).get("issueAfterReset") == "true":  # stored as a string before 2026-12
        out["annotations"] = {**doc["annotations"], "issueAfterReset": True}
    if doc.get("recurrence"):
        nxt = period_of(doc["recurrence"]).containing(max(minute(now), parse_rfc3339(doc["effectiveAt"], "e")))[1]
        out["nextRecurrence"] = format_rfc3339(nxt)
    return out


def list_grants(namespace: str, subject: str | None, id_or_feature_key: str | None, *, store: EntitlementStore,
                meta: MetaStore, now: datetime, include_deleted: bool = False) -> list[dict[str, Any]]:
    if subject is not None and id_or_feature_key is not None:
        ent = resolve(namespace, party_keys(namespace, subject, meta), id_or_feature_key, store=store)
        docs = store.list_grants(namespace, [ent["id"]])
    else:
        docs = store.list_grants(namespace)
    return [grant_json(d, now) for d in docs if include_deleted or not d.get("deletedAt")]


def void_grant(namespace: str, grant_id: str, *, store: EntitlementStore, now: datetime,
               at: datetime | None = None) -> None:
    """Void the grant from `at` (now by default): usage before it stays burnt from the grant, none after. `at`
    may not be in the future nor before the entitlement's current usage period (a closed period is never
    rewritten)."""
    doc = store.get_grant(namespace, grant_id)
    if doc is None or doc.get("deletedAt"):
        raise NotFound(f"grant {grant_id!r} not found")
    if doc.get("voidedAt"):
        raise Conflict(f"grant {grant_id!r} is already voided")
    before = jsonx.dumps(doc)
    when = minute(now)
    if at is not None and at > now:
        raise bad("at", f"{format_rfc3339(at)} is in the future; a grant is voided now or at a past instant")
    ent = store.get_entitlement(namespace, doc["entitlementId"], include_deleted=True) if at is not None else None

    def in_period() -> None:  # again under the entitlement's lock a reset takes: one at once is seen
        if ent is not None and at is not None:
            open_period(namespace, ent, at, field="at", what="voiding", store=store, now=now)

    in_period()
    if at is not None:
        when = minute(at)
    stamp = format_rfc3339(when)
    doc.update(voidedAt=stamp, updatedAt=format_rfc3339(as_of(now, doc.get("updatedAt"))))
    # voided meanwhile: 409, as after
    store.put_grant(namespace, doc, created_at=now, expect_doc=before, check=in_period if ent is not None else None)


# -- resets --------------------------------------------------------------------------------------------
def reset(namespace: str, subject: str, entitlement_id: str, body: Any, *, store: EntitlementStore,
          meta: MetaStore, now: datetime) -> None:
    keys = party_keys(namespace, subject, meta)
    ent = sole(namespace, keys, get_entitlement(namespace, entitlement_id, store=store, subject_keys=keys), store=store,
               field="entitlementId")
    write_reset(namespace, ent, body, store=store, now=now,
                via=through_subject(namespace, subject, ent["subjectKey"], meta))


def write_reset(namespace: str, ent: dict[str, Any], body: Any, *, store: EntitlementStore, now: datetime,
                via: Through) -> None:
    """Reset `ent` as `body` asks, checking again under the entitlement's lock (which its other resets, grants,
    voids and deletion take) and `via`'s party's: the entitlement live, the reset after the current usage period's
    start (another reset at once is seen), and `via`'s check."""
    if ent["type"] != "metered":
        raise bad("entitlementId", "only metered entitlements have usage to reset")
    body = body if body is not None else {}
    if not isinstance(body, dict):
        raise bad("", "reset must be a JSON object")
    at = minute(_time(body["effectiveAt"], "effectiveAt")) if body.get("effectiveAt") is not None else minute(now)
    if at > now:
        raise bad("effectiveAt", "a reset cannot be in the future")

    def after_start() -> None:
        """After the current usage period's start, and after every stored reset: the period is judged as of this
        request's `now`, and a reset another request (begun after it, or on a clock ahead) wrote meanwhile at a later
        instant is not in it; one before it would split the period that reset closed, after it answered (409: reload
        the entitlement and reset again). One read of the resets for both."""
        resets = store.list_resets(namespace, ent["id"])
        start = period_at(ent, resets, now)[0]
        if at <= start:
            raise bad("effectiveAt", f"must be after the start of the current usage period ({format_rfc3339(start)}); "
                                     "resets may not overlap")
        if later := [r["at"] for r in resets if r["at"] >= at]:
            raise Conflict(f"entitlement {ent['id']} was reset meanwhile at {format_rfc3339(max(later))}; a reset "
                           "never comes before the last one")

    after_start()
    preserve = body.get("preserveOverage")
    if preserve is not None and not isinstance(preserve, bool):
        raise bad("preserveOverage", "must be true or false")
    store.add_reset(namespace, ent["id"], at, retain_anchor=fields.flag(body, "retainAnchor"), preserve_overage=preserve,
                    now=now, customer_id=via.customer_id, subject=via.subject,
                    check=both(entitlement_still_live(namespace, ent["id"], store), via.check, after_start))


def current_period(ent: dict[str, Any], *, store: EntitlementStore, namespace: str, at: datetime) -> tuple[datetime, datetime]:
    """The usage period in force at `at` (billow.domain.entitlements.period_at over the stored manual resets)."""
    return period_at(ent, store.list_resets(namespace, ent["id"]), at)


UsageFn = Callable[[datetime, datetime], Decimal]
