"""Product catalog use-cases: plans and add-ons with versions (draft -> published -> archived), plan add-ons.

A key has versions 1, 2, ...; at most one draft at a time. Publishing makes a draft effective now and ends the
version that was effective before it; only drafts are edited; an active version is archived (ended), never
deleted. Publishing checks what a draft cannot: a plan's billables align with its cadence (when it says they
must), every rate card's feature exists, and usage-based and metered rate cards have a feature with a meter."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Protocol

from billow.domain import catalog
from billow.errors import Conflict, NotFound, ValidationFailed
from billow.ids import new_id
from billow.services.features import FeatureStore
from billow.timeutil import as_of, format_rfc3339

KIND_NAMES = {"plan": "plan", "addon": "add-on"}


class CatalogStore(Protocol):
    def put_versioned(self, kind: str, namespace: str, doc: dict[str, Any]) -> None:
        """Save a version as it is (a new one: Conflict when its key has that version already)."""
        ...

    def change_versions[T](self, kind: str, namespace: str, key: str,
                           change: Callable[[list[dict[str, Any]]], tuple[T, Sequence[dict[str, Any]]]], *,
                           feature_keys: Callable[[list[dict[str, Any]]], Sequence[str]] | None = None) -> T:
        """`change` the key's versions (every one, the deleted too, as they are where the write is made): it returns
        (its result, the versions to write) or raises to write nothing. One change per key at a time, under the lock
        of each feature `feature_keys` names from the versions, which the feature's archive takes."""
        ...

    def get_versioned(self, kind: str, namespace: str, id_: str) -> dict[str, Any] | None: ...

    def list_versioned(self, kind: str, namespace: str, *, key: str | None = None,
                       include_deleted: bool = False) -> list[dict[str, Any]]: ...

    def put_plan_addon(self, namespace: str, doc: dict[str, Any]) -> None: ...

    def change_plan_addons(self, namespace: str, plan_id: str,
                           change: Callable[[dict[str, Any] | None, list[dict[str, Any]]], dict[str, Any]]
                           ) -> dict[str, Any]:
        """Write the plan add-on `change` makes from the plan and its live add-ons as they are when it is written,
        one such write (or update or publish of the plan) at a time per plan."""
        ...

    def list_plan_addons(self, namespace: str, plan_id: str) -> list[dict[str, Any]]: ...


def _parse(kind: str, body: Any) -> dict[str, Any]:
    return catalog.parse_plan(body) if kind == "plan" else catalog.parse_addon(body)


