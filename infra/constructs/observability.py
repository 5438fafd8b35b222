"""Alarms, all to one SNS topic (subscribe your pager/e-mail to it; docs/deploy.md lists them): per function an
error rate (> 1 % of invocations in 3 of 5 minutes, not every single error) and throttles; the API's 5xx rate and
p99 latency; depth of every dead-letter queue (> 0: something was set aside and needs a look); the age of the
oldest tick in every consumed job queue (a billing run that stops pages); Aurora's capacity and connections and
RDS Proxy's availability; the MSK trigger's consumer lag (AWS/Lambda OffsetLag of the usage sink: usage is
ingested but not yet queryable) and a blocked sink.

The topic is encrypted with a customer-managed KMS key whose policy lets CloudWatch use it (CloudWatch cannot use
the AWS-managed aws/sns key, so alarms on such a topic never arrive), and its policy lets CloudWatch alarms of
this account publish."""

from __future__ import annotations

from aws_cdk import ArnFormat, Duration, RemovalPolicy, Stack
from aws_cdk import aws_apigatewayv2 as apigw
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_rds as rds
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sqs as sqs
from constructs import Construct

MINUTE = Duration.minutes(1)
# M of N: a condition must hold in DATAPOINTS of the last PERIODS one-minute periods (a blip does not page).
DATAPOINTS, PERIODS = 3, 5
ERROR_RATE_PERCENT = 1  # failed invocations (or API 5xx answers) per 100
API_P99_MS = 5000  # API Gateway's p99 latency (the integration timeout is 29 s)
JOB_MAX_AGE = Duration.hours(1)  # the oldest tick of a job queue: the job failed twice running or stopped
DB_ACU_PERCENT = 90  # Aurora Serverless v2 at its capacity ceiling: raise max ACU
DB_CONNECTIONS_SHARE = 0.8  # of max_connections (estimated from max ACU, as Aurora PostgreSQL sets it)


def max_connections(max_acu: float) -> int:
    """Aurora PostgreSQL's default max_connections, LEAST(DBInstanceClassMemory / 9531392, 5000), with 2 GiB
    of memory per ACU (Serverless v2 sizes it from the maximum capacity)."""
    return int(min(max_acu * 2 * 1024**3 / 9531392, 5000))


