"""An entitlement made through the entitlement APIs (POST /api/v1/subjects/{id}/entitlements, POST
/api/v2/customers/{id}/entitlements) of a feature one of the customer's subscriptions grants, now or later, is
refused: 409 naming the field (featureKey or featureId), the subscription (conflictingEntityId) and when it grants
the feature; nothing is stored. OpenMeter's subscription sync schedules each item's entitlement from the item's
start as it is written, so the later one exists, and a new entitlement (active from now, without end) overlaps it:
ValidateUniqueConstraint over the scheduled entitlements, AlreadyExistsError, 409 with conflictingEntityId. A customer
has one entitlement per feature. Before, Billow took it (201) when the grant was still ahead (a subscription starting
later, a later phase, a change at the next billing cycle, an add-on or an edit from a later instant), and when the
item started the subscription silently went without that feature's entitlement, the hand-made one answering. On
SQLite and on PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest

from billow.services import directory, subscriptions
from tests.catalog import test_subscription_takes_held_feature as held
from tests.catalog.test_subscription_takes_held_feature import SSO, published_ramp, sso_addon_subscription
from tests.entitlements.conftest import Billow
from tests.support.catalog import plan_body, published

LATER = "2026-02-01T00:00:00Z"
billow = held.billow  # the fixture: SQLite and PostgreSQL, customer acme, features tokens and sso


def _entitlements(b: Billow) -> list[dict[str, Any]]:
    return sorted(b.ok("GET", "/api/v1/subjects/customer_1/entitlements", query={"includeDeleted": "true"}),
                  key=lambda e: str(e["id"]))


def _refused_everywhere(b: Billow, sub_id: str, when: str) -> None:
    """Each way of making the customer's own sso entitlement is refused, naming the field it was given by, the
    subscription and `when`; none is stored."""
    before = _entitlements(b)
    feature_id = b.ok("GET", "/api/v1/features/sso")["id"]
    for path, body, field in (
            ("/api/v1/subjects/customer_1/entitlements", {"type": "boolean", "featureKey": "sso"}, "featureKey"),
            ("/api/v1/subjects/customer_1/entitlements", {"type": "boolean", "featureId": feature_id}, "featureId"),
            ("/api/v2/customers/acme/entitlements", {"type": "boolean", "featureKey": "sso"}, "featureKey"),
            ("/api/v2/customers/acme/entitlements", {"type": "boolean", "featureId": feature_id}, "featureId")):
        status, out = b.call("POST", path, body)
        assert status == 409 and b.headers["Content-Type"] == "application/problem+json", (path, body, status, out)
        assert out["detail"].startswith(f"{field}: ") and "'sso'" in out["detail"], out
        assert sub_id in out["detail"] and when in out["detail"], out
        assert out["conflictingEntityId"] == sub_id, out
    assert _entitlements(b) == before


def _sso_is_the_subscriptions_at(b: Billow, sub_id: str, at: str) -> None:
    """When the grant comes due, the subscription's own sso entitlement is there (its read brings it up to date)."""
    b.clock.set(at)
    b.ok("GET", f"/api/v1/subscriptions/{sub_id}")
    (sso,) = [e for e in b.ok("GET", "/api/v1/subjects/customer_1/entitlements") if e["featureKey"] == "sso"]
    assert sso["metadata"] == {"subscriptionId": sub_id}, sso


def test_a_subscription_starting_later_keeps_its_feature(billow: Billow) -> None:
    b = billow
    published(b, plan_body("pro", "10", extra=[SSO]))
    sub = b.ok("POST", "/api/v1/subscriptions", {"plan": {"key": "pro"}, "customerKey": "acme", "timing": LATER})
    _refused_everywhere(b, sub["id"], LATER)
    _sso_is_the_subscriptions_at(b, sub["id"], LATER)


