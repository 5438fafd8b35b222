"""Subjects and customers: who usage belongs to. A customer owns subjects through usageAttribution.subjectKeys."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from billow.domain import fields
from billow.errors import NotFound, ValidationFailed
from billow.ids import new_id
from billow.ports import MetaStore
from billow.services import pages, params
from billow.timeutil import as_of, format_rfc3339, parse_rfc3339

CUSTOMER_FIELDS = ("name", "description", "metadata", "key", "usageAttribution", "primaryEmail", "currency", "billingAddress")


_bad = ValidationFailed.at


def upsert_subjects(namespace: str, body: Any, *, meta: MetaStore, now: datetime) -> list[dict[str, Any]]:
    if not isinstance(body, list):
        raise _bad("", "body must be a JSON array of subjects")
    for i, s in enumerate(body):
        if not isinstance(s, dict) or not isinstance(s.get("key"), str) or not s["key"].strip():
            raise _bad(f"[{i}].key", "required, a non-empty string")
        # OpenMeter's SubjectUpsert: displayName, metadata and stripeCustomerId nullable, the periods not
        fields.not_null(s, ("currentPeriodStart", "currentPeriodEnd"), f"[{i}].")
        fields.subject_key(s["key"], f"[{i}].key")
        if s.get("metadata") is not None and not isinstance(s["metadata"], dict):
            raise _bad(f"[{i}].metadata", "must be an object")
        for text in ("displayName", "stripeCustomerId"):  # stripeCustomerId: OpenMeter's, deprecated (Billow keeps none)
            if s.get(text) is not None and not isinstance(s[text], str):
                raise _bad(f"[{i}].{text}", "must be a string")
        for period in ("currentPeriodStart", "currentPeriodEnd"):  # OpenMeter's date-times (Billow keeps neither)
            if s.get(period) is not None:
                parse_rfc3339(s[period], f"[{i}].{period}")
    return [meta.upsert_subject(namespace, s, now) for s in body]


def get_subject(namespace: str, id_or_key: str, *, meta: MetaStore) -> dict[str, Any]:
    s = meta.get_subject(namespace, id_or_key)
    if s is None:
        raise NotFound(f"subject {id_or_key!r} not found")
    return s


def delete_subject(namespace: str, id_or_key: str, *, meta: MetaStore, now: datetime) -> None:
    meta.delete_subject(namespace, get_subject(namespace, id_or_key, meta=meta)["id"], now)


def _validate_customer(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _bad("", "customer must be a JSON object")
    fields.not_null(body, (f for f in CUSTOMER_FIELDS if f != "metadata"))  # OpenMeter's: metadata alone nullable
    name = body.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > 256:
        raise _bad("name", "required, 1 to 256 characters")
    key = body.get("key")
    if key is not None and (not isinstance(key, str) or not key or len(key) > 256):
        raise _bad("key", "1 to 256 characters")
    subject_keys = _subject_keys(body)
    cur = body.get("currency")
    if cur is not None and (not isinstance(cur, str) or len(cur) != 3 or not cur.isupper()):
        raise _bad("currency", "must be an ISO 4217 code such as USD")
    fields.metadata(body)  # an object of strings
    for name in ("description", "primaryEmail"):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise _bad(name, "must be a string")
    _check_address(body.get("billingAddress"))
    out = {k: body[k] for k in CUSTOMER_FIELDS if body.get(k) is not None}
    out["usageAttribution"] = {"subjectKeys": subject_keys}
    if "billingAddress" in out:  # OpenMeter's Address fields alone (any other was stored and shown back as sent)
        out["billingAddress"] = {k: v for k, v in out["billingAddress"].items() if k in ADDRESS_FIELDS}
    return out


ADDRESS_FIELDS = ("country", "postalCode", "state", "city", "line1", "line2", "phoneNumber")


def _check_address(address: Any) -> None:
    """OpenMeter's Address: an object whose fields are strings, `country` an ISO 3166-1 alpha-2 code."""
    if address is None:
        return
    if not isinstance(address, dict):
        raise _bad("billingAddress", "must be an object")
    fields.not_null(address, ADDRESS_FIELDS, "billingAddress.")  # OpenMeter's Address: none nullable
    for name in ADDRESS_FIELDS:
        value = address.get(name)
        if value is not None and (not isinstance(value, str) or len(value) > 1024):
            raise _bad(f"billingAddress.{name}", "must be a string of at most 1024 characters")
    country = address.get("country")
    if country is not None and not (len(country) == 2 and country.isascii() and country.isupper()):
        raise _bad("billingAddress.country", "must be an ISO 3166-1 alpha-2 code such as US")


