"""EventBridge Scheduler: billing runs and notification dispatch.

Each schedule sends its job message to that job's own SQS queue (`billow-<stage>-jobs-<job>`), never
straight to a function; `functions/<job>/handler.py`, made here (with the stores' grants), consumes it with an SQS
trigger (a job without its handler fails synthesis). The queue adds retries, a dead-letter queue and a buffer when
a run outlasts its interval. Alarms: the oldest tick in each job queue, and the jobs DLQ's depth.

There is no entitlement reset job: a usage period's resets are computed when a balance is read
(services/entitlements.reset_schedule from the period and the manual resets; services/balances runs the grants
through them and saves a snapshot at a reset once it is older than the late-usage window), and reset
notifications are made by notify_dispatch's tick (services/notifications.evaluate).

The message carries the scheduler's own tick time and execution id, so a job can be made idempotent per
tick: {"job": ..., "namespace": ..., "scheduledTime": "<ISO-8601>", "executionId": "..."}.

The billing_run queue also carries the jobs the API accepts and does not run itself (a pricing lab backtest:
{"job": "backtest", "namespace": ..., "id": ...}; `accept_jobs`): the API function's job runner sends them there
(BILLOW_JOB_RUNNER=queue, BILLOW_JOB_QUEUE_URL) because Lambda freezes a thread once the response is sent, and
functions/billing_run runs them within its timeout, with the stores' grants it already has."""

from __future__ import annotations

import json
from pathlib import Path

from aws_cdk import Duration, RemovalPolicy, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as sources
from aws_cdk import aws_scheduler as scheduler
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from infra.constructs.functions import BillowFunctions
from infra.constructs.observability import Alarms

JOBS = {
    "billing_run": "rate(15 minutes)",
    "notify_dispatch": "rate(1 minute)",
}
MAX_CONCURRENCY = 2  # per job trigger (SQS's minimum): ticks queue rather than run many at once
JOB_TIMEOUT = Duration.minutes(5)  # a job function's timeout; the queue's visibility timeout is 6x this


def job_message(job: str, namespace: str) -> str:
    return json.dumps({"job": job, "namespace": namespace, "scheduledTime": "<aws.scheduler.scheduled-time>",
                       "executionId": "<aws.scheduler.execution-id>"})


class Schedules(Construct):
    def __init__(self, scope: Construct, cid: str, *, stage: str, namespace: str, fns: BillowFunctions,
                 functions_root: Path, alarms: Alarms, retain: bool = False) -> None:
        super().__init__(scope, cid)
        self.dead_letters = sqs.Queue(self, "JobsDlq", queue_name=f"billow-{stage}-jobs-dlq",
                                      encryption=sqs.QueueEncryption.SQS_MANAGED, enforce_ssl=True,
                                      retention_period=Duration.days(14),
                                      removal_policy=RemovalPolicy.RETAIN if retain else RemovalPolicy.DESTROY)
        # Only this account's schedules may assume it (the confused-deputy guard AWS documents for Scheduler).
        scheduler_principal = iam.ServicePrincipal(
            "scheduler.amazonaws.com", conditions={"StringEquals": {"aws:SourceAccount": Stack.of(self).account}})
        self.role = iam.Role(self, "SchedulerRole", assumed_by=scheduler_principal,
                             description="EventBridge Scheduler: send Billow job messages to their queues")
        self.dead_letters.grant_send_messages(self.role)  # undeliverable ticks
        self.queues: dict[str, sqs.Queue] = {}
        self.schedules: dict[str, scheduler.CfnSchedule] = {}
        for job, expression in JOBS.items():
            queue = sqs.Queue(self, f"{job}Queue", queue_name=f"billow-{stage}-jobs-{job.replace('_', '-')}",
                              encryption=sqs.QueueEncryption.SQS_MANAGED, enforce_ssl=True,
                              visibility_timeout=Duration.seconds(JOB_TIMEOUT.to_seconds() * 6),
                              retention_period=Duration.days(4),
                              dead_letter_queue=sqs.DeadLetterQueue(queue=self.dead_letters, max_receive_count=5))
            queue.grant_send_messages(self.role)
            self.queues[job] = queue
            self.schedules[job] = scheduler.CfnSchedule(
                self, job, name=f"billow-{stage}-{job.replace('_', '-')}", schedule_expression=expression,
                description=f"Billow {job} tick", state="ENABLED",
                flexible_time_window=scheduler.CfnSchedule.FlexibleTimeWindowProperty(mode="OFF"),
                target=scheduler.CfnSchedule.TargetProperty(
                    arn=queue.queue_arn, role_arn=self.role.role_arn, input=job_message(job, namespace),
                    retry_policy=scheduler.CfnSchedule.RetryPolicyProperty(
                        maximum_retry_attempts=3, maximum_event_age_in_seconds=3600),
                    dead_letter_config=scheduler.CfnSchedule.DeadLetterConfigProperty(
                        arn=self.dead_letters.queue_arn)))
        self.functions: dict[str, lambda_.Function] = {}  # every schedule's queue is consumed by its job's handler
        for job in JOBS:
            if not (functions_root / job / "handler.py").is_file():
                raise FileNotFoundError(f"schedule {job} has no handler: {functions_root / job / 'handler.py'}")
            self.functions[job] = fns.function(job, timeout=JOB_TIMEOUT, usage=True)
            self.subscribe(job, self.functions[job])
            alarms.job_queue_age(job, self.queues[job])
        alarms.dead_letters("jobs-dlq", self.dead_letters)

    def accept_jobs(self, fn: lambda_.Function, job: str = "billing_run") -> None:
        """`fn` (the API function) hands the jobs it accepts to `job`'s queue and worker: only sending is granted."""
        fn.add_environment("BILLOW_JOB_RUNNER", "queue")
        fn.add_environment("BILLOW_JOB_QUEUE_URL", self.queues[job].queue_url)
        self.queues[job].grant_send_messages(fn)

    def subscribe(self, job: str, fn: lambda_.IFunction) -> None:
        """A job handler consumes its queue: one tick per invocation, failures retried, then the job DLQ."""
        fn.add_event_source(sources.SqsEventSource(self.queues[job], batch_size=1, max_concurrency=MAX_CONCURRENCY))
