"""A subscription that would grant an entitlement of a feature the customer already holds one of outside its
subscriptions (made through POST /api/v1/subjects/{id}/entitlements or /api/v2/customers/{id}/entitlements) is
refused, 409 naming the field, the feature and the held entitlement (conflictingEntityId), and nothing of it is
stored: OpenMeter's sync schedules each item's entitlement from the item's start and its uniqueness check refuses
it (AlreadyExistsError, 409). A customer has one live entitlement per feature (entitlements.sole). Before, only a
subscription granting it at once was refused: one starting later, a later phase, a change at the next billing cycle,
an add-on (added, or its quantity raised from 0) and an edit adding it later were accepted, and the subscription then
went without that feature's entitlement. On SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from billow.services import subscriptions
from tests.entitlements.conftest import Billow, on_meta_store
from tests.support.catalog import plan_body, published, setup

SSO = {"type": "flat_fee", "key": "sso", "name": "SSO", "featureKey": "sso", "billingCadence": "P1M",
       "price": {"type": "flat", "amount": "1"}, "entitlementTemplate": {"type": "boolean"}}


@pytest.fixture(params=["sqlite", "postgres"])
def billow(request: pytest.FixtureRequest, tmp_path: Path, namespace: str) -> Iterator[Billow]:
    with on_meta_store(request, tmp_path, namespace) as b:
        setup(b)
        b.ok("POST", "/api/v1/features", {"key": "sso", "name": "SSO"})
        yield b


def _held(b: Billow, via: str = "v1") -> dict[str, Any]:
    """The customer's own entitlement of sso, made through the entitlement API `via`."""
    if via == "v2":
        return b.ok("POST", "/api/v2/customers/acme/entitlements", {"type": "boolean", "featureKey": "sso"})
    return b.ok("POST", "/api/v1/subjects/customer_1/entitlements", {"type": "boolean", "featureKey": "sso"})


def _refused(b: Billow, method: str, path: str, body: Any, field: str, held: dict[str, Any]) -> None:
    status, out = b.call(method, path, body)
    assert status == 409 and b.headers["Content-Type"] == "application/problem+json", (path, status, out)
    assert out["detail"].startswith(f"{field}: ") and "'sso'" in out["detail"] and held["id"] in out["detail"], out
    assert out["conflictingEntityId"] == held["id"], out


def _state(b: Billow) -> tuple[list[Any], list[str]]:
    """The customer's subscriptions (each read, which brings its entitlements up to date, with its add-ons) and its
    subject's live entitlements."""
    subs = [(b.ok("GET", f"/api/v1/subscriptions/{s['id']}"), b.ok("GET", f"/api/v1/subscriptions/{s['id']}/addons"))
            for s in b.ok("GET", "/api/v1/customers/acme/subscriptions")["items"]]
    return subs, sorted(e["id"] for e in b.ok("GET", "/api/v1/subjects/customer_1/entitlements"))


def published_ramp(b: Billow) -> None:
    """Plan `ramp`: a month's trial without sso, then sso."""
    ramp = plan_body("ramp", "10")
    ramp["phases"] = [{**ramp["phases"][0], "key": "trial", "name": "Trial", "duration": "P1M"},
                      {**plan_body("x", "20", extra=[SSO])["phases"][0], "key": "full", "name": "Full"}]
    published(b, ramp)


def sso_addon_subscription(b: Billow) -> tuple[dict[str, Any], dict[str, Any]]:
    """(add-on `sso`, granting sso, published; the customer's subscription on plan `basic`, which offers it)."""
    addon = b.ok("POST", "/api/v1/addons", {"key": "sso", "name": "SSO", "currency": "USD", "instanceType": "single",
                                            "rateCards": [SSO]})
    addon = b.ok("POST", f"/api/v1/addons/{addon['id']}/publish")
    draft = b.ok("POST", "/api/v1/plans", plan_body("basic", "10"))
    b.ok("POST", f"/api/v1/plans/{draft['id']}/addons", {"addonId": addon["id"], "fromPlanPhase": "default"})
    b.ok("POST", f"/api/v1/plans/{draft['id']}/publish")
    return addon, b.ok("POST", "/api/v1/subscriptions", {"plan": {"key": "basic"}, "customerKey": "acme"})