def _subject_keys(body: dict[str, Any]) -> list[str]:
    """`usageAttribution.subjectKeys` (none when there is no usageAttribution) without repeats."""
    ua = body.get("usageAttribution", {"subjectKeys": []})
    if not isinstance(ua, dict) or not isinstance(ua.get("subjectKeys"), list) or not all(
            isinstance(k, str) and k for k in ua["subjectKeys"]):
        raise _bad("usageAttribution.subjectKeys", "must be a list of non-empty strings")
    for i, key in enumerate(ua["subjectKeys"]):
        fields.subject_key(key, f"usageAttribution.subjectKeys[{i}]")
    return list(dict.fromkeys(ua["subjectKeys"]))


# A create's or update's check of the subject keys it gives the customer: (its keys after the write, the keys among
# them it did not have, the customer's id), run where the write is made, under the locks writes through those subjects
# and the customer's subscriptions take; it raises to refuse (entitlements.customer_takes: one entitlement per feature
# per customer, none of a feature its subscriptions grant).
Taking = Callable[[list[str], list[str], str], None]


def _taking(doc: dict[str, Any], taking: Taking | None) -> Callable[[list[str]], None] | None:
    if taking is None:
        return None
    keys, customer_id = doc["usageAttribution"]["subjectKeys"], doc["id"]
    return lambda taken: taking(keys, taken, customer_id)


def create_customer(namespace: str, body: Any, *, meta: MetaStore, now: datetime,
                    taking: Taking | None = None) -> dict[str, Any]:
    doc = _validate_customer(body)
    stamp = format_rfc3339(now)
    doc.update(id=new_id(), createdAt=stamp, updatedAt=stamp)
    meta.put_customer(namespace, doc, taking=_taking(doc, taking))
    return doc


def get_customer(namespace: str, id_or_key: str, *, meta: MetaStore) -> dict[str, Any]:
    c = meta.get_customer(namespace, id_or_key)
    if c is None:
        raise NotFound(f"customer {id_or_key!r} not found")
    return c


def update_customer(namespace: str, id_or_key: str, body: Any, *, meta: MetaStore, now: datetime,
                    taking: Taking | None = None) -> dict[str, Any]:
    current = get_customer(namespace, id_or_key, meta=meta)
    doc = _validate_customer(body)
    # never stamped before the edit it replaces (one by a container whose clock is ahead)
    doc.update(id=current["id"], createdAt=current["createdAt"],
               updatedAt=format_rfc3339(as_of(now, current.get("updatedAt"))))
    # a DELETE landing since the read stays: 404, never undone
    meta.put_customer(namespace, doc, live=True, taking=_taking(doc, taking))
    return doc


def delete_customer(namespace: str, id_or_key: str, *, meta: MetaStore, now: datetime,
                    check: Callable[[], None] | None = None) -> None:
    """`check` (no running subscription) runs where the deletion is written, under the lock a new subscription of the
    customer takes: a subscription added at once is either seen by it or sees the customer deleted."""
    doc = get_customer(namespace, id_or_key, meta=meta)
    doc["deletedAt"] = format_rfc3339(now)
    meta.put_customer(namespace, doc, check=check)


def list_customers(namespace: str, qs: dict[str, list[str]], *, meta: MetaStore,
                   on_plan: Callable[[str], set[str]] | None = None) -> dict[str, Any]:
    """OpenMeter's page object of the namespace's customers (page/pageSize); `planKey`: only those whose running
    subscription is on that plan (`on_plan` gives their ids)."""
    docs = meta.list_customers(namespace)
    plan_key = params.one(qs, "planKey")
    if plan_key is not None and on_plan is not None:
        ids = on_plan(plan_key)
        docs = [d for d in docs if d["id"] in ids]
    return pages.page(docs, qs, pages.CUSTOMERS)
