"""Bad input is a 4xx application/problem+json naming the field; the SQL store's guarantees (one event per
dedup key, a delivery claimed once, resend, namespaces apart) on SQLite and PostgreSQL."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from billow.adapters.sql import SqlMetaStore
from billow.adapters.sql_notifications import SqlNotificationStore
from billow.ids import new_id
from tests.conftest import t
from tests.notifications.conftest import Receiver, World

CH = "/api/v1/notification/channels"
RULES = "/api/v1/notification/rules"
MISSING = "01ARZ3NDEKTSV4RRFFQ69G5FAV"


@pytest.mark.parametrize(("body", "field"), [
    ({"type": "WEBHOOK", "name": "x", "url": "ftp://example.com/hook"}, "url"),
    ({"type": "WEBHOOK", "name": "x", "url": "file:///etc/passwd"}, "url"),
    ({"type": "WEBHOOK", "name": "x", "url": "http://"}, "url"),
    ({"type": "WEBHOOK", "name": "x", "url": "http://exa mple.com"}, "url"),
    ({"type": "WEBHOOK", "name": "x"}, "url"),
    ({"type": "WEBHOOK", "name": "x", "url": "http://169.254.169.254/latest/meta-data"}, "url"),
    ({"type": "SLACK", "name": "x", "url": "javascript:alert(1)"}, "url"),
    ({"type": "WEBHOOK", "name": "x", "url": "https://example.com", "signingSecret": "short"}, "signingSecret"),
    ({"type": "WEBHOOK", "name": "x", "url": "https://example.com", "customHeaders": {"webhook-id": "x"}},
     "customHeaders"),
    ({"type": "WEBHOOK", "name": "", "url": "https://example.com"}, "name"),
    ({"type": "SMS", "name": "x"}, "type"),
    ({"type": "EMAIL", "name": "x", "recipients": ["not-an-address"]}, "recipients[0]"),
    ({"type": "EMAIL", "name": "x"}, "recipients"),
    ({"type": "WEBHOOK", "name": "x", "url": "https://example.com", "disabled": "yes"}, "disabled"),
    # OpenMeter's channel request makes none of these nullable; a null was taken for the field left out (201: a
    # new signing secret, no headers, enabled).
    ({"type": "WEBHOOK", "name": "x", "url": "https://example.com", "disabled": None}, "disabled"),
    ({"type": "WEBHOOK", "name": "x", "url": "https://example.com", "customHeaders": None}, "customHeaders"),
    ({"type": "WEBHOOK", "name": "x", "url": "https://example.com", "signingSecret": None}, "signingSecret"),
    ([], ""),
])
def test_bad_channels_are_400_naming_the_field(world: World, body: Any, field: str) -> None:
    status, problem = world.call("POST", CH, body)
    assert status == 400, problem
    assert problem["status"] == 400 and problem["validationErrors"][0]["field"] == field


SLACK = {"type": "SLACK", "name": "ops", "url": "https://hooks.slack.com/services/T/B/x"}
EMAIL = {"type": "EMAIL", "name": "finance", "recipients": ["billing@example.com"]}


@pytest.mark.parametrize(("body", "field"), [
    ({**SLACK, "customHeaders": {"X-Team": "ops"}}, "customHeaders"),
    ({**SLACK, "signingSecret": "whsec_" + "A" * 40}, "signingSecret"),
    ({**SLACK, "recipients": ["billing@example.com"]}, "recipients"),
    ({**EMAIL, "url": "https://example.com/hook"}, "url"),
    ({**EMAIL, "customHeaders": {"X-Team": "ops"}}, "customHeaders"),
    ({**EMAIL, "signingSecret": "whsec_" + "A" * 40}, "signingSecret"),
])
def test_a_field_of_another_channel_type_is_refused_not_dropped(world: World, body: Any, field: str) -> None:
    # Billow's SLACK and EMAIL channels took a WEBHOOK's headers or secret, or an e-mail's recipients, and dropped
    # them (201): a Slack channel asked to sign its posts did not. Now a 400 naming the field, nothing made.
    status, problem = world.call("POST", CH, body)
    assert status == 400, problem
    assert [e["field"] for e in problem["validationErrors"]] == [field]
    assert world.ok("GET", CH)["items"] == []


def test_slack_and_email_bodies_are_held_to_their_own_schemas(world: World) -> None:
    # The served document described a channel body as OpenMeter's WEBHOOK alone: an EMAIL's recipients were not
    # checked before the route (its first bad field named, the rest not), and clients had no schema for them.
    status, problem = world.call("POST", CH, {"type": "EMAIL", "name": "", "recipients": []})
    assert status == 400
    assert sorted(e["field"] for e in problem["validationErrors"]) == ["name", "recipients"]
    status, problem = world.call("POST", CH, {**EMAIL, "recipients": ["a" * 250 + "@example.com"]})
    assert (status, [e["field"] for e in problem["validationErrors"]]) == (400, ["recipients[0]"])
    schemas = world.ok("GET", "/api/v1/openapi.json")["components"]["schemas"]
    mapping = schemas["NotificationChannelCreateRequest"]["discriminator"]["mapping"]
    email = schemas[mapping["EMAIL"].rsplit("/", 1)[1]]
    assert set(mapping) == {"WEBHOOK", "SLACK", "EMAIL"} and email["required"] == ["type", "name", "recipients"]
    assert "SLACK" in schemas["NotificationChannelType"]["enum"]
    # what each type takes is still taken
    assert world.ok("POST", CH, SLACK)["url"] == SLACK["url"]
    assert world.ok("POST", CH, EMAIL)["recipients"] == EMAIL["recipients"]


def test_bad_rules_and_unknown_ids(world: World, receiver: Receiver) -> None:
    w = world
    ch = w.channel(receiver.url("/x"))["id"]
    th = [{"type": "NUMBER", "value": 10}]
    cases: list[tuple[dict[str, Any], str]] = [
        ({"type": "entitlements.balance.threshold", "name": "r", "channels": [ch]}, "thresholds"),
        ({"type": "entitlements.balance.threshold", "name": "r", "channels": [ch], "thresholds": []}, "thresholds"),
        ({"type": "entitlements.balance.threshold", "name": "r", "channels": [ch],
          "thresholds": [{"type": "PERCENT", "value": "lots"}]}, "thresholds[0].value"),
        ({"type": "entitlements.balance.threshold", "name": "r", "channels": [ch],
          "thresholds": [{"type": "RATIO", "value": 1}]}, "thresholds[0].type"),
        ({"type": "entitlements.balance.threshold", "name": "r", "channels": [ch],
          "thresholds": [{"type": "NUMBER", "value": -1}]}, "thresholds[0].value"),
        ({"type": "entitlements.balance.threshold", "name": "r", "channels": [ch], "thresholds": th * 2},
         "thresholds[1]"),
        ({"type": "entitlements.balance.threshold", "name": "r", "channels": [MISSING], "thresholds": th},
         "channels[0]"),
        ({"type": "entitlements.reset", "name": "r", "channels": ["nope"]}, "channels[0]"),
        ({"type": "entitlements.reset", "name": "r", "channels": []}, "channels"),
        ({"type": "entitlements.reset", "name": "r", "channels": [ch], "features": ["no_such_feature"]},
         "features[0]"),
        ({"type": "meter.created", "name": "r", "channels": [ch]}, "type"),
    ]
    for body, field in cases:
        status, problem = w.call("POST", RULES, body)
        assert status == 400 and problem["validationErrors"][0]["field"] == field, (body, problem)
    status, problem = w.call("POST", RULES, "{", content_type="application/json")
    assert status == 400
    for path in (f"{CH}/{MISSING}", f"{RULES}/{MISSING}", f"/api/v1/notification/events/{MISSING}", f"{CH}/x"):
        status, problem = w.call("GET", path)
        assert status == 404 and problem["title"] == "Not Found", path
    status, _ = w.call("POST", f"{RULES}/{MISSING}/test")
    assert status == 404
    status, _ = w.call("POST", f"/api/v1/notification/events/{MISSING}/resend", {})
    assert status == 404
    rule = w.rule("entitlements.reset", [ch])
    status, problem = w.call("PUT", f"{RULES}/{rule['id']}", {"type": "invoice.created", "name": "r",
                                                               "channels": [ch]})
    assert status == 400 and problem["validationErrors"][0]["field"] == "type"
    status, problem = w.call("GET", CH, query={"pageSize": "0"})
    assert status == 400 and problem["validationErrors"][0]["field"] == "pageSize"
    status, problem = w.call("GET", "/api/v1/notification/events", query={"from": "yesterday"})
    assert status == 400


def test_channels_and_rules_crud(world: World, receiver: Receiver) -> None:
    w = world
    ch = w.channel(receiver.url("/a"), signingSecret="whsec_" + "a" * 32)
    assert ch["signingSecret"] == "whsec_" + "a" * 32
    upd = w.ok("PUT", f"{CH}/{ch['id']}", {"type": "WEBHOOK", "name": "renamed", "url": receiver.url("/b")})
    assert upd["name"] == "renamed" and upd["signingSecret"] == ch["signingSecret"]  # kept when not given
    assert upd["createdAt"] == ch["createdAt"]
    off = w.channel(receiver.url("/c"), disabled=True)
    assert [c["id"] for c in w.ok("GET", CH)["items"]] == [ch["id"]]
    assert {c["id"] for c in w.ok("GET", CH, query={"includeDisabled": "true"})["items"]} == {ch["id"], off["id"]}
    rule = w.rule("entitlements.reset", [ch["id"], off["id"]])
    assert w.ok("GET", RULES, query={"channel": off["id"]})["totalCount"] == 1
    w.ok("DELETE", f"{RULES}/{rule['id']}")
    assert w.ok("GET", RULES)["items"] == []
    assert w.ok("GET", RULES, query={"includeDeleted": "true"})["items"][0]["deletedAt"]
    w.ok("DELETE", f"{CH}/{off['id']}")  # no live rule uses it any more
    assert w.ok("GET", f"{CH}/{off['id']}")["deletedAt"]
    status, _ = w.call("DELETE", f"{CH}/{off['id']}")
    assert status == 404


def _event(rule_id: str) -> dict[str, Any]:
    eid = new_id()
    return {"id": eid, "type": "invoice.created", "rule": {"id": rule_id, "channels": []}, "payload": {"id": eid}}


def test_store_guarantees(meta_store: SqlMetaStore) -> None:
    store = SqlNotificationStore(meta_store.engine)
    store.migrate()
    ns, other = f"n{new_id()[-8:].lower()}", f"o{new_id()[-8:].lower()}"
    now = t("2026-03-01T00:00:00Z")
    rule, ch1, ch2 = new_id(), new_id(), new_id()
    idx: dict[str, str | None] = {"subject_key": "s", "feature_id": None, "feature_key": "f"}
    first = _event(rule)
    assert store.add_event(ns, first, dedup_key=f"{rule}:k", channel_ids=[ch1, ch2], now=now, index=idx)
    assert not store.add_event(ns, _event(rule), dedup_key=f"{rule}:k", channel_ids=[ch1], now=now, index=idx)
    assert store.add_event(other, _event(rule), dedup_key=f"{rule}:k", channel_ids=[ch1], now=now, index=idx)
    assert [e["id"] for e in store.list_events(ns)] == [first["id"]]
    assert store.get_event(other, first["id"]) is None
    mine = [d for d in store.due(now, 1000) if d.namespace == ns]
    assert {d.channel_id for d in mine} == {ch1, ch2}
    d = next(x for x in mine if x.channel_id == ch1)
    assert store.claim(d, now=now, lease_until=now + timedelta(minutes=2))
    assert not store.claim(d, now=now, lease_until=now + timedelta(minutes=2))  # the same read: lost the race
    assert all(x.channel_id != ch1 for x in store.due(now, 1000) if x.namespace == ns)  # claimed: not due
    assert store.finish(d, state="SUCCESS", reason="ok", tries=1, attempt={"state": "SUCCESS"}, due_at=None,
                        now=now)
    assert not store.finish(d, state="FAILED", reason="late", tries=1, attempt=None, due_at=None, now=now)
    (done,) = [x for x in store.deliveries_of(ns, [first["id"]])[first["id"]] if x.channel_id == ch1]
    assert (done.state, done.attempts, done.due_at) == ("SUCCESS", [{"state": "SUCCESS"}], None)
    assert store.resend(ns, first["id"], [ch1], now) == 1
    assert store.resend(other, first["id"], None, now) == 0  # another namespace's event: untouched
    (again,) = [x for x in store.deliveries_of(ns, [first["id"]])[first["id"]] if x.channel_id == ch1]
    assert again.state == "RESENDING" and again.tries == 0 and again.attempts == [{"state": "SUCCESS"}]
    lapsed = store.due(now + timedelta(minutes=3), 1000)
    assert any(x.event_id == first["id"] for x in lapsed)
    assert store.list_events(ns, subject_keys=["s"], features=["f"]) and not store.list_events(ns, features=["g"])
    assert store.list_events(ns, channel_ids=[ch2]) and not store.list_events(ns, channel_ids=[new_id()])


def test_another_namespace_sees_and_changes_nothing(world: World, receiver: Receiver) -> None:
    w = world
    ch = w.channel(receiver.url("/a"))
    rule = w.rule("invoice.created", [ch["id"]])
    ev = w.ok("POST", f"{RULES}/{rule['id']}/test")
    mine = w.c.settings
    w.c.settings = replace(mine, namespace=f"{w.c.namespace}_b")  # the same Billow, serving another tenant
    try:
        for method, path, body in (
                ("GET", f"{CH}/{ch['id']}", None), ("PUT", f"{CH}/{ch['id']}", {"type": "WEBHOOK", "name": "x",
                                                                                 "url": receiver.url("/b")}),
                ("DELETE", f"{CH}/{ch['id']}", None), ("GET", f"{RULES}/{rule['id']}", None),
                ("PUT", f"{RULES}/{rule['id']}", {"type": "invoice.created", "name": "x", "channels": [ch["id"]]}),
                ("DELETE", f"{RULES}/{rule['id']}", None), ("POST", f"{RULES}/{rule['id']}/test", None),
                ("GET", f"/api/v1/notification/events/{ev['id']}", None),
                ("POST", f"/api/v1/notification/events/{ev['id']}/resend", {})):
            status, _ = w.call(method, path, body)
            assert status in (400, 404), (method, path, status)  # 400: B cannot name A's channel in a rule
        assert w.ok("GET", CH, query={"includeDeleted": "true", "includeDisabled": "true"})["items"] == []
        assert w.ok("GET", RULES, query={"includeDeleted": "true"})["items"] == []
        assert w.events() == []
    finally:
        w.c.settings = mine
    assert w.ok("GET", f"{CH}/{ch['id']}")["name"] == "hook" and not w.ok("GET", f"{RULES}/{rule['id']}").get("deletedAt")
    assert [e["id"] for e in w.events()] == [ev["id"]]
