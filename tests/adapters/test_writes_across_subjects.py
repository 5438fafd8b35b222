"""Writes through a subject or a customer at once with a write that changes who the subject is: a reset beside
another reset, a grant or a void of the same entitlement; a customer's update moving a subject key; a subject's
deletion. Two containers on one PostgreSQL, as tests/adapters/test_writes_across_resources.py (whose helpers these
share): each round releases the two calls together, and counts the end states no order of the two answers makes."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from functools import partial
from typing import Any

from billow.adapters.sql import SqlMetaStore
from billow.errors import BillowError
from tests.adapters.test_writes_across_containers import metas  # noqa: F401 (the fixture)
from tests.adapters.test_writes_across_resources import NOW, ROUNDS, _entitlement_ids, _meter, lands_after

LATER = NOW + timedelta(hours=2)
METERED = {"type": "metered", "usagePeriod": {"interval": "MONTH"}}


def _stores(metas_: list[SqlMetaStore]) -> list[Any]:
    from billow.adapters.sql_entitlements import SqlEntitlementStore

    return [SqlEntitlementStore(m.engine) for m in metas_]


def _customer(meta: SqlMetaStore, key: str, subjects: list[str]) -> dict[str, Any]:
    from billow.services import directory

    return directory.create_customer("ns", {"key": key, "name": key, "usageAttribution": {"subjectKeys": subjects}},
                                     meta=meta, now=NOW)


def _move(meta: SqlMetaStore, customer: dict[str, Any], subjects: list[str]) -> None:
    """PUT /api/v1/customers/{c} giving the customer these subject keys."""
    from billow.services import directory

    directory.update_customer("ns", customer["id"], {"key": customer["key"], "name": customer["name"],
                                                     "usageAttribution": {"subjectKeys": subjects}},
                              meta=meta, now=NOW)


def _feature(meta: SqlMetaStore, ents: Any, key: str, metered: bool = True) -> None:
    from billow.services.features import create_feature

    if metered:
        meta.put_meter("ns", _meter(f"{key}_tok"))
    create_feature("ns", {"key": key, "name": key, **({"meterSlug": f"{key}_tok"} if metered else {})},
                   store=ents, meta=meta, now=NOW)


def _call(fn: Callable[[], Any]) -> bool:
    """Whether `fn` answered success (a 4xx is a refusal; anything else fails the test)."""
    try:
        fn()
    except BillowError as e:
        assert 400 <= e.status < 500, e
        return False
    return True


# -- 1. resets ---------------------------------------------------------------------------------------------------
def test_two_resets_of_one_entitlement_at_once_never_write_one_the_other_refuses(
        metas: list[SqlMetaStore]) -> None:  # noqa: F811
    """A reset must be later than the current usage period's start, which the last reset is (400 `effectiveAt`,
    'resets may not overlap'). Two resets of one entitlement at once (v1 through the subject, v2 through the
    customer), the second at an earlier instant than the first: the first answered, and the second, which after it
    is refused, landed after that answer all the same."""
    from billow.services import entitlements as ents_service
    from billow.services import entitlements_v2

    ents = _stores(metas)
    _feature(metas[0], ents[0], "rr_feat")
    bad: list[BaseException] = []
    late = 0
    for round_ in range(ROUNDS):
        key = f"rr{round_}"
        _customer(metas[0], key, [key])
        ent = ents_service.create_entitlement("ns", key, {**METERED, "featureKey": "rr_feat"}, store=ents[0],
                                              meta=metas[0], now=NOW)
        first = {"effectiveAt": (LATER - timedelta(minutes=10)).isoformat()}
        second = {"effectiveAt": (LATER - timedelta(minutes=30)).isoformat()}
        v2 = round_ % 2
        one = (partial(entitlements_v2.reset, "ns", key, ent["id"], second, store=ents[0], meta=metas[0], now=LATER)
               if v2 else
               partial(ents_service.reset, "ns", key, ent["id"], second, store=ents[0], meta=metas[0], now=LATER))
        other = partial(ents_service.reset, "ns", key, ent["id"], first, store=ents[1], meta=metas[1], now=LATER)
        refused, landed = lands_after(one, other, partial(_resets, ents[1], ent["id"]))
        bad += refused
        late += landed
    assert not bad and late == 0, (f"{late} of {ROUNDS} earlier resets landed after a later one answered", bad[:3])


def test_a_grant_or_void_at_once_with_a_reset_is_never_written_into_the_period_the_reset_closed(
        metas: list[SqlMetaStore]) -> None:  # noqa: F811
    """A grant (v1, v2) effective before the current usage period, or a void at an instant before it, is refused
    (400): it would rewrite a closed period's balance. A reset closes the period: a grant effective (a void dated)
    before the reset, made at once with it, landed after the reset answered (the resetting container, listing the
    grants right after, saw none, or the grant unvoided), and the closed period's balance changed after the reset."""
    from billow.services import entitlements as ents_service
    from billow.services import entitlements_v2

    ents = _stores(metas)
    _feature(metas[0], ents[0], "rg_feat")
    at = LATER - timedelta(minutes=30)
    bad: list[BaseException] = []
    late = 0
    for round_ in range(2 * ROUNDS):
        key = f"rg{round_}"
        _customer(metas[0], key, [key])
        ent = ents_service.create_entitlement("ns", key, {**METERED, "featureKey": "rg_feat"}, store=ents[0],
                                              meta=metas[0], now=NOW)
        body = {"amount": 10, "effectiveAt": (at - timedelta(minutes=10)).isoformat(),
                "expiration": {"duration": "MONTH", "count": 1}}
        kind = round_ % 3
        if kind == 2:  # a void dated before the reset
            grant = ents_service.create_grant("ns", key, ent["id"], body, store=ents[0], meta=metas[0], now=NOW)
            write: Callable[[], Any] = partial(ents_service.void_grant, "ns", grant["id"], store=ents[0], now=LATER,
                                               at=at - timedelta(minutes=5))
        elif kind == 1:
            write = partial(entitlements_v2.create_grant, "ns", key, ent["id"], body, store=ents[0], meta=metas[0],
                            now=LATER)
        else:
            write = partial(ents_service.create_grant, "ns", key, ent["id"], body, store=ents[0], meta=metas[0],
                            now=LATER)
        reset = partial(ents_service.reset, "ns", key, ent["id"], {"effectiveAt": at.isoformat()}, store=ents[1],
                        meta=metas[1], now=LATER)
        refused, landed = lands_after(write, reset, partial(_grants, ents[1], ent["id"]))
        bad += refused
        late += landed
    assert not bad and late == 0, (f"{late} of {2 * ROUNDS} grants or voids landed before a reset after it answered",
                                   bad[:3])


