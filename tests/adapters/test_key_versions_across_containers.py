"""A key's version change and a customer's restore, made by two Lambda containers at once on one PostgreSQL (as on
Aurora): each read what it changes, then wrote it in more than one transaction, so a write of the other landing in
between left a state no order of the two requests makes. (The two-engines fixture and barrier are
tests/adapters/test_writes_across_containers.py's; the threads of one `billow serve` on SQLite:
tests/e2e/test_concurrent_writes_embedded.py.)

Each test runs the pair many rounds, released together at a barrier, and counts the rounds whose end state is wrong
(and any answer that is not a 2xx or a 4xx problem)."""

from __future__ import annotations

from datetime import timedelta
from functools import partial

from billow.adapters.sql import SqlMetaStore
from tests.adapters.test_writes_across_containers import at_once, metas  # noqa: F401 (the fixture)
from tests.adapters.test_writes_across_resources import _BASE_PLAN, NOW, _canceled_at, _refusals

ROUNDS = 30
_ADDON = {"name": "Extra", "currency": "USD", "instanceType": "single", "rateCards": [
    {"type": "flat_fee", "key": "extra", "name": "Extra fee", "billingCadence": "P1M",
     "price": {"type": "flat", "amount": "5", "paymentTerm": "in_advance"}}]}


def test_a_version_archived_while_the_next_is_published_is_never_in_force_beside_it(
        metas: list[SqlMetaStore]) -> None:  # noqa: F811
    """POST /api/v1/plans/{v2}/publish ends the version in force (v1) where v2 begins; POST .../{v1}/archive ends v1
    at its own now. The publish read the key's versions (for v2's start), wrote v2, then ended v1 in another
    transaction: an archive begun a second later and landing between the read and v2's write ended v1 after v2
    began, both versions in force from v2's start to v1's end (and, between v2's write and v1's end, two in force
    for every reader). Now a version change of a key takes the key's lock, reads and writes in one transaction: v1
    ends where v2 begins or v2 begins where the archive ended v1, and the end the archive answered is the one kept."""
    from billow.adapters.sql_catalog import SqlCatalogStore
    from billow.adapters.sql_entitlements import SqlEntitlementStore
    from billow.services import catalog

    catalogs = [SqlCatalogStore(m.engine) for m in metas]
    ents = [SqlEntitlementStore(m.engine) for m in metas]
    later = NOW + timedelta(seconds=1)
    bad: list[BaseException] = []
    overlapping = moved = 0
    for round_ in range(ROUNDS):
        kind = "addon" if round_ % 2 else "plan"
        body = {**(_ADDON if kind == "addon" else _BASE_PLAN), "key": f"k{round_}"}
        v1 = catalog.create("ns", kind, body, store=catalogs[0], now=NOW)
        catalog.publish("ns", kind, v1["id"], store=catalogs[0], features=ents[0], now=NOW)
        v2 = catalog.next_version("ns", kind, v1["id"], store=catalogs[0], now=NOW)
        results, errors = at_once([
            partial(catalog.publish, "ns", kind, v2["id"], store=catalogs[0], features=ents[0], now=NOW),
            partial(catalog.archive, "ns", kind, v1["id"], store=catalogs[1], now=later)])
        bad += _refusals(errors)
        one, two = (catalogs[1].get_versioned(kind, "ns", v["id"]) for v in (v1, v2))
        assert one is not None and two is not None
        overlapping += bool(one["effectiveTo"] and two["effectiveFrom"]
                            and one["effectiveTo"] > two["effectiveFrom"])
        moved += any(r["id"] == v1["id"] and r["effectiveTo"] != one["effectiveTo"] for r in results)
    assert not bad and overlapping == 0 and moved == 0, (
        f"{overlapping} of {ROUNDS} keys with two versions in force at once, {moved} archives whose answered end "
        "was not kept", bad[:3])


def test_a_subscription_canceled_while_it_is_restored_keeps_the_next_one_the_refused_restore_deleted(
        metas: list[SqlMetaStore]) -> None:  # noqa: F811
    """POST /api/v1/subscriptions/{s}/restore deletes the customer's subscriptions scheduled to start later, then
    continues the canceled one (only a canceled one: else 409). The deletions were written first, on their own: a
    cancel (immediate) landing before the restore's write made the restore a 409, and the next subscription stayed
    deleted all the same (the customer's plan change lost by a refused request). Now the deletions and the restore's
    write are one transaction under the customer's lock (`adapters/sql.customer_lock`): a refused restore deletes
    nothing."""
    from billow.adapters.sql_catalog import SqlCatalogStore
    from billow.adapters.sql_entitlements import SqlEntitlementStore
    from billow.errors import BillowError
    from billow.services import subscriptions as subs_service

    catalogs = [SqlCatalogStore(m.engine) for m in metas]
    ents = [SqlEntitlementStore(m.engine) for m in metas]
    end = "2026-07-01T00:00:00Z"
    bad: list[BaseException] = []
    lost = 0
    for round_ in range(ROUNDS):
        customer, first, _ = _canceled_at(end, f"r{round_}", metas[0], catalogs[0], ents[0])
        nxt = subs_service.create("ns", {"customPlan": _BASE_PLAN, "customerId": customer["id"], "timing": end},
                                  store=catalogs[0], meta=metas[0], ents=ents[0], now=NOW)
        refused: list[BillowError] = []

        def restore(first_id: str = first["id"], refused: list[BillowError] = refused) -> None:
            try:
                subs_service.restore("ns", first_id, store=catalogs[1], meta=metas[1], ents=ents[1], now=NOW)
            except BillowError as e:
                refused.append(e)
                raise

        _, errors = at_once([
            partial(subs_service.cancel, "ns", first["id"], {"timing": "immediate"}, store=catalogs[0],
                    meta=metas[0], ents=ents[0], now=NOW),
            restore])
        bad += _refusals(errors)
        restore_refused = bool(refused)
        stored = catalogs[1].get_subscription("ns", nxt["id"])
        assert stored is not None
        lost += restore_refused and bool(stored.get("deletedAt"))
    assert not bad and lost == 0, (f"{lost} of {ROUNDS} refused restores deleted the next subscription", bad[:3])
