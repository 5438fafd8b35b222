"""Notifications: the wake-up queue of notify_dispatch and what that function may touch.

notify_dispatch runs on two SQS triggers: its schedule's job queue (EventBridge Scheduler, every minute:
evaluate balance thresholds and resets, then deliver) and this queue, on which writers (the API for rule
tests and resends, billing for invoice events, notify_dispatch itself for retries up to 15 minutes ahead via
DelaySeconds) put a wake-up message so an event goes out within seconds rather than at the next tick. Both
queues dead-letter into the jobs DLQ (alarmed). Webhooks and Slack go out through the NAT; e-mail through SES,
allowed only from the one sender identity (context `notify_email_from`, verified in SES by the operator)."""

from __future__ import annotations

from aws_cdk import Duration, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as sources
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from infra.constructs.schedules import JOB_TIMEOUT

MAX_CONCURRENCY = 2  # of the wake-up queue's trigger
EMAIL_FROM = "notifications@example.com"  # override: cdk deploy -c notify_email_from=billing@your-domain


class Notifications(Construct):
    def __init__(self, scope: Construct, cid: str, *, stage: str, dead_letters: sqs.IQueue,
                 dispatch: lambda_.Function, writers: list[lambda_.Function], email_from: str | None = None) -> None:
        super().__init__(scope, cid)
        email_from = email_from or str(self.node.try_get_context("notify_email_from") or EMAIL_FROM)
        if email_from.count("@") != 1:
            raise ValueError(f"notify_email_from must be an e-mail address, got {email_from!r}")
        self.email_from = email_from
        self.queue = sqs.Queue(self, "Queue", queue_name=f"billow-{stage}-notifications",
                               encryption=sqs.QueueEncryption.SQS_MANAGED, enforce_ssl=True,
                               visibility_timeout=Duration.seconds(JOB_TIMEOUT.to_seconds() * 6),
                               retention_period=Duration.days(4),
                               dead_letter_queue=sqs.DeadLetterQueue(queue=dead_letters, max_receive_count=5))
        self.wire(dispatch, writers)

    def wire(self, dispatch: lambda_.Function, writers: list[lambda_.Function]) -> None:
        # Wake-ups are interchangeable: one invocation per (up to) ten messages delivers whatever is due.
        # At most MAX_CONCURRENCY at once (SQS's minimum): a burst of wake-ups cannot fan out into many dispatchers.
        dispatch.add_event_source(sources.SqsEventSource(self.queue, batch_size=10, max_concurrency=MAX_CONCURRENCY,
                                                         max_batching_window=Duration.seconds(1)))
        for fn in (dispatch, *writers):
            fn.add_environment("BILLOW_NOTIFY_QUEUE_URL", self.queue.queue_url)
            self.queue.grant_send_messages(fn)
        dispatch.add_environment("BILLOW_NOTIFY_EMAIL_FROM", self.email_from)
        domain = self.email_from.split("@")[1]
        dispatch.add_to_role_policy(iam.PolicyStatement(
            sid="SesSendFromBillowIdentity", actions=["ses:SendEmail"],
            resources=[Stack.of(self).format_arn(service="ses", resource="identity", resource_name=name)
                       for name in (self.email_from, domain)]))
