"""E-mail through SES on LocalStack; the notify_dispatch Lambda handler on an SQS event shaped like the
scheduler tick's; and `billow serve`'s in-process dispatcher thread delivering without being asked."""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from billow.adapters.delivery import HttpSender, Senders, SesSender
from billow.bootstrap import Settings
from billow.local.server import BillowServer
from functions.notify_dispatch.handler import lambda_handler
from tests.notifications.conftest import Receiver, World
from tests.notifications.test_delivery import INVOICE, emit, statuses


def tick(namespace: str) -> str:
    """The body the notify_dispatch schedule sends (infra/constructs/schedules.job_message, with the scheduler's
    placeholders filled in; importing the CDK app here would cost seconds)."""
    return json.dumps({"job": "notify_dispatch", "namespace": namespace, "scheduledTime": "2026-11-29T07:00:00Z",
                       "executionId": str(uuid.uuid4())})


def sqs_event(*bodies: str) -> dict[str, Any]:
    return {"Records": [{"messageId": str(uuid.uuid4()), "receiptHandle": "r", "body": b, "attributes": {},
                         "messageAttributes": {}, "md5OfBody": "", "eventSource": "aws:sqs",
                         "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:billow-test-jobs-notify-dispatch",
                         "awsRegion": "us-east-1"} for b in bodies]}


def test_email_is_sent_through_ses(world: World, aws_endpoint: str) -> None:
    import boto3

    w = world
    ses = boto3.client("ses", endpoint_url=aws_endpoint, region_name="us-east-1")
    sender = f"billow-{uuid.uuid4().hex[:8]}@billow.test"
    to = f"finance-{uuid.uuid4().hex[:8]}@example.com"
    w.send = Senders(HttpSender(), SesSender(sender, client=ses))
    ch = w.ok("POST", "/api/v1/notification/channels", {"type": "EMAIL", "name": "finance", "recipients": [to]})
    w.rule("invoice.created", [ch["id"]])
    (unverified,) = emit(w, "invoice.created")
    w.dispatch(evaluate=False)
    st = statuses(w, unverified)[ch["id"]]
    assert st["state"] == "FAILED" and "MessageRejected" in st["reason"]  # SES refused: not retried
    ses.verify_email_identity(EmailAddress=sender)
    (eid,) = emit(w, "invoice.created", {**INVOICE, "id": "01JINV0000000000000000000B", "number": "INV-2"})
    w.dispatch(evaluate=False)
    assert statuses(w, eid)[ch["id"]]["state"] == "SUCCESS"
    with urllib.request.urlopen(f"{aws_endpoint}/_aws/ses?email={sender}") as resp:
        messages = json.loads(resp.read())["messages"]
    (msg,) = [m for m in messages if m["Destination"]["ToAddresses"] == [to]]
    assert msg["Source"] == sender and "INV-2" in msg["Subject"] and "created" in msg["Subject"]
    assert eid in msg["Body"]["text_part"]


def test_lambda_handler_evaluates_on_a_tick_and_delivers(world: World, receiver: Receiver) -> None:
    w = world
    ch = w.channel(receiver.url("/tick"))
    rule = w.rule("invoice.created", [ch["id"]])
    emit(w, "invoice.created")
    out = lambda_handler(sqs_event(json.dumps({"job": "notify_dispatch", "reason": "wake"})), None)
    assert out == {"created": 0, "attempted": 1}
    assert len(receiver.at("/tick")) == 1
    out = lambda_handler(sqs_event(tick(w.c.namespace)), None)
    assert out == {"created": 0, "attempted": 0}  # a tick evaluates rules too; nothing is due
    assert [e["rule"]["id"] for e in w.events()] == [rule["id"]]


def test_billow_serve_dispatches_in_the_background(tmp_path: Path, receiver: Receiver) -> None:
    """Driven through OpenMeter's own client (`openmeter` on PyPI) as a black box."""
    import openmeter

    server = BillowServer(Settings.parse({"usage_store": "memory", "data_dir": str(tmp_path)}), port=0)
    server.start_background()
    host, port = server.address
    client = openmeter.Client(endpoint=f"http://{host}:{port}")
    try:
        ch = client.notification_channels.create({"type": "WEBHOOK", "name": "h", "url": receiver.url("/bg")})
        rule = client.notification_rules.create({"type": "invoice.created", "name": "r", "channels": [ch["id"]]})
        ev = client.notification_rules.test(rule["id"])
        deadline = time.monotonic() + 5
        state = ""
        while state != "SUCCESS" and time.monotonic() < deadline:
            time.sleep(0.05)
            state = client.notification_events.get(ev["id"])["deliveryStatus"][0]["state"]
        assert state == "SUCCESS"  # woken by the write: no poll interval to wait for
        assert len(receiver.at("/bg")) == 1
        client.notification_events.resend(ev["id"], {"channels": [ch["id"]]})
        while len(receiver.at("/bg")) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.notification_events.list()["totalCount"] == 1
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()
        server.close()
    assert len(receiver.at("/bg")) == 2


def test_in_aws_a_new_event_wakes_notify_dispatch_through_sqs(world: World, receiver: Receiver, aws_endpoint: str,
                                                              monkeypatch: Any) -> None:
    """Without the in-process dispatcher (as in Lambda), creating an event puts a wake-up on the notifications
    queue (BILLOW_NOTIFY_QUEUE_URL); that message, handed to the handler as SQS delivers it, sends the event."""
    import boto3

    w = world
    sqs = boto3.client("sqs", endpoint_url=aws_endpoint, region_name="us-east-1")
    url = sqs.create_queue(QueueName=f"billow-notify-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws_endpoint)
    monkeypatch.setenv("BILLOW_NOTIFY_QUEUE_URL", url)
    try:
        ch = w.channel(receiver.url("/aws"))
        rule = w.rule("invoice.created", [ch["id"]])
        ev = w.ok("POST", f"/api/v1/notification/rules/{rule['id']}/test")
        got = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=5, MaxNumberOfMessages=10).get("Messages", [])
        assert [json.loads(m["Body"]) for m in got] == [{"job": "notify_dispatch", "reason": "wake"}]
        assert receiver.at("/aws") == []  # nothing was sent by the writer itself
        assert lambda_handler(sqs_event(*(m["Body"] for m in got)), None) == {"created": 0, "attempted": 1}
        (hit,) = receiver.at("/aws")
        assert json.loads(hit.body)["id"] == ev["id"]
    finally:
        sqs.delete_queue(QueueUrl=url)
