"""What the stack's EventBridge Scheduler schedules send reaches the job that consumes it, and the job runs.

The stack deploys AWS::Scheduler::Schedule resources (infra/constructs/schedules.py), each sending its job message
to that job's SQS queue, which an SQS event source mapping feeds to the job's function. LocalStack 2026.3.0 answers
the `scheduler` API (create, get, delete) but never fires a schedule: a rate(1 minute), a cron(* * * * ? *) and an
at(now + 20 s) schedule with an SQS target and a real IAM role delivered nothing in 190 s. So the test takes from
the synthesized template what AWS would run, not from a copy: for every schedule, the target `Input` (with the two
context attributes filled in as Scheduler does), sent to a LocalStack SQS queue made like the target queue; the
received message, shaped as Lambda's SQS trigger passes it (batch size from the mapping), goes to the handler of
the function whose event source mapping reads that queue, with the handler string also from the template. Every
schedule must have exactly one consumer, and every consumer a proof below that its job ran."""

from __future__ import annotations

import importlib
import json
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.billing.conftest import Billow
from tests.infra.support import Synth, refs, synthesize
from tests.notifications.conftest import Receiver, World
from tests.notifications.test_thresholds_and_resets import ENT, metered
from tests.support.billing import invoices, subscribed

NAMESPACE = f"t{os.getpid()}_sched"  # the stack's namespace: what its ticks carry, and the tests' containers use
PROVEN = {"billing_run", "notify_dispatch"}  # the jobs this module shows running from their schedule


@pytest.fixture
def namespace() -> str:
    return NAMESPACE


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    from layers.build import build

    return synthesize(tmp_path_factory.mktemp("cdk.out"), {"stage": "test", "namespace": NAMESPACE}, build("arm64"))


@dataclass(frozen=True)
class Scheduled:
    """One schedule as deployed: its target input, its queue, and the function that consumes the queue."""

    name: str
    input: str
    queue: dict[str, Any]  # the target queue's properties
    consumers: list[tuple[str, int]]  # (handler as Lambda resolves it, batch size) of each function reading the queue

    @property
    def handler(self) -> str:
        assert len(self.consumers) == 1, f"schedule {self.name}: {len(self.consumers)} functions consume its queue"
        return self.consumers[0][0]

    @property
    def batch_size(self) -> int:
        return self.consumers[0][1] if len(self.consumers) == 1 else 0

    def function(self) -> Callable[[dict[str, Any], Any], Any]:
        module, name = self.handler.rsplit(".", 1)
        return getattr(importlib.import_module(module), name)


def scheduled(s: Synth) -> dict[str, Scheduled]:
    """Every AWS::Scheduler::Schedule of the template, by the job its message names."""
    out: dict[str, Scheduled] = {}
    mappings = [m["Properties"] for m in s.of_type("AWS::Lambda::EventSourceMapping").values()]
    for sched in s.of_type("AWS::Scheduler::Schedule").values():
        props = sched["Properties"]
        target = props["Target"]
        (queue_id,) = refs(target["Arn"])
        assert s.resources[queue_id]["Type"] == "AWS::SQS::Queue", props["Name"]
        consumers = [(s.resources[fn_id]["Properties"]["Handler"], int(m.get("BatchSize", 10)))
                     for m in mappings if refs(m["EventSourceArn"]) == {queue_id} for fn_id in refs(m["FunctionName"])]
        job = json.loads(target["Input"])["job"]
        assert job not in out, f"two schedules for {job}"
        out[job] = Scheduled(props["Name"], target["Input"], s.resources[queue_id]["Properties"], consumers)
    return out