class Alarms(Construct):
    def __init__(self, scope: Construct, cid: str, *, stage: str, retain: bool = False) -> None:
        super().__init__(scope, cid)
        self.stage = stage
        stack = Stack.of(self)
        self.key = kms.Key(self, "TopicKey", description=f"Billow {stage} alarm topic (CloudWatch may use it)",
                           enable_key_rotation=True, pending_window=Duration.days(7),
                           removal_policy=RemovalPolicy.RETAIN if retain else RemovalPolicy.DESTROY)
        # CloudWatch encrypts what it publishes to the topic with this key (as the AWS guide for encrypted alarm
        # topics has it; a condition here is not documented to be set by CloudWatch, so none is added).
        self.key.add_to_resource_policy(iam.PolicyStatement(
            sid="CloudWatchAlarms", principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
            actions=["kms:Decrypt", "kms:GenerateDataKey*"], resources=["*"]))
        self.topic = sns.Topic(self, "Topic", display_name=f"Billow {stage} alarms", master_key=self.key)
        self.topic.add_to_resource_policy(iam.PolicyStatement(
            effect=iam.Effect.DENY, principals=[iam.AnyPrincipal()], actions=["sns:Publish"],
            resources=[self.topic.topic_arn], conditions={"Bool": {"aws:SecureTransport": "false"}}))
        self.topic.add_to_resource_policy(iam.PolicyStatement(
            sid="CloudWatchAlarmsOfThisAccount", principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
            actions=["sns:Publish"], resources=[self.topic.topic_arn],
            conditions={"StringEquals": {"aws:SourceAccount": stack.account},
                        "ArnLike": {"aws:SourceArn": stack.format_arn(service="cloudwatch", resource="alarm",
                                                                      resource_name="*",
                                                                      arn_format=ArnFormat.COLON_RESOURCE_NAME)}}))
        self.action = cw_actions.SnsAction(self.topic)
        self.alarms: dict[str, cw.Alarm] = {}

    def function_errors(self, name: str, fn: lambda_.IFunction) -> None:
        """More than 1 % of the function's invocations failed, in 3 of the last 5 minutes."""
        rate = cw.MathExpression(
            expression="IF(FILL(calls, 0) > 0, 100 * FILL(errors, 0) / calls, 0)",
            using_metrics={"errors": fn.metric_errors(period=MINUTE, statistic="Sum"),
                           "calls": fn.metric_invocations(period=MINUTE, statistic="Sum")},
            period=MINUTE, label=f"{name} error rate (%)")
        self._add(f"{name}-errors", rate, ERROR_RATE_PERCENT,
                  f"More than {ERROR_RATE_PERCENT} % of {name}'s invocations failed in {DATAPOINTS} of the last "
                  f"{PERIODS} minutes (see its log group)", m_of_n=True)

    def function_throttles(self, name: str, fn: lambda_.IFunction) -> None:
        self._add(f"{name}-throttles", fn.metric_throttles(period=MINUTE, statistic="Sum"), 0,
                  f"{name} was throttled in {DATAPOINTS} of the last {PERIODS} minutes (its reserved concurrency "
                  "or the account's limit)", m_of_n=True)

    def api(self, stage: apigw.IHttpStage) -> None:
        """The HTTP API's 5xx rate (> 1 %) and p99 latency, each in 3 of the last 5 minutes."""
        rate = cw.MathExpression(
            expression="IF(FILL(requests, 0) > 0, 100 * FILL(errors, 0) / requests, 0)",
            using_metrics={"errors": stage.metric_server_error(period=MINUTE, statistic="Sum"),
                           "requests": stage.metric_count(period=MINUTE, statistic="Sum")},
            period=MINUTE, label="API 5xx rate (%)")
        self._add("api-5xx-rate", rate, ERROR_RATE_PERCENT,
                  f"More than {ERROR_RATE_PERCENT} % of API requests answered 5xx in {DATAPOINTS} of the last "
                  f"{PERIODS} minutes (API access log, function logs)", m_of_n=True)
        self._add("api-latency-p99", stage.metric_latency(period=MINUTE, statistic="p99"), API_P99_MS,
                  f"The API's p99 latency was above {API_P99_MS} ms in {DATAPOINTS} of the last {PERIODS} "
                  "minutes", m_of_n=True)

    def job_queue_age(self, job: str, queue: sqs.IQueue) -> None:
        """The oldest tick waiting in a job's queue: a job that stops (fails on every try, or is not invoked)
        leaves its ticks there; a healthy one takes each within seconds."""
        self._add(f"jobs-{job.replace('_', '-')}-age",
                  queue.metric_approximate_age_of_oldest_message(period=Duration.minutes(5), statistic="Maximum"),
                  JOB_MAX_AGE.to_seconds(),
                  f"A {job} tick has waited more than {JOB_MAX_AGE.to_hours()} h in its queue: the job has stopped "
                  "or keeps failing (its log group, then the jobs DLQ)")

    def database(self, cluster: rds.DatabaseCluster, proxy: rds.DatabaseProxy | None, *, max_acu: float) -> None:
        """Aurora at its capacity ceiling or near max_connections, or RDS Proxy (where there is one) unable to reach
        it."""
        self._add("db-acu-utilization", cluster.metric_acu_utilization(period=MINUTE, statistic="Average"),
                  DB_ACU_PERCENT, f"Aurora ran above {DB_ACU_PERCENT} % of its maximum capacity ({max_acu} ACU) in "
                  f"{DATAPOINTS} of the last {PERIODS} minutes: raise max ACU", m_of_n=True)
        limit = int(max_connections(max_acu) * DB_CONNECTIONS_SHARE)
        self._add("db-connections", cluster.metric_database_connections(period=MINUTE, statistic="Maximum"), limit,
                  f"Aurora holds more than {limit} connections ({int(DB_CONNECTIONS_SHARE * 100)} % of its "
                  f"max_connections) in {DATAPOINTS} of the last {PERIODS} minutes", m_of_n=True)
        if proxy is None:
            return
        availability = cw.Metric(namespace="AWS/RDS", metric_name="AvailabilityPercentage", statistic="Minimum",
                                 period=MINUTE, dimensions_map={"ProxyName": proxy.db_proxy_name,
                                                                "TargetGroup": "default", "TargetRole": "READ_WRITE"})
        self._add("db-proxy-availability", availability, 100,
                  f"RDS Proxy could not reach the Aurora writer in {DATAPOINTS} of the last {PERIODS} minutes",
                  m_of_n=True, comparison=cw.ComparisonOperator.LESS_THAN_THRESHOLD)

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

    def _add(self, name: str, metric: cw.IMetric, threshold: float, description: str, periods: int = 1, *,
             m_of_n: bool = False,
             comparison: cw.ComparisonOperator = cw.ComparisonOperator.GREATER_THAN_THRESHOLD) -> None:
        evaluation, datapoints = (PERIODS, DATAPOINTS) if m_of_n else (periods, None)
        alarm = cw.Alarm(self, name, alarm_name=f"billow-{self.stage}-{name}", metric=metric, threshold=threshold,
                         evaluation_periods=evaluation, datapoints_to_alarm=datapoints, comparison_operator=comparison,
                         treat_missing_data=cw.TreatMissingData.NOT_BREACHING, alarm_description=description)
        alarm.add_alarm_action(self.action)
        self.alarms[name] = alarm
