"""Schema migrations once per deploy: a CDK trigger (a custom resource that invokes a function during the
deployment) runs functions/migrate after the database exists and before every other function is created or
updated, so new code never meets an old schema and no function migrates on a cold start
(billow.bootstrap.build only checks the revisions in Lambda). The trigger runs again whenever the migrate
function changes, which is every deploy that changes the code asset: the migrations ship in it. A failed
migration fails the deploy (synchronous invocation) and CloudFormation rolls back before any function
changed.

The same run mints the first admin key, if the namespace has none, into the `admin_key` secret made here (retained
in prod), so nobody needs a host in the VPC for it: `aws secretsmanager get-secret-value --secret-id
<AdminKeySecretArn>` (docs/deploy.md). Only the migrate function reads or writes it.

It also makes the namespace topic (explicit partitions and retention, not the first ingest's defaults), and the
app role (billow.adapters.rds_iam.ensure_app_role), logging in once as the master user."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy, triggers
from aws_cdk import aws_iam as iam
from aws_cdk import aws_secretsmanager as sm
from constructs import Construct

from infra.constructs.database import MASTER_USER, Database
from infra.constructs.functions import BillowFunctions
from infra.constructs.streaming import Streaming

TIMEOUT = Duration.minutes(10)  # the function's and the trigger's: an index build on a big table takes a while
PARTITIONS = 4  # must agree with billow.bus.PARTITIONS (the CDK app does not import the code asset; a test checks)
TOPIC_RETENTION_MS = 7 * 24 * 3600 * 1000  # replays (a new consumer group, a rebuilt usage store) reach back this far


class Migrations(Construct):
    def __init__(self, scope: Construct, cid: str, *, fns: BillowFunctions, database: Database,
                 streaming: Streaming, topic: str, retain: bool = False) -> None:
        """Make this after every other function of `fns`: the trigger runs before them all."""
        super().__init__(scope, cid)
        self.fn = fn = fns.function("migrate", timeout=TIMEOUT, usage=True, extra_env={
            "BILLOW_DB_ADMIN_USER": MASTER_USER, "BILLOW_KAFKA_AUTH": "iam",
            "BILLOW_KAFKA_BOOTSTRAP": streaming.bootstrap_brokers, "BILLOW_KAFKA_PARTITIONS": str(PARTITIONS),
            "BILLOW_KAFKA_RETENTION_MS": str(TOPIC_RETENTION_MS)})
        database.grant_master_login(fn, MASTER_USER)  # makes the app role (ensure_app_role), once
        fn.add_to_role_policy(iam.PolicyStatement(
            sid="KafkaConnect", actions=["kafka-cluster:Connect", "kafka-cluster:DescribeCluster"],
            resources=[streaming.cluster_arn]))
        fn.add_to_role_policy(iam.PolicyStatement(
            sid="KafkaTopic", actions=["kafka-cluster:CreateTopic", "kafka-cluster:DescribeTopic",
                                       "kafka-cluster:AlterTopic", "kafka-cluster:DescribeTopicDynamicConfiguration",
                                       "kafka-cluster:AlterTopicDynamicConfiguration"],
            resources=[streaming.topic_arn(topic)]))
        self.admin_key = sm.Secret(  # no fixed name: a deleted secret's name stays taken for 7-30 days
            self, "AdminKey", description="Billow: the first admin API key, minted by the migrate function at deploy",
            generate_secret_string=sm.SecretStringGenerator(  # "password": generated, unused (no literal in the template)
                secret_string_template='{"token": "", "keyId": "", "namespace": ""}', generate_string_key="password",
                exclude_punctuation=True, password_length=32),
            removal_policy=RemovalPolicy.RETAIN if retain else RemovalPolicy.DESTROY)
        fn.add_environment("BILLOW_ADMIN_KEY_SECRET_ARN", self.admin_key.secret_arn)
        self.admin_key.grant_read(fn)
        self.admin_key.grant_write(fn)
        self.trigger = triggers.Trigger(
            self, "Run", handler=fn, timeout=TIMEOUT, invocation_type=triggers.InvocationType.REQUEST_RESPONSE,
            execute_on_handler_change=True, execute_after=[database],
            execute_before=[other for other in fns.functions.values() if other is not fn])
