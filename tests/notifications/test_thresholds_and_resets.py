"""Balance thresholds and resets: usage crosses a threshold, the dispatcher creates one event per crossing per
usage period and a real receiver gets it once, signed (svix verifies); a reset makes one event."""

from __future__ import annotations

import json
from typing import Any

from svix.webhooks import Webhook, WebhookVerificationError

from tests.notifications.conftest import Receiver, World

ENT = "/api/v1/subjects/customer_1/entitlements"


def metered(w: World, grant: int = 100) -> dict[str, Any]:
    w.ok("POST", "/api/v1/features", {"key": "ai_tokens", "name": "AI tokens", "meterSlug": "tokens"})
    # The usage period starts at the test's first minute (not the wall day's midnight), so no boundary falls inside
    # the test whatever the time of day it runs at; the clock moves only when the test moves it.
    day = w.now()
    ent = w.ok("POST", ENT, {"type": "metered", "featureKey": "ai_tokens",
                             "usagePeriod": {"interval": "DAY", "anchor": day}})
    w.ok("POST", f"{ENT}/ai_tokens/grants", {"amount": grant, "effectiveAt": day, "minRolloverAmount": grant,
                                             "maxRolloverAmount": grant,
                                             "expiration": {"duration": "YEAR", "count": 1}})
    return ent


def test_a_crossing_reaches_the_receiver_once_signed(world: World, receiver: Receiver) -> None:
    w = world
    ch = w.channel(receiver.url("/hook"), customHeaders={"X-Tenant": "acme"})
    assert ch["signingSecret"].startswith("whsec_") and ch["disabled"] is False
    ent = metered(w)
    rule = w.rule("entitlements.balance.threshold", [ch["id"]], features=["ai_tokens"],
                  thresholds=[{"type": "NUMBER", "value": 50}, {"type": "PERCENT", "value": 90}])
    assert rule["channels"] == [{"id": ch["id"], "type": "WEBHOOK"}]
    assert rule["features"] == [{"id": ent["featureId"], "key": "ai_tokens"}]

    w.spend(40)
    assert w.dispatch() == {"created": 0, "attempted": 0}
    w.spend(20)  # 60: the NUMBER 50 threshold is crossed, not yet 90 %
    assert w.dispatch() == {"created": 1, "attempted": 1}
    for _ in range(3):  # evaluating again finds the same crossing: no new event, nothing sent again
        assert w.dispatch() == {"created": 0, "attempted": 0}
    (hit,) = receiver.at("/hook")
    Webhook(ch["signingSecret"]).verify(hit.body, hit.headers)  # the independent svix implementation agrees
    try:
        Webhook("whsec_" + "A" * 32).verify(hit.body, hit.headers)
        raise AssertionError("a wrong secret must not verify")
    except WebhookVerificationError:
        pass
    assert hit.headers["x-tenant"] == "acme" and hit.headers["content-type"] == "application/json"
    payload = json.loads(hit.body)
    assert payload["type"] == "entitlements.balance.threshold"
    assert hit.headers["webhook-id"] == payload["id"]
    data = payload["data"]
    assert data["threshold"] == {"type": "NUMBER", "value": 50}
    assert (data["value"]["usage"], data["value"]["balance"]) == (60, 40)
    assert data["entitlement"]["id"] == ent["id"] and data["feature"]["key"] == "ai_tokens"
    assert data["subject"]["key"] == "customer_1"

    (event,) = w.events()
    assert event["id"] == payload["id"] and event["payload"] == payload and event["rule"]["id"] == rule["id"]
    (status,) = event["deliveryStatus"]
    assert status["state"] == "SUCCESS" and status["channel"] == {"id": ch["id"], "type": "WEBHOOK"}
    assert len(status["attempts"]) == 1 and status["attempts"][0]["response"]["statusCode"] == 200
    assert "nextAttempt" not in status

    w.spend(35)  # 95 of 100: the 90 % threshold
    assert w.dispatch()["created"] == 1
    assert [json.loads(h.body)["data"]["threshold"]["type"] for h in receiver.at("/hook")] == ["NUMBER", "PERCENT"]

    w.advance(days=1)  # the next usage period: the same thresholds fire again, once
    w.spend(70)
    assert w.dispatch()["created"] == 1
    assert w.dispatch()["created"] == 0
    assert len(receiver.at("/hook")) == 3
    assert len(w.events(rule=rule["id"])) == 3


def test_disabled_rule_and_other_features_make_no_events(world: World, receiver: Receiver) -> None:
    w = world
    ch = w.channel(receiver.url("/hook"))
    metered(w)
    w.ok("POST", "/api/v1/features", {"key": "other", "name": "other", "meterSlug": "tokens"})
    w.rule("entitlements.balance.threshold", [ch["id"]], features=["other"], thresholds=[{"type": "NUMBER", "value": 1}])
    w.rule("entitlements.balance.threshold", [ch["id"]], disabled=True, thresholds=[{"type": "NUMBER", "value": 1}])
    w.spend(99)
    assert w.dispatch() == {"created": 0, "attempted": 0}
    assert receiver.hits == []


def test_reset_makes_one_event_manual_and_scheduled(world: World, receiver: Receiver) -> None:
    w = world
    ch = w.channel(receiver.url("/reset"))
    ent = metered(w)
    w.rule("entitlements.reset", [ch["id"]])
    w.spend(30)
    assert w.dispatch()["created"] == 0  # no reset since the rule exists
    w.advance(minutes=5)
    w.ok("POST", f"{ENT}/{ent['id']}/reset", {})
    assert w.dispatch()["created"] == 1
    assert w.dispatch()["created"] == 0
    (hit,) = receiver.at("/reset")
    body = json.loads(hit.body)
    assert body["type"] == "entitlements.reset" and body["data"]["entitlement"]["id"] == ent["id"]
    assert body["data"]["value"]["usage"] == 0 and body["data"]["value"]["balance"] == 100
    w.advance(days=1)  # the daily period rolls over: a scheduled reset, one event
    assert w.dispatch()["created"] == 1
    assert w.dispatch()["created"] == 0
    assert len(receiver.at("/reset")) == 2