def _resets(ents: Any, entitlement_id: str) -> list[Any]:
    return [r["at"] for r in ents.list_resets("ns", entitlement_id)]


def _grants(ents: Any, entitlement_id: str) -> list[Any]:
    return sorted((g["id"], g.get("voidedAt")) for g in ents.list_grants("ns", [entitlement_id]))


# -- 2, 4. a customer's update moving a subject key ----------------------------------------------------------------
def test_an_entitlement_made_for_a_subject_its_customer_gives_up_at_once_never_lands_on_none(
        metas: list[SqlMetaStore]) -> None:  # noqa: F811
    """PUT /api/v1/customers/{c} without one of its subject keys: the subject is known no more (404 to a v1 create
    through it), and the customer's v2 creates go on its remaining first key. A create at once (v1 through the old
    key, v2 through the customer, whose first key it was) found the subject the customer's, then wrote on it after
    the update answered: a live entitlement on a subject no customer owns, which the updating container, listing
    the old key's entitlements right after its answer, did not see."""
    from billow.services import entitlements as ents_service
    from billow.services import entitlements_v2

    ents = _stores(metas)
    _feature(metas[0], ents[0], "mv_feat", metered=False)
    body = {"type": "boolean", "featureKey": "mv_feat"}
    bad: list[BaseException] = []
    late = 0
    for round_ in range(2 * ROUNDS):
        key = f"mv{round_}"
        customer = _customer(metas[0], key, [key, f"{key}_new"])
        make: Callable[[], Any] = (
            partial(entitlements_v2.create, "ns", key, body, store=ents[0], meta=metas[0], now=NOW) if round_ % 2
            else partial(ents_service.create_entitlement, "ns", key, body, store=ents[0], meta=metas[0], now=NOW))
        refused, landed = lands_after(make, partial(_move, metas[1], customer, [f"{key}_new"]),
                                       partial(_entitlement_ids, ents[1], key))
        bad += refused
        late += landed
    assert not bad and late == 0, (f"{late} of {2 * ROUNDS} entitlements landed on a subject its customer gave up "
                                   "after the update answered", bad[:3])