def _cards(kind: str, doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    if kind == "plan":
        return catalog.plan_rate_cards(doc)
    return [(f"rateCards[{i}]", rc) for i, rc in enumerate(doc["rateCards"])]


def _publish_problems(namespace: str, kind: str, doc: dict[str, Any], features: FeatureStore,
                      store: CatalogStore | None = None, now: datetime | None = None) -> list[dict[str, Any]]:
    """What stops publishing, as OpenMeter's validationErrors (field, message, code, severity); with `store`, a
    plan's add-ons too (_addon_problems)."""
    cards = _cards(kind, doc)
    keys = {rc["featureKey"] for _, rc in cards if rc.get("featureKey")}
    found = {k: features.get_feature(namespace, k) for k in keys}
    unaligned = catalog.alignment_problems(doc) if kind == "plan" else []
    offered = _addon_problems(namespace, doc, store, now) if kind == "plan" and store and now else []
    multiple = catalog.instance_price_problems(doc) if kind == "addon" else []
    return [{"field": f, "message": m, "code": code, "severity": "critical"}
            for code, problems in (("rate_card_billing_cadence_unaligned", unaligned),
                                   ("invalid_reference", catalog.publish_problems(cards, found)),
                                   ("plan_has_incompatible_addon", offered),
                                   ("addon_invalid_price_for_multi_instance", multiple))
            for f, m in problems]


def _not_offerable(addon: dict[str, Any], now: datetime) -> str | None:
    """Why a plan may not offer this add-on version (OpenMeter's PlanAddon.Validate: the add-on active and open-ended;
    productcatalog/planaddon.go:78-81), or None."""
    if addon.get("deletedAt"):
        return "is deleted"
    status = catalog.status(addon, now)
    if status != "active" or addon.get("effectiveTo") is not None:
        return f"is {'archived from ' + addon['effectiveTo'] if addon.get('effectiveTo') else status}"
    return None


def _addon_problems(namespace: str, plan: dict[str, Any], store: CatalogStore, now: datetime) -> catalog.Problems:
    """The plan's add-ons it may not offer once published, each named: one no longer active (archived, e.g. by
    publishing its key's next version, deleted). OpenMeter refuses publishing such a plan (plan/service/plan.go:
    517-533, ErrPlanHasIncompatibleAddon, 400); so one plan never offers two versions of one add-on key (only one is
    active at a time)."""
    out: catalog.Problems = []
    offered = store.list_plan_addons(namespace, plan["id"])
    for pa in offered:
        addon = store.get_versioned("addon", namespace, pa["addon"]["id"])
        why = "is deleted" if addon is None else _not_offerable(addon, now)
        if why is not None:
            ref = pa["addon"]
            others = [o["addon"]["version"] for o in offered if o["addon"]["key"] == ref["key"] and o["id"] != pa["id"]]
            also = f"; the plan also offers version(s) {others} of it" if others else ""
            out.append((f"addons[{ref['key']}@{ref['version']}]",
                        f"add-on {ref['key']!r} version {ref['version']} (plan add-on {pa['id']}) {why}: a published "
                        f"plan offers active add-ons only{also}; remove it (DELETE /api/v1/plans/{{planId}}/addons/"
                        f"{pa['id']}) and offer the active version"))
        elif addon is not None:  # the plan's rate cards were edited since it was offered
            out += [(f"addons[{pa['addon']['key']}@{pa['addon']['version']}]", m)
                    for _, m in catalog.overlay_problems(plan, pa["fromPlanPhase"], addon)]
    return out


def present(namespace: str, kind: str, doc: dict[str, Any], *, features: FeatureStore, now: datetime,
            store: CatalogStore | None = None) -> dict[str, Any]:
    """The served document: its status now and, for drafts, what would stop publishing it (with `store`, a plan's
    add-ons too)."""
    out = dict(doc)
    out["status"] = catalog.status(doc, now)
    problems = _publish_problems(namespace, kind, doc, features, store, now) if out["status"] == "draft" else []
    out["validationErrors"] = problems or None
    return out


def create(namespace: str, kind: str, body: Any, *, store: CatalogStore, now: datetime) -> dict[str, Any]:
    """A new draft: version 1 of a new key; for a plan or add-on whose key exists, its next version (as OpenMeter's
    CreatePlan and CreateAddon do), unless the key already has a draft (400 naming `key`). A deleted version keeps
    its number: the next comes after it. Looked at and written under the key's lock (CatalogStore.change_versions),
    as every version change of the key."""
    fields = _parse(kind, body)

    def make(every: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        draft = next((v for v in every if not v.get("deletedAt") and catalog.status(v, now) == "draft"), None)
        if draft is not None:
            raise _draft_exists(kind, "key", draft)
        stamp = format_rfc3339(now)
        doc = {"id": new_id(), **fields, "version": _next_number(every), "createdAt": stamp, "updatedAt": stamp,
               "effectiveFrom": None, "effectiveTo": None, "deletedAt": None}
        return doc, [doc]

    return store.change_versions(kind, namespace, fields["key"], make)


def _draft_exists(kind: str, field: str, draft: dict[str, Any]) -> ValidationFailed:
    """A new version of a key that has a draft: 400 naming `field` (OpenMeter's CreatePlan, NextPlan and CreateAddon:
    GenericValidationError "only a single draft version is allowed", plan/service/plan.go:110-113 and 759-762,
    addon/service/addon.go:161-165; their contract lists no 409), with the draft as conflictingEntityId."""
    message = (f"{KIND_NAMES[kind]} {draft['key']!r} already has a draft (version {draft['version']}); only a single "
               f"draft version is allowed: change it with PUT /api/v1/{kind}s/{draft['id']}, or publish or delete it")
    err = ValidationFailed.at(field, message)
    err.extensions["conflictingEntityId"] = draft["id"]
    return err


def _next_number(every: list[dict[str, Any]]) -> int:
    """A key's next version number: after every version it had, the deleted ones too (their rows keep their numbers,
    unique per key; OpenMeter counts them likewise)."""
    return max((v["version"] for v in every), default=0) + 1


def get(namespace: str, kind: str, id_or_key: str, *, store: CatalogStore, include_latest: bool = False) -> dict[str, Any]:
    """By id; by key: the active version, else the latest (`includeLatest` always takes the latest)."""
    doc = store.get_versioned(kind, namespace, id_or_key)
    if doc is not None and not include_latest:
        return doc
    key = doc["key"] if doc is not None else id_or_key
    versions = store.list_versioned(kind, namespace, key=key)
    if not versions:
        raise NotFound(f"{KIND_NAMES[kind]} {id_or_key!r} not found")
    if include_latest:
        return versions[-1]
    live = [v for v in versions if v.get("effectiveFrom") and not v.get("effectiveTo")]
    return live[-1] if live else versions[-1]


def _draft(namespace: str, kind: str, id_: str, store: CatalogStore, now: datetime) -> dict[str, Any]:
    return _require_draft(kind, id_, store.get_versioned(kind, namespace, id_), now)


def _require_draft(kind: str, id_: str, doc: dict[str, Any] | None, now: datetime) -> dict[str, Any]:
    if doc is None or doc.get("deletedAt"):
        raise NotFound(f"{KIND_NAMES[kind]} {id_!r} not found")
    if catalog.status(doc, now) != "draft":
        raise Conflict(f"{KIND_NAMES[kind]} {doc['key']!r} version {doc['version']} is {catalog.status(doc, now)}; "
                       f"only a draft can be changed (POST /api/v1/{kind}s/{doc['key']}/next makes one)")
    return doc


def _key_of(namespace: str, kind: str, id_: str, store: CatalogStore) -> str:
    doc = store.get_versioned(kind, namespace, id_)
    if doc is None or doc.get("deletedAt"):
        raise NotFound(f"{KIND_NAMES[kind]} {id_!r} not found")
    return str(doc["key"])


def _one(kind: str, id_: str, every: list[dict[str, Any]]) -> dict[str, Any]:
    """Version `id_` of the key's versions as read under its lock (a deleted one is not found)."""
    doc = next((v for v in every if v["id"] == id_), None)
    if doc is None or doc.get("deletedAt"):
        raise NotFound(f"{KIND_NAMES[kind]} {id_!r} not found")
    return doc


def update(namespace: str, kind: str, id_: str, body: Any, *, store: CatalogStore, now: datetime) -> dict[str, Any]:
    """Replace a draft, as it is under its key's lock: after a publish at once it is refused (only a draft can be
    changed, 409) rather than writing the published version back as a draft; a publish after it publishes it."""
    def replace(every: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        doc = _require_draft(kind, id_, _one(kind, id_, every), now)
        given = {**body, "key": doc["key"]} if isinstance(body, dict) and "key" not in body else body
        fields = _parse(kind, given)
        if fields["key"] != doc["key"]:
            raise ValidationFailed("key: a version keeps its key",
                                   [{"field": "key", "message": f"must be {doc['key']!r}"}])
        doc.update(fields, updatedAt=format_rfc3339(as_of(now, doc.get("updatedAt"))))  # never before the last edit
        return doc, [doc]

    return store.change_versions(kind, namespace, _key_of(namespace, kind, id_, store), replace)


def publish(namespace: str, kind: str, id_: str, *, store: CatalogStore, features: FeatureStore,
            now: datetime) -> dict[str, Any]:
    """The draft in force from now, or from the last change written to a version of its key when that is later (an
    archive of the version it replaces, begun after this request, written first: never two versions in force at
    once); the version it replaces ends there, in the same transaction under the key's lock (an archive, delete or
    next of the key at once is written wholly before or wholly after it), and under the lock of each feature its
    rate cards name, which the feature's archive takes: a feature archived since the first look is refused as an
    archived one is (400), never published on after the archive answered."""
    def publishable(doc: dict[str, Any]) -> None:
        problems = _publish_problems(namespace, kind, doc, features, store, now)
        if problems:
            raise ValidationFailed("; ".join(f"{p['field']}: {p['message']}" for p in problems), problems)

    def feature_keys(every: list[dict[str, Any]]) -> list[str]:
        doc = next((v for v in every if v["id"] == id_), None)
        return [rc["featureKey"] for _, rc in _cards(kind, doc) if rc.get("featureKey")] if doc is not None else []

    def make_effective(every: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        doc = _require_draft(kind, id_, _one(kind, id_, every), now)
        publishable(doc)
        live = [v for v in every if not v.get("deletedAt")]
        stamp = format_rfc3339(as_of(now, *(v.get("updatedAt") for v in live)))
        doc.update(effectiveFrom=stamp, updatedAt=stamp)
        ended = [{**v, "effectiveTo": stamp, "updatedAt": stamp} for v in live  # the version it replaces ends
                 if v["id"] != id_ and v.get("effectiveFrom") and not v.get("effectiveTo")]
        return doc, [doc, *ended]

    publishable(_draft(namespace, kind, id_, store, now))  # refused before any lock is taken; again under them
    return store.change_versions(kind, namespace, _key_of(namespace, kind, id_, store), make_effective,
                                 feature_keys=feature_keys)


def archive(namespace: str, kind: str, id_: str, *, store: CatalogStore, now: datetime) -> dict[str, Any]:
    """Archived as the version is under its key's lock (another archive or a publish at once ended it: 409, as one
    after it answers). A version whose end is written is archived even while that end is later than this request's
    `now` (another archive, begun after this one, wrote it first): archiving it again would answer 200 twice and
    move its end."""
    def end(every: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        doc = _one(kind, id_, every)
        if doc.get("effectiveTo") is not None:  # ended by a request that began after this one: active at `now`
            raise Conflict(f"{KIND_NAMES[kind]} {doc['key']!r} version {doc['version']} is already archived (from "
                           f"{doc['effectiveTo']}); only an active one can be archived")
        at = as_of(now, doc.get("updatedAt"))  # published by a request begun after this one: ended there, not before
        if catalog.status(doc, at) not in ("active", "scheduled"):
            raise Conflict(f"{KIND_NAMES[kind]} {doc['key']!r} version {doc['version']} is {catalog.status(doc, at)}; "
                           "only an active one can be archived")
        stamp = format_rfc3339(at)
        doc.update(effectiveTo=stamp, updatedAt=stamp)
        return doc, [doc]

    return store.change_versions(kind, namespace, _key_of(namespace, kind, id_, store), end)


def delete(namespace: str, kind: str, id_: str, *, store: CatalogStore, now: datetime) -> None:
    """Delete a version not in effect, as it is under its key's lock: a publish at once makes it 409 (archive it
    first) rather than writing the draft it read back deleted."""
    def mark(every: list[dict[str, Any]]) -> tuple[None, list[dict[str, Any]]]:
        doc = _one(kind, id_, every)
        if catalog.status(doc, now) in ("active", "scheduled"):
            raise Conflict(f"{KIND_NAMES[kind]} {doc['key']!r} version {doc['version']} is in effect; archive it first")
        stamp = format_rfc3339(now)
        doc.update(deletedAt=stamp, updatedAt=stamp)
        return None, [doc]

    store.change_versions(kind, namespace, _key_of(namespace, kind, id_, store), mark)


def next_version(namespace: str, kind: str, id_or_key: str, *, store: CatalogStore, now: datetime) -> dict[str, Any]:
    """A new draft copying a version: by key, the latest; by id, that version (an archived one restored as the next
    draft, as OpenMeter's next does). Whether the key has a draft, the copy and the new number come from one read
    under the key's lock: two at once would otherwise both find none, and a publish, update or delete at once is
    written wholly before or after it (a source deleted meanwhile: 404)."""
    found = store.get_versioned(kind, namespace, id_or_key)

    def make(every: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        live = [v for v in every if not v.get("deletedAt")]
        if not live:
            raise NotFound(f"{KIND_NAMES[kind]} {id_or_key!r} not found")
        latest = live[-1]
        if catalog.status(latest, now) == "draft":
            raise _draft_exists(kind, f"{kind}IdOrKey", latest)
        source = _one(kind, id_or_key, every) if found is not None else latest
        stamp = format_rfc3339(now)
        doc = {**source, "id": new_id(), "version": _next_number(every), "createdAt": stamp, "updatedAt": stamp,
               "effectiveFrom": None, "effectiveTo": None, "deletedAt": None}
        return doc, [doc]

    return store.change_versions(kind, namespace, found["key"] if found is not None else id_or_key, make)


def list_docs(namespace: str, kind: str, qs: dict[str, list[str]], *, store: CatalogStore, now: datetime) -> list[dict[str, Any]]:
    include_deleted = (qs.get("includeDeleted") or ["false"])[0] == "true"
    docs = store.list_versioned(kind, namespace, include_deleted=include_deleted)
    key_versions = _key_versions(qs)
    matches: list[Callable[[dict[str, Any]], bool]] = []
    if qs.get("id"):
        matches.append(lambda d: d["id"] in qs["id"])
    if qs.get("key"):
        matches.append(lambda d: d["key"] in qs["key"])
    if qs.get("currency"):
        matches.append(lambda d: d["currency"] in qs["currency"])
    if key_versions:
        matches.append(lambda d: d["version"] in key_versions.get(d["key"], ()))
    if kind == "plan":  # OpenMeter's plan list: a plan matching any of id, key, keyVersion, currency
        docs = [d for d in docs if not matches or any(m(d) for m in matches)]
    else:  # its add-on list: every filter given must match
        docs = [d for d in docs if all(m(d) for m in matches)]
    if qs.get("status"):
        docs = [d for d in docs if catalog.status(d, now) in qs["status"]]
    return docs


def _key_versions(qs: dict[str, list[str]]) -> dict[str, set[int]]:
    """OpenMeter's `keyVersion` deepObject filter, `keyVersion[KEY]=VERSION` (repeatable): KEY -> versions."""
    out: dict[str, set[int]] = {}
    for name, values in qs.items():
        if name != "keyVersion" and not name.startswith("keyVersion["):
            continue
        key = name[len("keyVersion["):-1] if name.startswith("keyVersion[") and name.endswith("]") else ""
        if not key:
            raise catalog.failure([(name, "must be keyVersion[KEY]=VERSION with a plan or add-on key")])
        for v in values:
            if not (v.isascii() and v.isdigit()) or len(v) > 9 or int(v) < 1:
                raise catalog.failure([(name, f"{v[:40]!r} is not a version (a positive integer)")])
            out.setdefault(key, set()).add(int(v))
    return out


# -- plan add-ons ------------------------------------------------------------------------------------------
def add_plan_addon(namespace: str, plan_id: str, body: Any, *, store: CatalogStore, now: datetime) -> dict[str, Any]:
    plan = _draft(namespace, "plan", plan_id, store, now)
    if not isinstance(body, dict):
        raise catalog.failure([("body", "must be an object {addonId, fromPlanPhase, maxQuantity?}")])
    problems: catalog.Problems = []
    addon = store.get_versioned("addon", namespace, str(body.get("addonId")))
    if addon is None or addon.get("deletedAt"):
        problems.append(("addonId", "unknown add-on"))
    elif (why := _not_offerable(addon, now)) is not None:  # OpenMeter's CreatePlanAddon: HasAddonStatus(active)
        problems.append(("addonId", f"add-on {addon['key']!r} version {addon['version']} {why}: a plan offers "
                                    "active (published, not archived) add-ons only"))
    elif addon["currency"] != plan["currency"]:
        problems.append(("addonId", f"the add-on is in {addon['currency']}, the plan in {plan['currency']}"))
    phase = body.get("fromPlanPhase")
    if phase not in [p["key"] for p in plan["phases"]]:
        problems.append(("fromPlanPhase", "must be a phase key of the plan"))
    maxq = body.get("maxQuantity")
    if maxq is not None and (isinstance(maxq, bool) or not isinstance(maxq, int) or maxq < 1):
        problems.append(("maxQuantity", "must be a positive integer"))
    if addon is not None and addon.get("instanceType") == "single" and maxq not in (None, 1):
        problems.append(("maxQuantity", "a single-instance add-on can be added once"))
    if not problems and addon is not None:
        problems += [("addonId", m) for _, m in catalog.overlay_problems(plan, str(phase), addon)]
    if problems:
        raise catalog.failure(problems)
    assert addon is not None
    stamp = format_rfc3339(now)
    doc = {"id": new_id(), "planId": plan_id, "addon": {"id": addon["id"], "key": addon["key"], "version": addon["version"]},
           "fromPlanPhase": phase, "maxQuantity": maxq, "metadata": body.get("metadata"), "createdAt": stamp,
           "updatedAt": stamp, "deletedAt": None}

    def add(plan: dict[str, Any] | None, live: list[dict[str, Any]]) -> dict[str, Any]:
        _on_draft(plan_id, plan, phase, now)
        if any(pa["addon"]["id"] == addon["id"] for pa in live):
            raise Conflict(f"add-on {addon['key']!r} is already on the plan")
        return doc

    return store.change_plan_addons(namespace, plan_id, add)


def _on_draft(plan_id: str, plan: dict[str, Any] | None, phase: Any, now: datetime) -> None:
    """A plan add-on write's checks on the plan as it is where the write is made (after the service's first look,
    another container may have published or changed it): still a draft, still with the phase the add-on starts in."""
    plan = _require_draft("plan", plan_id, plan, now)
    if phase is not None and phase not in [p["key"] for p in plan["phases"]]:
        raise catalog.failure([("fromPlanPhase", "must be a phase key of the plan")])


def _live_one(plan_addon_id: str, pa_ref: str, plan_id: str, live: list[dict[str, Any]]) -> dict[str, Any]:
    """The plan add-on `plan_addon_id` among the plan's live ones where the write is made (removed meanwhile: 404)."""
    for pa in live:
        if pa["id"] == plan_addon_id:
            return pa
    raise NotFound(f"add-on {pa_ref!r} is not on plan {plan_id!r}")


def plan_addon(namespace: str, plan_id: str, plan_addon_id: str, *, store: CatalogStore) -> dict[str, Any]:
    for pa in store.list_plan_addons(namespace, plan_id):
        if plan_addon_id in (pa["id"], pa["addon"]["id"], pa["addon"]["key"]):
            return pa
    raise NotFound(f"add-on {plan_addon_id!r} is not on plan {plan_id!r}")


def update_plan_addon(namespace: str, plan_id: str, plan_addon_id: str, body: Any, *, store: CatalogStore,
                      now: datetime) -> dict[str, Any]:
    """OpenMeter's PlanAddonReplaceUpdate on a draft plan: fromPlanPhase (required), maxQuantity, metadata."""
    plan = _draft(namespace, "plan", plan_id, store, now)
    doc = plan_addon(namespace, plan_id, plan_addon_id, store=store)
    if doc.get("deletedAt"):
        raise NotFound(f"add-on {plan_addon_id!r} is not on plan {plan_id!r}")
    if not isinstance(body, dict):
        raise catalog.failure([("body", "must be an object {fromPlanPhase, maxQuantity?, metadata?}")])
    problems: catalog.Problems = []
    phase = body.get("fromPlanPhase")
    if phase not in [p["key"] for p in plan["phases"]]:
        problems.append(("fromPlanPhase", "is required: a phase key of the plan"))
    maxq = body.get("maxQuantity")
    if maxq is not None and (isinstance(maxq, bool) or not isinstance(maxq, int) or maxq < 1):
        problems.append(("maxQuantity", "must be a positive integer"))
    addon = store.get_versioned("addon", namespace, doc["addon"]["id"])
    if addon is not None and addon.get("instanceType") == "single" and maxq not in (None, 1):
        problems.append(("maxQuantity", "a single-instance add-on can be added once"))
    if not problems and addon is not None:  # offered from another phase: that phase's rate cards and the later ones'
        problems += [("fromPlanPhase", m) for _, m in catalog.overlay_problems(plan, str(phase), addon)]
    metadata = body.get("metadata")
    if metadata is not None and (not isinstance(metadata, dict)
                                 or not all(isinstance(v, str) for v in metadata.values())):
        problems.append(("metadata", "must be an object of string values"))
    if problems:
        raise catalog.failure(problems)

    def replace(plan: dict[str, Any] | None, live: list[dict[str, Any]]) -> dict[str, Any]:
        _on_draft(plan_id, plan, phase, now)
        found = _live_one(doc["id"], plan_addon_id, plan_id, live)
        found.update(fromPlanPhase=phase, maxQuantity=maxq, metadata=metadata,
                     updatedAt=format_rfc3339(as_of(now, found.get("updatedAt"))))  # never before the last edit
        return found

    return store.change_plan_addons(namespace, plan_id, replace)


def remove_plan_addon(namespace: str, plan_id: str, plan_addon_id: str, *, store: CatalogStore, now: datetime) -> None:
    _draft(namespace, "plan", plan_id, store, now)
    doc = plan_addon(namespace, plan_id, plan_addon_id, store=store)

    def remove(plan: dict[str, Any] | None, live: list[dict[str, Any]]) -> dict[str, Any]:
        _on_draft(plan_id, plan, None, now)
        found = _live_one(doc["id"], plan_addon_id, plan_id, live)
        found.update(deletedAt=format_rfc3339(now))
        return found

    store.change_plan_addons(namespace, plan_id, remove)


def present_plan_addon(namespace: str, doc: dict[str, Any], *, store: CatalogStore, features: FeatureStore,
                       now: datetime) -> dict[str, Any]:
    addon = store.get_versioned("addon", namespace, doc["addon"]["id"])
    return {**doc, "addon": present(namespace, "addon", addon, features=features, now=now) if addon else doc["addon"],
            "validationErrors": None}