@pytest.mark.parametrize("via", ["v1", "v2"])
def test_a_subscription_granting_a_held_feature_now_or_later_is_refused_and_not_stored(billow: Billow, via: str) -> None:
    b = billow
    published(b, plan_body("pro", "10", extra=[SSO]))
    published_ramp(b)
    held = _held(b, via)
    for body in ({"plan": {"key": "pro"}, "customerKey": "acme", "timing": "2026-02-01T00:00:00Z"},
                 {"plan": {"key": "ramp"}, "customerKey": "acme"},  # sso in the second phase only
                 {"plan": {"key": "pro"}, "customerKey": "acme"}):  # at once: refused before too (now names sso)
        _refused(b, "POST", "/api/v1/subscriptions", body, "plan", held)
    custom = plan_body("custom", "10", extra=[SSO])
    del custom["key"]
    _refused(b, "POST", "/api/v1/subscriptions", {"customPlan": custom, "customerKey": "acme",
                                                  "timing": "2026-03-01T00:00:00Z"}, "customPlan", held)
    assert _state(b) == ([], [held["id"]])  # no subscription, and no entitlement of one
    # once the customer's own is deleted, the subscription takes the feature
    b.ok("DELETE", f"/api/v1/subjects/customer_1/entitlements/{held['id']}")
    sub = b.ok("POST", "/api/v1/subscriptions", {"plan": {"key": "pro"}, "customerKey": "acme"})
    (sso,) = [e for e in b.ok("GET", "/api/v1/subjects/customer_1/entitlements") if e["featureKey"] == "sso"]
    assert sso["metadata"] == {"subscriptionId": sub["id"]}


def test_a_change_granting_a_held_feature_is_refused_and_the_subscription_left_as_it_was(billow: Billow) -> None:
    b = billow
    published(b, plan_body("basic", "10"))
    published(b, plan_body("pro", "20", extra=[SSO]))
    sub = b.ok("POST", "/api/v1/subscriptions", {"plan": {"key": "basic"}, "customerKey": "acme"})
    held = _held(b)
    before = _state(b)
    for timing in ("next_billing_cycle", "immediate"):
        _refused(b, "POST", f"/api/v1/subscriptions/{sub['id']}/change", {"timing": timing, "plan": {"key": "pro"}},
                 "plan", held)
        assert _state(b) == before
    # a change to a plan granting only what the subscription already grants goes on as before
    published(b, plan_body("plus", "15"))
    b.ok("POST", f"/api/v1/subscriptions/{sub['id']}/change", {"timing": "immediate", "plan": {"key": "plus"}})


def test_an_add_on_granting_a_held_feature_is_refused_and_not_added(billow: Billow) -> None:
    b = billow
    addon, sub = sso_addon_subscription(b)
    added = b.ok("POST", f"/api/v1/subscriptions/{sub['id']}/addons",
                 {"addon": {"id": addon["id"]}, "quantity": 1, "timing": "immediate"})
    b.clock.set("2026-01-10T00:00:00Z")
    b.ok("PATCH", f"/api/v1/subscriptions/{sub['id']}/addons/{added['id']}", {"quantity": 0, "timing": "immediate"})
    held = _held(b)
    before = _state(b)
    # raised again from 0: it would grant sso again
    _refused(b, "PATCH", f"/api/v1/subscriptions/{sub['id']}/addons/{added['id']}",
             {"quantity": 1, "timing": "immediate"}, "quantity", held)
    assert _state(b) == before
    # another subscription's add-on, added
    other = b.ok("POST", "/api/v1/customers", {"key": "other", "name": "Other", "currency": "USD",
                                               "usageAttribution": {"subjectKeys": ["customer_2"]}})
    sub2 = b.ok("POST", "/api/v1/subscriptions", {"plan": {"key": "basic"}, "customerId": other["id"]})
    held2 = b.ok("POST", "/api/v1/subjects/customer_2/entitlements", {"type": "boolean", "featureKey": "sso"})
    _refused(b, "POST", f"/api/v1/subscriptions/{sub2['id']}/addons",
             {"addon": {"id": addon["id"]}, "quantity": 1, "timing": "immediate"}, "addon.id", held2)
    assert b.ok("GET", f"/api/v1/subscriptions/{sub2['id']}/addons") == []


