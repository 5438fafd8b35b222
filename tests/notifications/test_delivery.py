"""Delivery against real endpoints: unreachable, slow, 5xx, 4xx and 429 endpoints show in the delivery status
as the retry policy says; retries back off and stop; two dispatchers never send a delivery twice; resend;
rule test; Slack; invoice events from a hand-made invoice."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from billow.adapters.sql_notifications import SqlNotificationStore
from billow.domain.notifications import BACKOFF_S, JITTER, MAX_ATTEMPTS
from billow.services import notifications
from tests.notifications.conftest import SEND_TIMEOUT_S, Receiver, World
from tests.support.net import free_port

INVOICE = {"id": "01JINV0000000000000000000A", "number": "INV-1", "status": "issued", "currency": "EUR",
           "customer": {"id": "01JCUST000000000000000000A", "name": "Acme"}, "totals": {"total": "12.50"},
           "createdAt": "2026-11-01T00:00:00Z", "updatedAt": "2026-11-01T00:00:00Z", "lines": []}


def stamp(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def emit(w: World, kind: str, doc: dict[str, Any] = INVOICE) -> list[str]:
    return notifications.emit_invoice_event(w.c.namespace, kind, doc, store=w.c.store(SqlNotificationStore),
                                            now=w.clock.now())


def statuses(w: World, event_id: str) -> dict[str, dict[str, Any]]:
    ev = w.ok("GET", f"/api/v1/notification/events/{event_id}")
    return {s["channel"]["id"]: s for s in ev["deliveryStatus"]}


def test_failing_endpoints_retry_with_backoff_then_stop(world: World, receiver: Receiver) -> None:
    w = world
    urls = {
        "ok": receiver.plan("/ok", (200, 0)),
        "flaky": receiver.plan("/flaky", (503, 0), (500, 0), (204, 0)),  # succeeds on the third attempt
        "down": f"http://127.0.0.1:{free_port()}/hook",  # connection refused
        "slow": receiver.plan("/slow", (200, SEND_TIMEOUT_S + 0.5)),
        "5xx": receiver.plan("/5xx", (502, 0)),
        "429": receiver.plan("/429", (429, 0)),
        "4xx": receiver.plan("/4xx", (410, 0)),
    }
    ch = {k: w.channel(u, name=k)["id"] for k, u in urls.items()}
    w.rule("invoice.created", list(ch.values()))
    (eid,) = emit(w, "invoice.created")
    assert w.dispatch(evaluate=False)["attempted"] == len(ch)
    st = statuses(w, eid)
    assert st[ch["ok"]]["state"] == "SUCCESS" and "nextAttempt" not in st[ch["ok"]]
    assert st[ch["4xx"]]["state"] == "FAILED" and "nextAttempt" not in st[ch["4xx"]]  # refused: never retried
    assert st[ch["4xx"]]["attempts"][0]["response"]["statusCode"] == 410
    for k in ("flaky", "down", "slow", "5xx", "429"):
        assert st[ch[k]]["state"] == "PENDING", k
        (attempt,) = st[ch[k]]["attempts"]
        assert attempt["state"] == "FAILED"
        delay = (stamp(st[ch[k]]["nextAttempt"]) - stamp(attempt["timestamp"])).total_seconds()
        assert BACKOFF_S[0] * (1 - JITTER) - 1 <= delay <= BACKOFF_S[0] * (1 + JITTER) + 1, (k, delay)
    assert st[ch["slow"]]["attempts"][0]["reason"] == "timeout"
    assert st[ch["down"]]["attempts"][0]["reason"].startswith("connection error")
    assert st[ch["5xx"]]["attempts"][0]["response"]["statusCode"] == 502
    assert w.dispatch(evaluate=False)["attempted"] == 0  # nothing is due before its backoff

    for i, base in enumerate(BACKOFF_S, start=2):  # walk the clock through every retry
        w.advance(seconds=base * (1 + JITTER) + 1)
        w.dispatch(evaluate=False)
        st = statuses(w, eid)
        if i >= 3:
            assert st[ch["flaky"]]["state"] == "SUCCESS" and len(st[ch["flaky"]]["attempts"]) == 3
    w.advance(hours=1)
    assert w.dispatch(evaluate=False)["attempted"] == 0  # retries stopped
    st = statuses(w, eid)
    for k in ("down", "slow", "5xx", "429"):
        assert st[ch[k]]["state"] == "FAILED" and "nextAttempt" not in st[ch[k]], k
        assert len(st[ch[k]]["attempts"]) == MAX_ATTEMPTS, k
        times = [stamp(a["timestamp"]) for a in st[ch[k]]["attempts"]]
        assert times == sorted(times)
    assert len(receiver.at("/5xx")) == len(receiver.at("/429")) == MAX_ATTEMPTS
    assert len(receiver.at("/ok")) == 1 and len(receiver.at("/4xx")) == 1 and len(receiver.at("/flaky")) == 3


@pytest.fixture
def pg_world(pg_database: str, tmp_path: Path, namespace: str) -> Iterator[World]:
    """The notifications world with its meta store on PostgreSQL (its own database)."""
    from tests.notifications.conftest import make_world

    yield from make_world(tmp_path, namespace, meta_store_url=pg_database)


def test_two_dispatchers_never_send_a_delivery_twice_on_postgres(pg_world: World, receiver: Receiver) -> None:
    """PostgreSQL lets the four dispatchers' claims really race (SQLite serialises writers)."""
    test_two_dispatchers_never_send_a_delivery_twice(pg_world, receiver)