def test_a_later_phase_keeps_its_feature(billow: Billow) -> None:
    b = billow
    published_ramp(b)
    sub = b.ok("POST", "/api/v1/subscriptions", {"plan": {"key": "ramp"}, "customerKey": "acme"})
    _refused_everywhere(b, sub["id"], LATER)
    _sso_is_the_subscriptions_at(b, sub["id"], LATER)


def test_a_change_at_the_next_billing_cycle_keeps_its_feature(billow: Billow) -> None:
    b = billow
    published(b, plan_body("basic", "10"))
    published(b, plan_body("pro", "20", extra=[SSO]))
    sub = b.ok("POST", "/api/v1/subscriptions", {"plan": {"key": "basic"}, "customerKey": "acme"})
    nxt = b.ok("POST", f"/api/v1/subscriptions/{sub['id']}/change",
               {"timing": "next_billing_cycle", "plan": {"key": "pro"}})["next"]
    _refused_everywhere(b, nxt["id"], LATER)
    _sso_is_the_subscriptions_at(b, nxt["id"], LATER)


def test_an_add_on_or_an_edit_from_later_keeps_its_feature(billow: Billow) -> None:
    b = billow
    addon, sub = sso_addon_subscription(b)
    added = b.ok("POST", f"/api/v1/subscriptions/{sub['id']}/addons",
                 {"addon": {"id": addon["id"]}, "quantity": 1, "timing": LATER})
    _refused_everywhere(b, sub["id"], LATER)
    # without the add-on, an edit adding sso from later keeps it the same way
    b.ok("PATCH", f"/api/v1/subscriptions/{sub['id']}/addons/{added['id']}", {"quantity": 0, "timing": "immediate"})
    b.ok("PATCH", f"/api/v1/subscriptions/{sub['id']}",
         {"timing": "2026-03-01T00:00:00Z", "customizations": [{"op": "add_item", "phaseKey": "default",
                                                               "rateCard": SSO}]})
    _refused_everywhere(b, sub["id"], "2026-03-01T00:00:00Z")
    _sso_is_the_subscriptions_at(b, sub["id"], "2026-03-01T00:00:00Z")


def test_once_no_subscription_grants_it_the_customer_may_have_its_own(billow: Billow) -> None:
    b = billow
    published(b, plan_body("pro", "10", extra=[SSO]))
    published(b, plan_body("basic", "10"))
    sub = b.ok("POST", "/api/v1/subscriptions", {"plan": {"key": "pro"}, "customerKey": "acme", "timing": LATER})
    b.ok("DELETE", f"/api/v1/subscriptions/{sub['id']}")
    # a subscription granting other features only is no obstacle
    b.ok("POST", "/api/v1/subscriptions", {"plan": {"key": "basic"}, "customerKey": "acme"})
    own = b.ok("POST", "/api/v2/customers/acme/entitlements", {"type": "boolean", "featureKey": "sso"})
    assert own["featureKey"] == "sso" and own["customerKey"] == "acme", own


@pytest.mark.parametrize("via", ["/api/v1/subjects/customer_1/entitlements", "/api/v2/customers/acme/entitlements"])
def test_a_subscription_written_between_the_look_and_the_write_refuses_it_too(
        billow: Billow, monkeypatch: pytest.MonkeyPatch, via: str) -> None:
    """A subscription granting the feature later, written by another request between the entitlement's first look
    and its write (here right after the look, deterministically): the write's own check, under the customer's lock a
    subscription's write takes too, sees it, and the entitlement is refused as it would be after."""
    b = billow
    published(b, plan_body("pro", "10", extra=[SSO]))
    real = subscriptions.refuse_granted
    made: list[str] = []

    def then_subscribed(namespace: str, **kw: Any) -> Any:
        look = real(namespace, **kw)

        def refuse(customer_id: str, feature_key: str, field: str) -> None:
            look(customer_id, feature_key, field)
            if not made:
                made.append(b.ok("POST", "/api/v1/subscriptions", {"plan": {"key": "pro"}, "customerKey": "acme",
                                                                   "timing": LATER})["id"])

        return refuse

    monkeypatch.setattr(subscriptions, "refuse_granted", then_subscribed)
    status, out = b.call("POST", via, {"type": "boolean", "featureKey": "sso"})
    monkeypatch.undo()
    assert made and status == 409 and out["conflictingEntityId"] == made[0], (status, out)
    assert [e for e in _entitlements(b) if e["featureKey"] == "sso"] == []
    _sso_is_the_subscriptions_at(b, made[0], LATER)