def test_an_edit_adding_a_held_feature_later_is_refused(billow: Billow) -> None:
    b = billow
    published(b, plan_body("basic", "10"))
    sub = b.ok("POST", "/api/v1/subscriptions", {"plan": {"key": "basic"}, "customerKey": "acme"})
    held = _held(b)
    before = _state(b)
    edit = {"timing": "2026-02-01T00:00:00Z",
            "customizations": [{"op": "add_item", "phaseKey": "default", "rateCard": SSO}]}
    _refused(b, "PATCH", f"/api/v1/subscriptions/{sub['id']}", edit, "customizations", held)
    assert _state(b) == before


@pytest.mark.parametrize("at_look", [1, 3])
def test_one_made_by_hand_while_the_subscription_is_written_refuses_one_or_the_other(
        billow: Billow, monkeypatch: pytest.MonkeyPatch, at_look: int) -> None:
    """A hand-made entitlement of the feature asked for while the subscription is written (another request at once;
    here right after a look for the customer's sso entitlement, deterministically). Right after the create's first
    check (1), before the subscription is stored, it is made; the subscription's check where it is written (2, under
    the customer's lock, which the entitlement's write takes too) sees it: 409, nothing stored. It was stored, answered
    201, and left without sso (the customer's own answering). After the sync's look (3), the subscription stored: the
    entitlement API refuses it (409 naming the subscription), and the subscription has its own. Before, it was made
    and the subscription, answered 409 as though refused, was left without it."""
    b = billow
    published(b, plan_body("pro", "10", extra=[SSO]))
    store = b.c.entitlements
    look = store.find_entitlement
    looks = {"sso": 0}
    made: list[tuple[int, Any]] = []

    def then_made_by_hand(namespace: str, subject_keys: list[str], feature_key: str) -> Any:
        found = look(namespace, subject_keys, feature_key)
        if feature_key == "sso":
            looks["sso"] += 1
            if looks["sso"] == at_look:
                made.append(b.call("POST", "/api/v1/subjects/customer_1/entitlements",
                                   {"type": "boolean", "featureKey": "sso"}))
        return found

    monkeypatch.setattr(store, "find_entitlement", then_made_by_hand)
    status, sub = b.call("POST", "/api/v1/subscriptions", {"plan": {"key": "pro"}, "customerKey": "acme"})
    monkeypatch.undo()
    ((made_status, own),) = made
    by_feature = {e["featureKey"]: e for e in b.ok("GET", "/api/v1/subjects/customer_1/entitlements")}
    if at_look == 1:
        assert made_status == 201 and status == 409 and sub["conflictingEntityId"] == own["id"], (status, sub)
        assert b.ok("GET", "/api/v1/customers/acme/subscriptions")["items"] == []
        assert set(by_feature) == {"sso"} and by_feature["sso"]["id"] == own["id"]
    else:
        assert status == 201 and made_status == 409 and own["conflictingEntityId"] == sub["id"], (status, own)
        (listed,) = b.ok("GET", "/api/v1/customers/acme/subscriptions")["items"]
        assert listed["id"] == sub["id"]
        assert by_feature["sso"]["metadata"] == by_feature["tokens"]["metadata"] == {"subscriptionId": sub["id"]}


def test_one_made_by_hand_while_a_change_is_written_refuses_the_change(
        billow: Billow, monkeypatch: pytest.MonkeyPatch) -> None:
    """As above for a plan change: the customer's own sso made right after the change's first check is seen by its
    check where it is written (under the customer's lock): 409, the subscription left as it was. It was 200, and the
    next subscription went without sso."""
    b = billow
    published(b, plan_body("basic", "10"))
    published(b, plan_body("pro", "20", extra=[SSO]))
    sub = b.ok("POST", "/api/v1/subscriptions", {"plan": {"key": "basic"}, "customerKey": "acme"})
    store = b.c.entitlements
    look = store.find_entitlement
    made: list[dict[str, Any]] = []
    looks = {"sso": 0}

    def then_made_by_hand(namespace: str, subject_keys: list[str], feature_key: str) -> Any:
        found = look(namespace, subject_keys, feature_key)
        if feature_key == "sso":
            looks["sso"] += 1
            if looks["sso"] == 1:  # the change's first check (the hand-made one's own looks come after)
                made.append(_held(b))
        return found

    monkeypatch.setattr(store, "find_entitlement", then_made_by_hand)
    status, out = b.call("POST", f"/api/v1/subscriptions/{sub['id']}/change",
                         {"timing": "next_billing_cycle", "plan": {"key": "pro"}})
    monkeypatch.undo()
    assert made and status == 409 and out["conflictingEntityId"] == made[0]["id"], (status, out)
    (listed,) = b.ok("GET", "/api/v1/customers/acme/subscriptions")["items"]
    assert listed["id"] == sub["id"] and listed["activeTo"] is None