def test_two_dispatchers_never_send_a_delivery_twice(world: World, receiver: Receiver) -> None:
    w = world
    ch = w.channel(receiver.plan("/once", (200, 0.05)))
    rule = w.rule("invoice.updated", [ch["id"]])
    ids = []
    for n in range(12):
        ids += emit(w, "invoice.updated", {**INVOICE, "updatedAt": f"2026-11-01T00:00:{n:02d}Z"})
    assert len(ids) == 12
    barrier = threading.Barrier(4)
    attempted: list[int] = []

    def dispatcher() -> None:
        barrier.wait()
        attempted.append(w.dispatch(evaluate=False)["attempted"])

    threads = [threading.Thread(target=dispatcher) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = sorted(json.loads(h.body)["id"] for h in receiver.at("/once"))
    assert got == sorted(ids)  # every event exactly once
    assert sum(attempted) == len(ids) and len(attempted) == 4
    assert {s["state"] for e in w.events(rule=rule["id"]) for s in e["deliveryStatus"]} == {"SUCCESS"}


def test_invoice_events_from_a_hand_made_invoice(world: World, receiver: Receiver) -> None:
    w = world
    ch = w.channel(receiver.url("/inv"))
    created = w.rule("invoice.created", [ch["id"]])
    updated = w.rule("invoice.updated", [ch["id"]])
    paid = w.rule("invoice.paid", [ch["id"]])
    w.rule("invoice.paid", [ch["id"]], disabled=True)
    assert len(emit(w, "invoice.created")) == 1
    assert emit(w, "invoice.created") == []  # once per invoice and rule
    assert len(emit(w, "invoice.updated", {**INVOICE, "status": "paid", "updatedAt": "2026-11-02T00:00:00Z"})) == 1
    assert emit(w, "invoice.updated", {**INVOICE, "status": "paid", "updatedAt": "2026-11-02T00:00:00Z"}) == []
    assert len(emit(w, "invoice.paid", {**INVOICE, "status": "paid"})) == 1
    w.dispatch(evaluate=False)
    bodies = [json.loads(h.body) for h in receiver.at("/inv")]
    assert [b["type"] for b in bodies] == ["invoice.created", "invoice.updated", "invoice.paid"]
    assert bodies[0]["data"] == INVOICE and bodies[2]["data"]["status"] == "paid"
    assert [e["rule"]["id"] for e in w.events(order="ASC")] == [created["id"], updated["id"], paid["id"]]
    status, problem = w.call("GET", "/api/v1/notification/events", query={"rule": "nope"})
    assert status == 400 and problem["validationErrors"][0]["field"] == "rule"


def test_rule_test_resend_and_slack(world: World, receiver: Receiver) -> None:
    w = world
    hook = w.channel(receiver.url("/hook"))
    slack = w.ok("POST", "/api/v1/notification/channels", {"type": "SLACK", "name": "ops",
                                                            "url": receiver.url("/slack")})
    rule = w.rule("entitlements.balance.threshold", [hook["id"], slack["id"]],
                  thresholds=[{"type": "usage_percentage", "value": 75}])
    ev = w.ok("POST", f"/api/v1/notification/rules/{rule['id']}/test")
    assert ev["type"] == "entitlements.balance.threshold" and ev["annotations"] == {"notification.rule.test": True}
    assert {s["state"] for s in ev["deliveryStatus"]} == {"PENDING"}
    w.dispatch(evaluate=False)
    (slack_hit,) = receiver.at("/slack")
    text = json.loads(slack_hit.body)["text"]
    assert "test_feature" in text and "threshold" in text and "webhook-signature" not in slack_hit.headers
    assert len(receiver.at("/hook")) == 1
    status, _ = w.call("POST", f"/api/v1/notification/events/{ev['id']}/resend", {"channels": [hook["id"]]})
    assert status == 202
    resent = statuses(w, ev["id"])[hook["id"]]
    assert resent["state"] == "RESENDING"
    w.dispatch(evaluate=False)
    assert len(receiver.at("/hook")) == 2 and len(receiver.at("/slack")) == 1
    assert statuses(w, ev["id"])[hook["id"]]["state"] == "SUCCESS"
    assert [e["id"] for e in w.events(channel=slack["id"])] == [ev["id"]]
    assert w.events(feature="nope") == []
    # a disabled channel gets nothing; deleting a channel that a rule uses is refused
    w.ok("PUT", f"/api/v1/notification/channels/{slack['id']}", {"type": "SLACK", "name": "ops", "disabled": True,
                                                                "url": receiver.url("/slack")})
    w.ok("POST", f"/api/v1/notification/rules/{rule['id']}/test")
    w.dispatch(evaluate=False)
    assert len(receiver.at("/slack")) == 1 and len(receiver.at("/hook")) == 3
    status, problem = w.call("DELETE", f"/api/v1/notification/channels/{slack['id']}")
    assert status == 409 and rule["id"] in problem["detail"]
