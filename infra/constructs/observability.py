"""Alarms, all to one SNS topic (subscribe your pager/e-mail to it): errors per function, depth of every
dead-letter queue (> 0: something was set aside and needs a look), and the MSK trigger's consumer lag
(AWS/Lambda OffsetLag of the usage sink: usage is ingested but not yet queryable)."""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sqs as sqs
from constructs import Construct

MINUTE = Duration.minutes(1)


class Alarms(Construct):
    def __init__(self, scope: Construct, cid: str, *, stage: str) -> None:
        super().__init__(scope, cid)
        self.stage = stage
        self.topic = sns.Topic(self, "Topic", display_name=f"Billow {stage} alarms",
                               master_key=kms.Alias.from_alias_name(self, "SnsKey", "alias/aws/sns"))
        self.topic.add_to_resource_policy(iam.PolicyStatement(
            effect=iam.Effect.DENY, principals=[iam.AnyPrincipal()], actions=["sns:Publish"],
            resources=[self.topic.topic_arn], conditions={"Bool": {"aws:SecureTransport": "false"}}))
        self.action = cw_actions.SnsAction(self.topic)
        self.alarms: dict[str, cw.Alarm] = {}

    def function_errors(self, name: str, fn: lambda_.IFunction) -> None:
        self._add(f"{name}-errors", fn.metric_errors(period=MINUTE, statistic="Sum"), 0,
                  f"The {name} function raised errors (see its log group)")

    def dead_letters(self, name: str, queue: sqs.IQueue) -> None:
        self._add(f"{name}-depth", queue.metric_approximate_number_of_messages_visible(period=MINUTE,
                                                                                       statistic="Maximum"),
                  0, f"{name} holds messages: something was set aside and needs a look")

    def consumer_lag(self, fn: lambda_.IFunction, *, max_lag: int, minutes: int) -> None:
        lag = cw.Metric(namespace="AWS/Lambda", metric_name="OffsetLag", statistic="Maximum", period=MINUTE,
                        dimensions_map={"FunctionName": fn.function_name})
        self._add("usage-sink-offset-lag", lag, max_lag,
                  f"The usage sink is more than {max_lag} records behind its MSK topic for {minutes} min",
                  periods=minutes)

    def sink_blocked(self, fn: lambda_.IFunction, *, minutes: int) -> None:
        """The usage sink's partition is blocked (a store outage: the MSK trigger retries the batch without
        limit): OffsetLag above zero while no invocation succeeded, every minute for `minutes` minutes. It
        fires at any traffic, unlike the lag threshold; a stack with no traffic emits nothing (not breaching)."""
        def metric(name: str, statistic: str) -> cw.Metric:
            return cw.Metric(namespace="AWS/Lambda", metric_name=name, statistic=statistic, period=MINUTE,
                             dimensions_map={"FunctionName": fn.function_name})

        blocked = cw.MathExpression(
            expression="IF(FILL(lag, 0) > 0 AND FILL(calls, 0) - FILL(errors, 0) <= 0, 1, 0)",
            using_metrics={"lag": metric("OffsetLag", "Maximum"), "calls": metric("Invocations", "Sum"),
                           "errors": metric("Errors", "Sum")},
            period=MINUTE, label="usage sink blocked")
        alarm = cw.Alarm(self, "usage-sink-blocked", alarm_name=f"billow-{self.stage}-usage-sink-blocked",
                         metric=blocked, threshold=1, evaluation_periods=minutes, datapoints_to_alarm=minutes,
                         comparison_operator=cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                         treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
                         alarm_description=(f"The usage sink has stored nothing for {minutes} min while records wait "
                                            "in its MSK topic: the usage store is probably down (docs/deploy.md, "
                                            "Usage store outage)"))
        alarm.add_alarm_action(self.action)
        self.alarms["usage-sink-blocked"] = alarm

    def _add(self, name: str, metric: cw.IMetric, threshold: float, description: str, periods: int = 1) -> None:
        alarm = cw.Alarm(self, name, alarm_name=f"billow-{self.stage}-{name}", metric=metric, threshold=threshold,
                         evaluation_periods=periods, comparison_operator=cw.ComparisonOperator.GREATER_THAN_THRESHOLD,
                         treat_missing_data=cw.TreatMissingData.NOT_BREACHING, alarm_description=description)
        alarm.add_alarm_action(self.action)
        self.alarms[name] = alarm
