"""Alarms: errors per function, dead-letter depth, MSK consumer lag; all to one encrypted SNS topic."""

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


class Alarms(Construct):
    def __init__(self, scope: Construct, cid: str, *, functions: dict[str, lambda_.IFunction],
                 queues: dict[str, sqs.IQueue], sink: lambda_.IFunction, max_lag: int) -> None:
        super().__init__(scope, cid)
        self.topic = sns.Topic(self, "Topic", display_name="Billow alarms",
                               master_key=kms.Alias.from_alias_name(self, "SnsKey", "alias/aws/sns"))
        self.topic.add_to_resource_policy(iam.PolicyStatement(
            effect=iam.Effect.DENY, principals=[iam.AnyPrincipal()], actions=["sns:Publish"],
            resources=[self.topic.topic_arn], conditions={"Bool": {"aws:SecureTransport": "false"}}))
        action = cw_actions.SnsAction(self.topic)
        self.alarms: list[cw.Alarm] = []
        for name, fn in functions.items():
            self._add(f"{name}Errors", fn.metric_errors(period=Duration.minutes(1), statistic="Sum"), 1,
                      f"{name} function errors", action)
        for name, q in queues.items():
            self._add(f"{name}Depth", q.metric_approximate_number_of_messages_visible(period=Duration.minutes(1)),
                      1, f"{name} holds messages", action)
        lag = cw.Metric(namespace="AWS/Lambda", metric_name="OffsetLag", statistic="Maximum",
                        dimensions_map={"FunctionName": sink.function_name}, period=Duration.minutes(1))
        self._add("SinkOffsetLag", lag, max_lag, "usage sink is behind the MSK topic", action, periods=5)

    def _add(self, cid: str, metric: cw.IMetric, threshold: float, description: str, action: cw_actions.SnsAction,
             periods: int = 1) -> None:
        alarm = cw.Alarm(self, cid, metric=metric, threshold=threshold, evaluation_periods=periods,
                         comparison_operator=cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                         treat_missing_data=cw.TreatMissingData.NOT_BREACHING, alarm_description=description)
        alarm.add_alarm_action(action)
        self.alarms.append(alarm)