def through_sqs(job: Scheduled, aws_endpoint: str, scheduled_time: str) -> dict[str, Any]:
    """The Lambda SQS event the function gets for one tick: the schedule's input with Scheduler's context
    attributes filled in, sent to and received from a LocalStack queue made like the target queue."""
    import boto3

    execution_id = uuid.uuid4().hex
    body = (job.input.replace("<aws.scheduler.scheduled-time>", scheduled_time)
            .replace("<aws.scheduler.execution-id>", execution_id))
    kw = {"endpoint_url": aws_endpoint, "region_name": "us-east-1"}
    sqs = boto3.client("sqs", **kw)
    url = sqs.create_queue(QueueName=f"{job.queue['QueueName']}-{uuid.uuid4().hex[:8]}",
                           Attributes={"VisibilityTimeout": str(job.queue["VisibilityTimeout"])})["QueueUrl"]
    try:
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        sqs.send_message(QueueUrl=url, MessageBody=body)
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + 30
        while not got and time.monotonic() < deadline:
            got = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=5, MaxNumberOfMessages=job.batch_size,
                                      AttributeNames=["All"]).get("Messages", [])
        assert len(got) == 1, got
        (msg,) = got
        assert msg["Body"] == body
        return {"Records": [{"messageId": msg["MessageId"], "receiptHandle": msg["ReceiptHandle"],
                             "body": msg["Body"], "attributes": msg.get("Attributes", {}),
                             "messageAttributes": msg.get("MessageAttributes", {}), "md5OfBody": msg["MD5OfBody"],
                             "eventSource": "aws:sqs", "eventSourceARN": arn, "awsRegion": "us-east-1"}]}
    finally:
        sqs.delete_queue(QueueUrl=url)


def test_every_schedule_feeds_a_job_this_module_runs(stack: Synth) -> None:
    jobs = scheduled(stack)
    assert {job: len(s.consumers) for job, s in jobs.items()} == dict.fromkeys(PROVEN, 1), \
        "every schedule's queue is read by exactly one function, whose job this module shows running"
    for job, s in jobs.items():
        assert json.loads(s.input) == {"job": job, "namespace": NAMESPACE,
                                       "scheduledTime": "<aws.scheduler.scheduled-time>",
                                       "executionId": "<aws.scheduler.execution-id>"}
        assert s.batch_size == 1 and s.handler == f"functions.{job}.handler.lambda_handler"
        assert (Path(__file__).resolve().parents[2] / "functions" / job / "handler.py").is_file()


@pytest.mark.parametrize("billow", ["memory"], indirect=True)
def test_the_billing_run_tick_invoices_a_due_customer(stack: Synth, aws_endpoint: str, billow: Billow) -> None:
    b = billow
    sub = subscribed(b)  # plan `basic` from 2026-04-01: its base fee is billed in advance when April starts
    b.clock.set("2026-03-31T23:50:00Z")
    job = scheduled(stack)["billing_run"]
    out = job.function()(through_sqs(job, aws_endpoint, "2026-03-31T23:50:00Z"), None)
    assert out["runs"][0]["invoices"] == [] and invoices(b) == []  # nothing is due yet
    b.clock.set("2026-04-01T00:10:00Z")
    out = job.function()(through_sqs(job, aws_endpoint, "2026-04-01T00:10:00Z"), None)
    (invoice,) = invoices(b)
    assert [(r["namespace"], r["invoices"]) for r in out["runs"]] == [(NAMESPACE, [invoice["id"]])]
    assert [(ln["name"], ln["totals"]["total"], ln["subscription"]["id"]) for ln in invoice["lines"]] == [
        ("Base fee", "49.99", sub["id"])]


def test_the_notify_dispatch_tick_reports_a_usage_period_reset(stack: Synth, aws_endpoint: str, world: World,
                                                              receiver: Receiver) -> None:
    """The usage period's own reset (no job resets anything: it is computed on read) reaches the receiver from the
    notify_dispatch schedule's tick."""
    w = world
    ch = w.channel(receiver.url("/reset"))
    ent = metered(w)  # a daily usage period from the test's first minute, 100 tokens granted per period
    w.rule("entitlements.reset", [ch["id"]])
    w.spend(30)
    job = scheduled(stack)["notify_dispatch"]
    assert job.function()(through_sqs(job, aws_endpoint, w.now()), None) == {"created": 0, "attempted": 0}
    w.advance(days=1)
    assert job.function()(through_sqs(job, aws_endpoint, w.now()), None) == {"created": 1, "attempted": 1}
    (hit,) = receiver.at("/reset")
    payload = json.loads(hit.body)
    assert payload["type"] == "entitlements.reset" and payload["data"]["entitlement"]["id"] == ent["id"]
    assert (payload["data"]["value"]["usage"], payload["data"]["value"]["balance"]) == (0, 100)
    assert w.value("customer_1", "ai_tokens")["balance"] == 100
    assert w.ok("GET", f"{ENT}/{ent['id']}")["lastReset"] == payload["data"]["entitlement"]["lastReset"]
