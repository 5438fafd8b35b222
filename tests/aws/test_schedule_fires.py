"""A scheduled EventBridge rule really fires into SQS on LocalStack, carrying the same job message the CDK
stack's EventBridge Scheduler schedules send (infra/constructs/schedules.py). The job handlers that will
consume it (billing run, entitlement reset, notification dispatch) arrive with their issues."""

from __future__ import annotations

import json
import time
import uuid


def test_rate_rule_delivers_the_job_message_to_the_queue(aws_endpoint: str) -> None:
    import boto3

    from infra.constructs.schedules import JOBS, job_message

    assert JOBS["billing_run"].startswith("rate(")
    kw = {"endpoint_url": aws_endpoint, "region_name": "us-east-1"}
    sqs, events = boto3.client("sqs", **kw), boto3.client("events", **kw)
    name = f"billow-jobs-{uuid.uuid4().hex[:8]}"
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    body = job_message("billing_run", "default")  # the stack's schedules send exactly this
    message = json.loads(body)
    try:
        events.put_rule(Name=name, ScheduleExpression="rate(1 minute)", State="ENABLED")
        events.put_targets(Rule=name, Targets=[{"Id": "jobs", "Arn": arn, "Input": body}])
        deadline = time.monotonic() + 90
        got: list[dict[str, str]] = []
        while not got and time.monotonic() < deadline:
            got = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=5).get("Messages", [])
        assert got, "the schedule did not fire within 90 s"
        assert json.loads(got[0]["Body"]) == message
    finally:
        events.remove_targets(Rule=name, Ids=["jobs"])
        events.delete_rule(Name=name)
        sqs.delete_queue(QueueUrl=url)