def _made_by_hand_after_first(b: Billow, monkeypatch: pytest.MonkeyPatch, check: str) -> list[dict[str, Any]]:
    """The customer's own sso entitlement, made (by another request, as it were) right after the first call of
    subscriptions.`check`: the list it will be in (undo with monkeypatch.undo())."""
    real = getattr(subscriptions, check)
    made: list[dict[str, Any]] = []

    def then_made_by_hand(*args: Any, **kw: Any) -> None:
        real(*args, **kw)
        if not made:
            made.append(_held(b))

    monkeypatch.setattr(subscriptions, check, then_made_by_hand)
    return made


def _ramp(b: Billow) -> dict[str, Any]:
    """A subscription on `ramp` (a month's trial without sso, then sso) canceled before sso: the customer's own sso
    entitlement is taken then, as no subscription grants it."""
    published_ramp(b)
    sub = b.ok("POST", "/api/v1/subscriptions", {"plan": {"key": "ramp"}, "customerKey": "acme"})
    return b.ok("POST", f"/api/v1/subscriptions/{sub['id']}/cancel", {"timing": "2026-01-15T00:00:00Z"})


@pytest.mark.parametrize("via", ["v1", "v2"])
def test_continuing_a_subscription_into_a_held_feature_is_refused_and_changes_nothing(billow: Billow, via: str) -> None:
    """Unscheduling the cancelation, restoring, or canceling later (each makes the subscription grant again what its
    cancelation cut off) is refused as a subscription granting it is: 409 naming subscriptionId, the feature and
    the held entitlement (conflictingEntityId). OpenMeter's Continue (and Restore, through it) syncs the continued
    subscription, scheduling the entitlement the uniqueness check refuses. They were 200, and at the phase's start
    the subscription went without sso."""
    b = billow
    sub = _ramp(b)
    published(b, plan_body("basic", "10"))
    later = b.ok("POST", "/api/v1/subscriptions", {"plan": {"key": "basic"}, "customerKey": "acme",
                                                   "timing": "2026-01-15T00:00:00Z"})
    held = _held(b, via)
    before = _state(b)
    # (unscheduling the cancelation is refused anyway while the next one is scheduled where this one ends)
    for action, body in (("restore", None), ("cancel", {"timing": "2026-03-01T00:00:00Z"})):
        _refused(b, "POST", f"/api/v1/subscriptions/{sub['id']}/{action}", body, "subscriptionId", held)
        assert _state(b) == before  # the next subscription a restore deletes is still there
    b.ok("DELETE", f"/api/v1/subscriptions/{later['id']}")
    before = _state(b)
    for action, body in (("unschedule-cancelation", None), ("restore", None),
                         ("cancel", {"timing": "2026-03-01T00:00:00Z"})):
        _refused(b, "POST", f"/api/v1/subscriptions/{sub['id']}/{action}", body, "subscriptionId", held)
        assert _state(b) == before
    # a later cancelation before sso starts grants nothing more: taken
    b.ok("POST", f"/api/v1/subscriptions/{sub['id']}/cancel", {"timing": "2026-01-20T00:00:00Z"})
    # once the customer's own is deleted, the subscription continues and takes sso when its phase starts
    b.ok("DELETE", f"/api/v1/subjects/customer_1/entitlements/{held['id']}")
    b.ok("POST", f"/api/v1/subscriptions/{sub['id']}/unschedule-cancelation")
    b.clock.set("2026-02-01T00:00:00Z")
    b.ok("GET", f"/api/v1/subscriptions/{sub['id']}")
    (sso,) = [e for e in b.ok("GET", "/api/v1/subjects/customer_1/entitlements") if e["featureKey"] == "sso"]
    assert sso["metadata"] == {"subscriptionId": sub["id"]}


