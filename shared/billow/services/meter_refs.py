"""What still uses a meter, so that deleting it cannot break billing or balances (OpenMeter refuses to delete a
meter with active features or entitlements with a conflict; Billow also names the plans, add-ons and
subscriptions that would still rate it).

A meter is in use by:
- its features that are not archived (an archived feature no longer blocks by itself);
- plans and add-ons (draft, scheduled or active versions) with a rate card on any feature of the meter;
- subscriptions with a rate card on any feature of the meter that the billing run may still rate: running, or
  ended less than the correction window after the end of their last billing period;
- entitlements (not deleted) on any feature of the meter."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Protocol

from billow.errors import Conflict


class Features(Protocol):
    def list_features(self, namespace: str, include_archived: bool = False,
                      meter_slugs: list[str] | None = None) -> list[dict[str, Any]]: ...

    def list_entitlements(self, namespace: str, subject_keys: list[str] | None = None, include_deleted: bool = False,
                          feature_keys: list[str] | None = None) -> list[dict[str, Any]]: ...


class Catalog(Protocol):
    def list_versioned(self, kind: str, namespace: str, *, key: str | None = None,
                       include_deleted: bool = False) -> list[dict[str, Any]]: ...

    def list_subscriptions(self, namespace: str, customer_id: str | None = None) -> list[dict[str, Any]]: ...


def users_of(namespace: str, slug: str, *, ents: Features, catalog: Catalog, now: datetime) -> dict[str, list[Any]]:
    """Everything that uses meter `slug`: {"features": [key], "plans": [{id, key, version}], "addons": [...],
    "subscriptions": [id], "entitlements": [id]} (empty lists when nothing does)."""
    features = ents.list_features(namespace, include_archived=True, meter_slugs=[slug])
    keys = {f["key"] for f in features}
    ids = {f["id"] for f in features}
    out: dict[str, list[Any]] = {"features": [f["key"] for f in features if not f.get("archivedAt")],
                                 "plans": [], "addons": [], "subscriptions": [], "entitlements": []}
    if not keys:
        return out
    for kind in ("plan", "addon"):
        out[f"{kind}s"] = _catalog_users(namespace, kind, keys, catalog=catalog, now=now)
    out["subscriptions"] = _subscription_users(namespace, keys, catalog=catalog, now=now)
    out["entitlements"] = [e["id"] for e in ents.list_entitlements(namespace, feature_keys=sorted(keys))
                           if e.get("featureId") in ids]
    return out


def _catalog_users(namespace: str, kind: str, keys: set[str], *, catalog: Catalog,
                   now: datetime) -> list[dict[str, Any]]:
    """The plan or add-on versions (`kind`), not archived, with a rate card on one of the features `keys`."""
    from billow.domain import catalog as catalog_rules

    out = []
    for doc in catalog.list_versioned(kind, namespace):
        cards = catalog_rules.plan_rate_cards(doc) if kind == "plan" else [("", rc) for rc in doc["rateCards"]]
        if catalog_rules.status(doc, now) != "archived" and any(rc.get("featureKey") in keys for _, rc in cards):
            out.append({"id": doc["id"], "key": doc["key"], "version": doc["version"]})
    return out


def _subscription_users(namespace: str, keys: set[str], *, catalog: Catalog, now: datetime) -> list[Any]:
    """Ids of the subscriptions still rated (not deleted, not past their correction window) with an item on one
    of the features `keys`."""
    from billow.domain import subscriptions as subs

    out = []
    for sub in catalog.list_subscriptions(namespace):
        if sub.get("deletedAt") or not _still_rated(sub, now):
            continue
        if any(item.rate_card.get("featureKey") in keys for item in subs.items(sub)):
            out.append(sub["id"])
    return out


def _still_rated(sub: dict[str, Any], now: datetime) -> bool:
    from billow.domain import subscriptions as subs
    from billow.services.billing import CORRECTION_WINDOW

    start, end = subs.t(sub["activeFrom"]), subs.t(sub.get("activeTo"))
    assert start is not None
    if end is None:
        return True
    if end <= start:
        return False  # canceled before it started: never rated
    last_period_end = subs.cycle(sub).containing(end - timedelta(microseconds=1))[1]
    return now <= last_period_end + CORRECTION_WINDOW


def refuse_if_used(namespace: str, slug: str, *, ents: Features, catalog: Catalog, now: datetime) -> None:
    """Conflict (409) naming what uses meter `slug`, if anything does."""
    users = users_of(namespace, slug, ents=ents, catalog=catalog, now=now)
    if not any(users.values()):
        return
    named = []
    if users["features"]:
        named.append("features " + ", ".join(users["features"]))
    for kind in ("plans", "addons"):
        if users[kind]:
            named.append(f"{kind[:-1].replace('addon', 'add-on')}s " + ", ".join(
                f"{p['key']} (version {p['version']})" for p in users[kind]))
    for kind in ("subscriptions", "entitlements"):
        if users[kind]:
            named.append(f"{kind} " + ", ".join(users[kind]))
    raise Conflict(f"meter {slug!r} is in use and cannot be deleted: {'; '.join(named)}. Archive its features and "
                   "end or remove what uses them first", extensions=users)