def _override_paths(subject: str, entitlement_id: str) -> list[str]:
    """The override of the customer's sso entitlement: v1 through `subject` by feature key, v1 through customer_1 by
    id, v2 by feature key and by id."""
    return [f"/api/v1/subjects/{subject}/entitlements/sso/override",
            f"/api/v1/subjects/customer_1/entitlements/{entitlement_id}/override",
            "/api/v2/customers/acme/entitlements/sso/override",
            f"/api/v2/customers/acme/entitlements/{entitlement_id}/override"]


def test_an_override_of_a_feature_the_subscription_grants_later_is_refused(billow: Billow) -> None:
    """PUT /api/v1/subjects/{id}/entitlements/{idOrFeatureKey}/override (and v2's, on the customer) makes a new
    entitlement (from now, without end):
    OpenMeter's SupersedeEntitlement schedules it through ScheduleEntitlement, whose uniqueness check refuses it
    where the subscription's entitlement is scheduled (409, conflictingEntityId). Here the hand-made entitlement came
    with a subject the customer took in after subscribing (as PUT /api/v1/customers took it before it refused such a
    subject: written here without that check); overriding it is refused as a POST of it would be, naming the field,
    and the old one stays. Before, the override was taken (201), v1 and v2."""
    b = billow
    published(b, plan_body("pro", "10", extra=[SSO]))
    sub = b.ok("POST", "/api/v1/subscriptions", {"plan": {"key": "pro"}, "customerKey": "acme", "timing": LATER})
    own = b.ok("POST", "/api/v1/subjects/customer_2/entitlements", {"type": "boolean", "featureKey": "sso"})
    directory.update_customer(b.c.namespace, "acme", {"key": "acme", "name": "Acme", "currency": "USD",
                                                      "usageAttribution": {"subjectKeys": ["customer_1", "customer_2"]}},
                              meta=b.c.meta, now=b.clock.now())
    before = _entitlements(b)
    for path in _override_paths("customer_2", own["id"]):
        status, out = b.call("PUT", path, {"type": "boolean", "featureKey": "sso"})
        assert status == 409 and b.headers["Content-Type"] == "application/problem+json", (path, status, out)
        assert out["detail"].startswith("featureKey: ") and sub["id"] in out["detail"] and LATER in out["detail"], out
        assert out["conflictingEntityId"] == sub["id"], out
    assert _entitlements(b) == before


def test_the_subscriptions_own_entitlement_is_not_overridden(billow: Billow) -> None:
    """An override of the entitlement a subscription manages (v1 and v2, by feature key or id) is forbidden (403), as
    its delete is: OpenMeter's SupersedeEntitlement runs the subscription hook's PreDelete ("entitlement is managed
    by subscription"). It was taken (201), leaving the subscription's entitlement replaced by a hand-made one."""
    b = billow
    published(b, plan_body("pro", "10", extra=[SSO]))
    sub = b.ok("POST", "/api/v1/subscriptions", {"plan": {"key": "pro"}, "customerKey": "acme"})
    (sso,) = [e for e in _entitlements(b) if e["featureKey"] == "sso"]
    assert sso["metadata"] == {"subscriptionId": sub["id"]}
    before = _entitlements(b)
    for path in _override_paths("customer_1", sso["id"]):
        status, out = b.call("PUT", path, {"type": "boolean", "featureKey": "sso"})
        assert status == 403 and b.headers["Content-Type"] == "application/problem+json", (path, status, out)
        assert sub["id"] in out["detail"], out
    assert _entitlements(b) == before