def test_a_write_through_a_customer_on_a_subject_it_gives_up_at_once_never_lands_after_the_update(
        metas: list[SqlMetaStore]) -> None:  # noqa: F811
    """A v2 reset or grant through a customer (POST /api/v2/customers/{c}/entitlements/{e}/reset, .../grants) needs
    the entitlement to be the customer's (404 otherwise); an update of the customer moving the entitlement's subject
    to another customer takes it away. The write at once found it the customer's, then (checking only that the
    subject was still known, now through the other customer) wrote after the update answered: a reset or a grant
    through a customer that no longer had the entitlement."""
    from billow.services import entitlements as ents_service
    from billow.services import entitlements_v2

    ents = _stores(metas)
    _feature(metas[0], ents[0], "cv_feat")
    grant = {"amount": 10, "effectiveAt": NOW.isoformat(), "expiration": {"duration": "MONTH", "count": 1}}
    bad: list[BaseException] = []
    late = 0
    for round_ in range(2 * ROUNDS):
        key = f"cv{round_}"
        customer = _customer(metas[0], key, [key, f"{key}_kept"])
        heir = _customer(metas[0], f"{key}_heir", [f"{key}_heir"])
        ent = ents_service.create_entitlement("ns", key, {**METERED, "featureKey": "cv_feat"}, store=ents[0],
                                              meta=metas[0], now=NOW)
        write: Callable[[], Any] = (
            partial(entitlements_v2.reset, "ns", customer["id"], ent["id"], {}, store=ents[0], meta=metas[0],
                    now=LATER) if round_ % 2 else
            partial(entitlements_v2.create_grant, "ns", customer["id"], ent["id"], grant, store=ents[0],
                    meta=metas[0], now=LATER))

        def move(customer: dict[str, Any] = customer, heir: dict[str, Any] = heir, key: str = key) -> None:
            _move(metas[1], customer, [f"{key}_kept"])
            _move(metas[1], heir, [heir["key"], key])

        def children(ent_id: str = ent["id"]) -> tuple[Any, ...]:
            return tuple(_resets(ents[1], ent_id)), tuple(_grants(ents[1], ent_id))

        refused, landed = lands_after(write, move, children)
        bad += refused
        late += landed
    assert not bad and late == 0, (f"{late} of {2 * ROUNDS} resets or grants through a customer landed after it gave "
                                   "the entitlement's subject away", bad[:3])


def _between_check_and_write(store: Any, during: Callable[[], None], wait: float = 1.0,
                             after_check: bool = True) -> list[threading.Thread]:
    """Make `store`'s next write of an entitlement (an end, an override), a grant or a reset start `during` on a
    thread of its own once the write's check has passed (or, without `after_check` or a check, before the write
    begins: between its look and its write), and wait for it up to `wait` s before writing. Where `during` takes no
    lock the write holds, it runs between the write's check and its commit (the interleaving a race makes now and
    then, every time); where it does, it waits for the commit. The thread, to join."""
    started: list[threading.Thread] = []

    def pause() -> None:
        started.append(threading.Thread(target=during))
        started[0].start()
        started[0].join(wait)

    def pausing(write: Callable[..., Any]) -> Callable[..., Any]:
        def paused(*args: Any, **kw: Any) -> Any:
            check = kw.get("check")
            if not started and (check is None or not after_check):
                pause()
            elif not started:
                def checked(check: Callable[[], None] = check) -> None:
                    check()
                    pause()

                kw["check"] = checked
            return write(*args, **kw)

        return paused

    for name in ("put_entitlement", "replace_entitlement", "put_grant", "add_reset"):
        setattr(store, name, pausing(getattr(store, name)))
    return started


