"""The Billow stack: one stack composed of one construct per capability."""

from __future__ import annotations

from pathlib import Path

from aws_cdk import CfnOutput, Duration, Stack
from aws_cdk import aws_apigatewayv2 as apigw
from aws_cdk import aws_apigatewayv2_integrations as integrations
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as sources
from aws_cdk import aws_logs as logs
from aws_cdk import aws_secretsmanager as sm
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from infra.constructs.database import Database
from infra.constructs.functions import BillowFunctions
from infra.constructs.observability import Alarms
from infra.constructs.schedules import Schedules
from infra.constructs.streaming import Streaming

SINK_GROUP = "billow-usage-sink"


class BillowStack(Stack):
    def __init__(self, scope: Construct, cid: str, *, stage: str, namespace: str, assets: Path,
                 **kwargs: object) -> None:
        super().__init__(scope, cid, **kwargs)  # type: ignore[arg-type]
        prod = stage == "prod"
        self.retain_data = prod
        topic = f"billow.{namespace}.events"

        # Network: functions in private subnets with egress (ClickHouse Cloud is reached over the internet).
        self.vpc = ec2.Vpc(self, "Vpc", max_azs=2, nat_gateways=1, subnet_configuration=[
            ec2.SubnetConfiguration(name="public", subnet_type=ec2.SubnetType.PUBLIC, cidr_mask=24),
            ec2.SubnetConfiguration(name="app", subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS, cidr_mask=22),
            ec2.SubnetConfiguration(name="data", subnet_type=ec2.SubnetType.PRIVATE_ISOLATED, cidr_mask=24)])
        self.vpc.add_flow_log("FlowLogs", traffic_type=ec2.FlowLogTrafficType.REJECT)
        app_sg = ec2.SecurityGroup(self, "FunctionsSg", vpc=self.vpc, allow_all_outbound=True,
                                   description="Billow Lambda functions")

        # Dead letters: records the sink cannot read (it sends them itself), and whole batches the MSK
        # trigger gave up on (on-failure destination).
        self.dead_letters = sqs.Queue(self, "DeadLetters", encryption=sqs.QueueEncryption.SQS_MANAGED,
                                      enforce_ssl=True, retention_period=Duration.days(14))
        self.failed_batches = sqs.Queue(self, "FailedBatches", encryption=sqs.QueueEncryption.SQS_MANAGED,
                                        enforce_ssl=True, retention_period=Duration.days(14))

        self.streaming = Streaming(self, "Streaming", vpc=self.vpc, clients=app_sg, name=f"billow-{stage}")
        self.database = Database(self, "Database", vpc=self.vpc, clients=app_sg, min_acu=0.5 if not prod else 1,
                                 max_acu=8 if not prod else 32, retain=prod)
        # ClickHouse Cloud or self-managed: the user writes host and credentials into this secret.
        self.clickhouse = sm.Secret(
            self, "ClickHouse", description="Billow ClickHouse endpoint: set host/port/username/password/database "
                                            "(or one 'dsn') after the first deploy",
            generate_secret_string=sm.SecretStringGenerator(
                secret_string_template='{"host": "SET-ME.clickhouse.cloud", "port": 8443, "username": "default", '
                                       '"database": "billow"}',
                generate_string_key="password", exclude_punctuation=True))

        env = {
            "BILLOW_NAMESPACE": namespace, "BILLOW_USAGE_STORE": "clickhouse",
            "BILLOW_CLICKHOUSE_SECRET_ARN": self.clickhouse.secret_arn,
            "BILLOW_DB_SECRET_ARN": self.database.secret.secret_arn,
            "BILLOW_DB_HOST": self.database.proxy.endpoint,
            "POWERTOOLS_METRICS_NAMESPACE": "Billow", "POWERTOOLS_LOG_LEVEL": "INFO",
        }
        fns = BillowFunctions(self, "Functions", assets=assets, vpc=self.vpc, security_group=app_sg, environment=env)
        kafka_env = {"BILLOW_BUS": "kafka", "BILLOW_KAFKA_AUTH": "iam",
                     "BILLOW_KAFKA_BOOTSTRAP": self.streaming.bootstrap_brokers}
        self.api_fn = fns.function("Api", "functions.api.handler.lambda_handler")
        self.ingest_fn = fns.function("Ingest", "functions.ingest.handler.lambda_handler", extra_env=kafka_env)
        self.sink_fn = fns.function("UsageSink", "functions.usage_sink.handler.lambda_handler", memory=1024,
                                    timeout_s=120, extra_env={"BILLOW_DLQ_URL": self.dead_letters.queue_url})

        # Least privilege: each function reads only the secrets it uses, talks only to its topic/group.
        for fn in (self.api_fn, self.ingest_fn, self.sink_fn):
            self.clickhouse.grant_read(fn)
            self.database.secret.grant_read(fn)
        cluster = self.streaming.cluster_arn
        self.ingest_fn.add_to_role_policy(iam.PolicyStatement(
            actions=["kafka-cluster:Connect", "kafka-cluster:DescribeCluster"], resources=[cluster]))
        self.ingest_fn.add_to_role_policy(iam.PolicyStatement(
            actions=["kafka-cluster:CreateTopic", "kafka-cluster:DescribeTopic", "kafka-cluster:WriteData"],
            resources=[self.streaming.topic_arn(topic)]))
        self.sink_fn.add_to_role_policy(iam.PolicyStatement(
            actions=["kafka-cluster:Connect", "kafka-cluster:DescribeCluster",
                     "kafka-cluster:DescribeClusterDynamicConfiguration"], resources=[cluster]))
        self.sink_fn.add_to_role_policy(iam.PolicyStatement(
            actions=["kafka-cluster:DescribeTopic", "kafka-cluster:ReadData"],
            resources=[self.streaming.topic_arn(topic)]))
        self.sink_fn.add_to_role_policy(iam.PolicyStatement(
            actions=["kafka-cluster:AlterGroup", "kafka-cluster:DescribeGroup"],
            resources=[self.streaming.group_arn(SINK_GROUP)]))
        self.dead_letters.grant_send_messages(self.sink_fn)

        # MSK -> usage sink. Batches up to 1,000 records or 1 s; a batch the sink keeps failing (a store
        # outage) is retried, split in halves to isolate a cause, and after 10 tries goes to FailedBatches.
        self.sink_fn.add_event_source(sources.ManagedKafkaEventSource(
            cluster_arn=cluster, topic=topic, consumer_group_id=SINK_GROUP, batch_size=1000,
            max_batching_window=Duration.seconds(1), starting_position=lambda_.StartingPosition.TRIM_HORIZON,
            on_failure=sources.SqsDlq(self.failed_batches), retry_attempts=10, bisect_batch_on_error=True,
            provisioned_poller_config=sources.ProvisionedPollerConfig(minimum_pollers=1, maximum_pollers=4)))

        # HTTP API: ingest on its own function (its own concurrency and throttles), the rest on the API function.
        access_logs = logs.LogGroup(self, "ApiAccessLogs", retention=logs.RetentionDays.ONE_MONTH)
        self.http_api = apigw.HttpApi(self, "Http", api_name=f"billow-{stage}", create_default_stage=False)
        stage_ = apigw.HttpStage(self, "DefaultStage", http_api=self.http_api, auto_deploy=True,
                                 throttle=apigw.ThrottleSettings(rate_limit=2000, burst_limit=4000))
        cfn_stage = stage_.node.default_child
        assert isinstance(cfn_stage, apigw.CfnStage)
        cfn_stage.access_log_settings = apigw.CfnStage.AccessLogSettingsProperty(
            destination_arn=access_logs.log_group_arn,
            format='{"requestId":"$context.requestId","ip":"$context.identity.sourceIp","method":'
                   '"$context.httpMethod","path":"$context.path","status":"$context.status",'
                   '"latencyMs":"$context.responseLatency","error":"$context.integrationErrorMessage"}')
        api_integration = integrations.HttpLambdaIntegration("ApiIntegration", self.api_fn)
        self.http_api.add_routes(path="/api/v1/events", methods=[apigw.HttpMethod.POST],
                                 integration=integrations.HttpLambdaIntegration("IngestIntegration", self.ingest_fn))
        self.http_api.add_routes(path="/api/v1/{proxy+}", methods=[apigw.HttpMethod.ANY], integration=api_integration)
        self.http_api.add_routes(path="/healthz", methods=[apigw.HttpMethod.GET], integration=api_integration)

        self.schedules = Schedules(self, "Schedules", namespace=namespace, dead_letters=self.failed_batches)
        self.alarms = Alarms(self, "Alarms", functions={"Api": self.api_fn, "Ingest": self.ingest_fn,
                                                        "UsageSink": self.sink_fn},
                             queues={"DeadLetters": self.dead_letters, "FailedBatches": self.failed_batches},
                             sink=self.sink_fn, max_lag=100_000)

        CfnOutput(self, "ApiUrl", value=self.http_api.api_endpoint)
        CfnOutput(self, "ClickHouseSecretArn", value=self.clickhouse.secret_arn)
        CfnOutput(self, "DeadLetterQueueUrl", value=self.dead_letters.queue_url)