@pytest.mark.parametrize("action", ["unschedule-cancelation", "restore"])
def test_one_made_by_hand_while_a_subscription_is_continued_refuses_the_continuation(
        billow: Billow, monkeypatch: pytest.MonkeyPatch, action: str) -> None:
    """The customer's own sso entitlement made by another request between the continuation's first check and its
    write (here right after that check, deterministically): the write's check, under the customer's lock which the
    entitlement's write takes too, sees it, and the continuation is refused as it would be after; nothing changes."""
    b = billow
    sub = _ramp(b)
    made = _made_by_hand_after_first(b, monkeypatch, "_refuse_held")
    status, out = b.call("POST", f"/api/v1/subscriptions/{sub['id']}/{action}")
    monkeypatch.undo()
    assert made and status == 409 and out["conflictingEntityId"] == made[0]["id"], (status, out)
    assert b.ok("GET", f"/api/v1/subscriptions/{sub['id']}")["activeTo"] == "2026-01-15T00:00:00Z"


@pytest.mark.parametrize("write", ["edit", "add-on quantity"])
def test_one_made_by_hand_while_an_edit_or_an_add_on_quantity_is_written_refuses_it(
        billow: Billow, monkeypatch: pytest.MonkeyPatch, write: str) -> None:
    """PATCH /api/v1/subscriptions/{id} adding sso later, and PATCH .../addons/{id} raising the sso add-on from 0:
    the customer's own sso entitlement made by another request between the write's first check and its write (here
    right after that check, deterministically) is seen by the check where it is written (under the customer's lock,
    which the entitlement's write takes too): 409 naming it, the subscription as it was. They were 200, and the
    subscription went without sso (the customer's own answering)."""
    b = billow
    if write == "edit":
        published(b, plan_body("basic", "10"))
        sub = b.ok("POST", "/api/v1/subscriptions", {"plan": {"key": "basic"}, "customerKey": "acme"})
        path, body = f"/api/v1/subscriptions/{sub['id']}", {
            "timing": "2026-02-01T00:00:00Z",
            "customizations": [{"op": "add_item", "phaseKey": "default", "rateCard": SSO}]}
        first = "_check_entitlements"
    else:
        addon, sub = sso_addon_subscription(b)
        added = b.ok("POST", f"/api/v1/subscriptions/{sub['id']}/addons",
                     {"addon": {"id": addon["id"]}, "quantity": 0, "timing": "immediate"})
        path, body = f"/api/v1/subscriptions/{sub['id']}/addons/{added['id']}", {"quantity": 1, "timing": "immediate"}
        first = "_refuse_held"
    before = _state(b)
    made = _made_by_hand_after_first(b, monkeypatch, first)
    status, out = b.call("PATCH", path, body)
    monkeypatch.undo()
    assert made and status == 409 and out["conflictingEntityId"] == made[0]["id"], (status, out)
    subs_after, ents_after = _state(b)
    assert subs_after == before[0] and ents_after == sorted([*before[1], made[0]["id"]])



@pytest.mark.parametrize("write", ["add-on", "cancel"])
def test_one_made_by_hand_while_an_add_on_is_added_or_a_cancelation_moved_later_refuses_it(
        billow: Billow, monkeypatch: pytest.MonkeyPatch, write: str) -> None:
    """POST /api/v1/subscriptions/{id}/addons of the sso add-on, and POST .../cancel moving a cancelation past the
    start of sso's phase (it grants sso again): the customer's own sso entitlement made by another request between
    the write's first check and its write (here right after that check, deterministically) is seen by the check where
    it is written (under the customer's lock, which the entitlement's write takes too): 409 naming it, the
    subscription as it was. They were 201 / 200, and the subscription went without sso (the customer's own
    answering)."""
    b = billow
    if write == "add-on":
        addon, sub = sso_addon_subscription(b)
        path, body, field = (f"/api/v1/subscriptions/{sub['id']}/addons",
                             {"addon": {"id": addon["id"]}, "quantity": 1, "timing": "immediate"}, "addon.id")
    else:
        sub = _ramp(b)
        path, body, field = f"/api/v1/subscriptions/{sub['id']}/cancel", {"timing": "2026-03-01T00:00:00Z"}, "subscriptionId"
    before = _state(b)
    made = _made_by_hand_after_first(b, monkeypatch, "_refuse_held")
    status, out = b.call("POST", path, body)
    monkeypatch.undo()
    assert made and status == 409 and out["conflictingEntityId"] == made[0]["id"], (status, out)
    assert out["detail"].startswith(f"{field}: "), out
    subs_after, ents_after = _state(b)
    assert subs_after == before[0] and ents_after == sorted([*before[1], made[0]["id"]])