def test_an_entitlement_ended_through_a_customer_that_gives_its_subject_up_at_once_never_ends_after_the_update(
        metas: list[SqlMetaStore]) -> None:  # noqa: F811
    """The same for ending the entitlement: a deletion or an override through the customer (v2) or through a fellow
    subject of its customer (v1, DELETE or PUT .../override on /api/v1/subjects/{fellow}/entitlements/{e}) is a 404
    once the customer's update moved the entitlement's subject to another customer. A deletion or override that
    found it the customer's, then wrote after the update answered, ended the other customer's entitlement (3 of 40
    rounds at once; here the update runs between the look and the write, `_between_check_and_write`: every time)."""
    from billow.services import entitlements as ents_service
    from billow.services import entitlements_v2

    ents = _stores(metas)
    _feature(metas[0], ents[0], "ce_feat", metered=False)
    body = {"type": "boolean", "featureKey": "ce_feat"}
    late = []
    for kind in range(4):
        key = f"ce{kind}"
        customer = _customer(metas[0], key, [key, f"{key}_kept"])
        heir = _customer(metas[0], f"{key}_heir", [f"{key}_heir"])
        ent = ents_service.create_entitlement("ns", key, body, store=ents[0], meta=metas[0], now=NOW)
        write = [partial(entitlements_v2.delete, "ns", customer["id"], ent["id"]),
                 partial(ents_service.delete_entitlement, "ns", f"{key}_kept", ent["id"]),
                 partial(entitlements_v2.override, "ns", customer["id"], ent["id"], body),
                 partial(ents_service.override_entitlement, "ns", f"{key}_kept", ent["id"], body)][kind]

        def children(key: str = key) -> dict[str, Any]:
            return {e["id"]: e.get("deletedAt") for e in ents[1].list_entitlements("ns", [key], include_deleted=True)}

        seen: list[Any] = []

        def move(customer: dict[str, Any] = customer, heir: dict[str, Any] = heir, key: str = key,
                 seen: list[Any] = seen, children: Callable[[], Any] = children) -> None:
            _move(metas[1], customer, [f"{key}_kept"])
            _move(metas[1], heir, [heir["key"], key])
            seen.append(children())

        store = _stores(metas)[0]
        threads = _between_check_and_write(store, move, after_check=False)
        ended = _call(partial(write, store=store, meta=metas[0], now=LATER))
        threads[0].join()
        late.append(ended and children() != seen[0])
    assert not any(late), f"(v2 delete, v1 delete, v2 override, v1 override) ended after the update answered: {late}"


