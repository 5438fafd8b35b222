"""EventBridge Scheduler: billing runs, entitlement resets and notification dispatch.

The jobs' handlers arrive with their issues (billing run, entitlements, notifications). Until then each
schedule delivers its job message to one encrypted SQS queue, where the job handler's SQS trigger will pick
it up; nothing is invoked that does not exist."""

from __future__ import annotations

import json

from aws_cdk import Duration
from aws_cdk import aws_iam as iam
from aws_cdk import aws_scheduler as scheduler
from aws_cdk import aws_sqs as sqs
from constructs import Construct

JOBS = {
    "billing_run": "rate(15 minutes)",
    "entitlement_reset": "rate(5 minutes)",
    "notify_dispatch": "rate(1 minute)",
}


class Schedules(Construct):
    def __init__(self, scope: Construct, cid: str, *, namespace: str, dead_letters: sqs.IQueue) -> None:
        super().__init__(scope, cid)
        self.queue = sqs.Queue(self, "Jobs", encryption=sqs.QueueEncryption.SQS_MANAGED, enforce_ssl=True,
                               visibility_timeout=Duration.minutes(15),
                               dead_letter_queue=sqs.DeadLetterQueue(queue=dead_letters, max_receive_count=5))
        role = iam.Role(self, "SchedulerRole", assumed_by=iam.ServicePrincipal("scheduler.amazonaws.com"),
                        description="EventBridge Scheduler: send Billow job messages")
        self.queue.grant_send_messages(role)
        self.schedules: dict[str, scheduler.CfnSchedule] = {}
        for job, expression in JOBS.items():
            self.schedules[job] = scheduler.CfnSchedule(
                self, job, schedule_expression=expression,
                flexible_time_window=scheduler.CfnSchedule.FlexibleTimeWindowProperty(mode="OFF"),
                target=scheduler.CfnSchedule.TargetProperty(
                    arn=self.queue.queue_arn, role_arn=role.role_arn,
                    input=json.dumps({"job": job, "namespace": namespace}),
                    retry_policy=scheduler.CfnSchedule.RetryPolicyProperty(maximum_retry_attempts=3)))