# -- 3. a subject's deletion -------------------------------------------------------------------------------------
def test_a_subject_deleted_while_a_write_goes_through_it_never_gets_the_write_after_the_deletion(
        metas: list[SqlMetaStore]) -> None:  # noqa: F811
    """DELETE /api/v1/subjects/{s} makes a subject known only through /subjects unknown: a v1 create, grant,
    override or reset through it is a 404 after. Each looked the subject up, checked it again where it wrote (under
    the feature's or the entitlement's lock, which the deletion does not take), then wrote: a deletion answering 204
    in between listed nothing new, and a moment later the deleted subject had it. The deletion runs here right after
    the write's check (`_between_check_and_write`). Now the write takes the subject's lock its deletion takes
    (`adapters/sql.subject_lock`) and checks the subject under it: there when the deletion answers, or refused."""
    from billow.services import directory
    from billow.services import entitlements as ents_service

    ents = _stores(metas)
    _feature(metas[0], ents[0], "sd_feat")
    metered = {**METERED, "featureKey": "sd_feat"}
    grant = {"amount": 10, "effectiveAt": NOW.isoformat(), "expiration": {"duration": "MONTH", "count": 1}}
    late = []
    for kind in range(4):
        key = f"sd{kind}"
        metas[0].upsert_subject("ns", {"key": key}, NOW)
        ent = ents_service.create_entitlement("ns", key, metered, store=ents[0], meta=metas[0], now=NOW) if kind else {}
        store = _stores(metas)[0]
        write = [partial(ents_service.create_entitlement, "ns", key, metered),
                 partial(ents_service.create_grant, "ns", key, ent.get("id"), grant),
                 partial(ents_service.override_entitlement, "ns", key, ent.get("id"), metered),
                 partial(ents_service.reset, "ns", key, ent.get("id"), {})][kind]

        def children(key: str = key, ent: dict[str, Any] = ent) -> tuple[Any, ...]:
            ids = tuple(sorted(_entitlement_ids(ents[1], key)))
            return (ids, tuple(_grants(ents[1], ent["id"])), tuple(_resets(ents[1], ent["id"]))) if ent else (ids,)

        seen: list[Any] = []

        def delete(key: str = key, seen: list[Any] = seen, children: Callable[[], Any] = children) -> None:
            directory.delete_subject("ns", key, meta=metas[1], now=NOW)
            seen.append(children())

        threads = _between_check_and_write(store, delete)
        made = _call(partial(write, store=store, meta=metas[0], now=LATER))
        threads[0].join()
        late.append(made and bool(seen) and children() != seen[0])
    assert not any(late), f"(create, grant, override, reset) landed after the subject's deletion answered: {late}"


# -- 5. a customer's update taking a subject ---------------------------------------------------------------------
def test_a_customer_taking_a_subject_while_an_entitlement_is_made_never_has_two_of_one_feature(
        metas: list[SqlMetaStore]) -> None:  # noqa: F811
    """PUT /api/v1/customers/{c} giving the customer a subject that has an entitlement of a feature the customer has
    one of too is refused (409, entitlements.customer_takes): one entitlement per feature per customer. The update
    checks that under the customer's lock and the taken subject's: an entitlement of the feature made at once (v1
    through the taken subject, which takes the subject's lock; v2 through the customer, which takes the customer's)
    is seen by the update, or sees the subject taken. Here the update runs right after the create's check (or
    between its look and its write), on the other container; it must never leave two live entitlements of the
    feature among the customer's subjects."""
    from billow.services import directory, entitlements_v2
    from billow.services import entitlements as ents_service

    ents = _stores(metas)
    _feature(metas[0], ents[0], "tk_feat", metered=False)
    _feature(metas[0], ents[0], "tk_other", metered=False)
    body = {"type": "boolean", "featureKey": "tk_feat"}
    two = []
    for kind in range(3):
        key, free = f"tk{kind}", f"tk{kind}_free"
        customer = _customer(metas[0], key, [key])
        metas[0].upsert_subject("ns", {"key": free}, NOW)
        if kind == 1:  # the free subject's first, the customer's made at once through the customer
            ents_service.create_entitlement("ns", free, body, store=ents[0], meta=metas[0], now=NOW)
            ents_service.create_entitlement("ns", key, {**body, "featureKey": "tk_other"}, store=ents[0],
                                            meta=metas[0], now=NOW)
        else:  # the customer's first, the free subject's made at once through it
            ents_service.create_entitlement("ns", key, body, store=ents[0], meta=metas[0], now=NOW)
        store = _stores(metas)[0]
        make = (partial(entitlements_v2.create, "ns", key, body) if kind == 1 else
                partial(ents_service.create_entitlement, "ns", free, body))
        taking = partial(ents_service.customer_takes, "ns", store=ents[1], meta=metas[1])
        take = partial(directory.update_customer, "ns", customer["id"],
                       {"key": key, "name": key, "usageAttribution": {"subjectKeys": [key, free]}}, meta=metas[1],
                       now=NOW, taking=taking)
        threads = _between_check_and_write(store, partial(_call, take), after_check=kind < 2)
        _call(partial(make, store=store, meta=metas[0], now=NOW))
        threads[0].join()
        keys = metas[1].get_customer("ns", customer["id"])["usageAttribution"]["subjectKeys"]
        two.append(len(ents[1].list_entitlements("ns", keys, feature_keys=["tk_feat"])) > 1)
    assert not any(two), f"(v1 through the subject, v2 through the customer, v1 before its check) left two: {two}"


# -- 6. a customer's deletion, its subject known through /subjects too ---------------------------------------------
def test_a_write_through_a_customer_deleted_at_once_never_lands_though_its_subject_stays_known(
        metas: list[SqlMetaStore]) -> None:  # noqa: F811
    """A v2 reset or grant through a customer (POST /api/v2/customers/{c}/entitlements/{e}/reset, .../grants) is a
    404 once the customer is deleted. Where the customer's subject is also upserted through /api/v1/subjects it
    stays known after the deletion, so a recheck of the subject under the lock passes: the write must recheck the
    customer. Here the deletion runs on the other container between the write's look and its write, or right after
    its check (`_between_check_and_write`); the write must then be refused, or be there when the deletion answers.
    The deletion as DELETE /api/v1/customers/{c} makes it (its check: no running subscription), and without a check:
    the store took the customer's lock only with a check (or for an update), so that one did not wait for a write
    holding it (the reset or grant landed after it answered: [False, True, False, True])."""
    from billow.adapters.sql_catalog import SqlCatalogStore
    from billow.services import directory, entitlements_v2, subscriptions
    from billow.services import entitlements as ents_service

    ents = _stores(metas)
    catalog = SqlCatalogStore(metas[1].engine)
    _feature(metas[0], ents[0], "dk_feat")
    grant = {"amount": 10, "effectiveAt": NOW.isoformat(), "expiration": {"duration": "MONTH", "count": 1}}
    late = []
    for kind in range(8):
        key = f"dk{kind}"
        metas[0].upsert_subject("ns", {"key": key}, NOW)
        customer = _customer(metas[0], key, [key])
        ent = ents_service.create_entitlement("ns", key, {**METERED, "featureKey": "dk_feat"}, store=ents[0],
                                              meta=metas[0], now=NOW)
        write = (partial(entitlements_v2.reset, "ns", key, ent["id"], {}) if kind % 4 < 2 else
                 partial(entitlements_v2.create_grant, "ns", key, ent["id"], grant))
        checked = kind < 4

        def children(ent_id: str = ent["id"]) -> tuple[Any, ...]:
            return tuple(_resets(ents[1], ent_id)), tuple(_grants(ents[1], ent_id))

        seen: list[Any] = []

        def delete(customer: dict[str, Any] = customer, seen: list[Any] = seen, children: Callable[[], Any] = children,
                   checked: bool = checked) -> None:
            deletable = partial(subscriptions.check_customer_deletable, "ns", customer["id"], store=catalog, now=LATER)
            directory.delete_customer("ns", customer["id"], meta=metas[1], now=LATER,
                                      check=deletable if checked else None)
            seen.append(children())

        store = _stores(metas)[0]
        threads = _between_check_and_write(store, delete, after_check=kind % 2 == 1)
        made = _call(partial(write, store=store, meta=metas[0], now=LATER))
        threads[0].join()
        assert metas[1].get_customer("ns", customer["id"]) is None and metas[1].get_subject("ns", key) is not None
        late.append(made and bool(seen) and children() != seen[0])
    assert not any(late), ("(reset, reset after its check, grant, grant after its check; then the same, the deletion "
                           f"without a check) landed after the deletion answered: {late}")
