"""The Billow stack: one stack composed of one construct per capability.

  network        VPC, NAT, SQS endpoint, the functions' security group      constructs/network.py
  streaming      MSK (IAM; Serverless, or 2 brokers off prod) + brokers     constructs/streaming.py
  database       Aurora Serverless v2 PostgreSQL + RDS Proxy + secret       constructs/database.py
  usage_store    ClickHouse secret (filled by the operator)                 constructs/usage_store.py
  billing        invoice documents bucket, Stripe secret (operator fills)   constructs/billing.py
  functions      api, ingest, usage_sink, authorizer, stripe_webhook        constructs/functions.py
                 (+ a job handler per schedule: billing_run, notify_dispatch)
  api            HTTP API routes -> functions                               constructs/api.py
  schedules      EventBridge Scheduler -> per-job SQS queues                constructs/schedules.py
  notifications  notify_dispatch's wake-up queue, SES sender identity       constructs/notifications.py
  migrations     functions/migrate, a CDK trigger runs it once per deploy    constructs/migrations.py
  alarms         error rates, throttles, API, jobs, Aurora, DLQs, lag -> SNS constructs/observability.py

Every function gets exactly the grants its handler needs; see the comments at each grant."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aws_cdk import CfnOutput, Duration, RemovalPolicy, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as sources
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from infra.constructs.api import HttpApi
from infra.constructs.billing import Billing
from infra.constructs.database import APP_USER, DATABASE, MASTER_USER, Database
from infra.constructs.functions import BillowFunctions
from infra.constructs.migrations import TIMEOUT as MIGRATE_TIMEOUT
from infra.constructs.migrations import Migrations
from infra.constructs.network import Network
from infra.constructs.notifications import EMAIL_FROM, Notifications
from infra.constructs.observability import Alarms
from infra.constructs.schedules import JOB_TIMEOUT, JOBS, Schedules
from infra.constructs.streaming import Streaming, topic_for
from infra.constructs.usage_store import UsageStore

PARTITIONS = 4  # must agree with billow.bus.PARTITIONS (the CDK app does not import the code asset; a test checks)

REPO = Path(__file__).resolve().parent.parent
SINK_GROUP = "billow-usage-sink"  # the MSK trigger's consumer group
SINK_BATCH_SIZE = 1000
TOPIC_RETENTION_MS = 7 * 24 * 3600 * 1000  # replays (a new consumer group, a rebuilt usage store) reach back this far
SINK_RETRIES = -1  # without limit: a usage-store outage blocks the partition until the store is back


class BillowStack(Stack):
    def __init__(self, scope: Construct, cid: str, *, stage: str, namespace: str, arch: str, deps_dir: Path,
                 code_dir: Path, functions_root: Path | None = None, msk_serverless: bool | None = None,
                 **kwargs: Any) -> None:
        super().__init__(scope, cid, **kwargs)
        self.stage, self.namespace = stage, namespace
        self.retain_data = prod = stage == "prod"
        prefix = f"billow-{stage}"
        self.topic = topic_for(namespace)

        self.network = Network(self, "Network", nat_gateways=2 if prod else 1)
        vpc, app_subnets = self.network.vpc, self.network.app_subnets
        # MSK Serverless idles at ~$552 a month; off prod two kafka.t3.small brokers do (issue 18 item 9, infra/costs.py)
        self.streaming = Streaming(self, "Streaming", vpc=vpc, subnets=app_subnets,
                                   clients=self.network.functions_sg, name=prefix,
                                   serverless=prod if msk_serverless is None else msk_serverless)
        self.database = Database(self, "Database", vpc=vpc, clients=self.network.functions_sg,
                                 app_subnets=app_subnets, data_subnets=self.network.data_subnets,
                                 min_acu=1 if prod else 0.5, max_acu=32 if prod else 8, retain=prod,
                                 name=prefix)
        self.usage_store = UsageStore(self, "UsageStore", retain=prod)
        self.billing = Billing(self, "Billing", retain=prod)

        # Records the sink cannot read (it sends them itself). A batch the sink cannot store is never set
        # aside: the MSK trigger retries it until the store is back (see the trigger below).
        self.dead_letters = sqs.Queue(self, "DeadLetters", queue_name=f"{prefix}-dead-letters",
                                      encryption=sqs.QueueEncryption.SQS_MANAGED, enforce_ssl=True,
                                      retention_period=Duration.days(14))

        # What every function reads (billow.bootstrap.Settings.from_env): secrets by ARN only.
        common_env = {
            "BILLOW_NAMESPACE": namespace,
            "BILLOW_USAGE_STORE": "clickhouse",
            "BILLOW_DB_HOST": self.database.proxy.endpoint,  # IAM auth as the app role (constructs/database.py)
            "BILLOW_DB_USER": APP_USER, "BILLOW_DB_NAME": DATABASE,
            "POWERTOOLS_METRICS_NAMESPACE": "Billow",
            "POWERTOOLS_LOG_LEVEL": "INFO",
            "BILLOW_AUTH": "keys",  # every request's namespace comes from its API key
        }
        self.fns = BillowFunctions(self, "Functions", deps_dir=deps_dir, code_dir=code_dir, arch=arch, vpc=vpc,
                                   subnets=app_subnets, security_group=self.network.functions_sg,
                                   environment=common_env, stage=stage, retain_logs=prod,
                                   bounded=prod)
        # Only the functions that read or write usage get the ClickHouse secret (the usage store opens on first
        # use, so ingest, the authorizer and the Stripe webhook never need it).
        clickhouse_env = {"BILLOW_CLICKHOUSE_SECRET_ARN": self.usage_store.secret.secret_arn}
        self.api_fn = self.fns.function("api", extra_env=clickhouse_env)
        self.ingest_fn = self.fns.function("ingest", extra_env={
            "BILLOW_BUS": "kafka", "BILLOW_KAFKA_AUTH": "iam",
            "BILLOW_KAFKA_BOOTSTRAP": self.streaming.bootstrap_brokers})
        self.sink_fn = self.fns.function("usage_sink", memory=1024, timeout=Duration.minutes(2),
                                         extra_env={"BILLOW_DLQ_URL": self.dead_letters.queue_url, **clickhouse_env})
        self.auth_fn = self.fns.function("authorizer", memory=512, timeout=Duration.seconds(10))  # CPU for a 10 s budget
        self.stripe_fn = self.fns.function("stripe_webhook")  # invoices' payment status, from Stripe

        # Secrets: every handler's container opens the meta store (and checks its schema revision), so every
        # function reads the DB secret; the usage store's only where it is used (the Stripe secret: below).
        for fn in (self.api_fn, self.sink_fn):
            self._read_stores(fn)
        for fn in (self.ingest_fn, self.auth_fn, self.stripe_fn):
            self.database.grant_connect(fn)
        # ingest produces to its namespace topic (idempotent producer; creates the topic on first use).
        self.ingest_fn.add_to_role_policy(iam.PolicyStatement(
            sid="KafkaConnect", actions=["kafka-cluster:Connect", "kafka-cluster:DescribeCluster",
                                         "kafka-cluster:WriteDataIdempotently"],
            resources=[self.streaming.cluster_arn]))
        self.ingest_fn.add_to_role_policy(iam.PolicyStatement(
            sid="KafkaProduce", actions=["kafka-cluster:CreateTopic", "kafka-cluster:DescribeTopic",
                                         "kafka-cluster:WriteData"],
            resources=[self.streaming.topic_arn(self.topic)]))
        # usage_sink: the MSK trigger polls with the function's role (read topic, commit group offsets).
        self.sink_fn.add_to_role_policy(iam.PolicyStatement(
            sid="KafkaCluster", actions=["kafka:DescribeClusterV2", "kafka-cluster:Connect",
                                         "kafka-cluster:DescribeClusterDynamicConfiguration"],
            resources=[self.streaming.cluster_arn]))
        self.sink_fn.add_to_role_policy(iam.PolicyStatement(
            sid="KafkaConsume", actions=["kafka-cluster:DescribeTopic", "kafka-cluster:ReadData"],
            resources=[self.streaming.topic_arn(self.topic)]))
        self.sink_fn.add_to_role_policy(iam.PolicyStatement(
            sid="KafkaGroup", actions=["kafka-cluster:AlterGroup", "kafka-cluster:DescribeGroup"],
            resources=[self.streaming.group_arn(SINK_GROUP)]))
        self.dead_letters.grant_send_messages(self.sink_fn)

        # MSK -> usage sink. The sink fails a batch only when a store is down (bad records never fail it: it
        # dead-letters them itself), and then the batch must wait, not be dropped (issue 15). What Lambda's
        # Kafka event source mapping supports (docs/deploy.md, "MSK trigger"): retry controls only in
        # provisioned mode; MaximumRetryAttempts -1 retries without limit, but with an on-failure destination
        # Lambda caps it at 10 (and an SQS/SNS destination keeps only the batch's coordinates while the
        # offsets move on); MaximumRecordAge defaults to -1 (never discard). So: -1, no destination, no
        # record age, no split (halving cannot help an outage). The partition stays blocked until the store
        # is back, nothing is committed past the failing batch, and Alarms.sink_blocked pages meanwhile.
        # ReportBatchItemFailures stays off: the sink returns counts, not batchItemFailures.
        # Off prod the trigger runs in on-demand mode (no provisioned pollers, which bill per hour even at idle;
        # issue 18 item 9): there the retry controls do not exist and Lambda retries a failing batch until it
        # succeeds or its records leave the topic, the same unlimited retries with no destination.
        provisioned = sources.ProvisionedPollerConfig(minimum_pollers=1, maximum_pollers=4) if prod else None
        self.sink_source = sources.ManagedKafkaEventSource(
            cluster_arn=self.streaming.cluster_arn, topic=self.topic, consumer_group_id=SINK_GROUP,
            batch_size=SINK_BATCH_SIZE, max_batching_window=Duration.seconds(1),
            starting_position=lambda_.StartingPosition.TRIM_HORIZON,
            retry_attempts=SINK_RETRIES if provisioned else None, bisect_batch_on_error=False if provisioned else None,
            provisioned_poller_config=provisioned)
        self.sink_fn.add_event_source(self.sink_source)

        self.http = HttpApi(self, "Api", name=prefix, functions={"api": self.api_fn, "ingest": self.ingest_fn,
                                                                "stripe_webhook": self.stripe_fn},
                            authorizer=self.auth_fn, rate_limit=2000, burst_limit=4000, retain_logs=prod)

        self.schedules = Schedules(self, "Schedules", stage=stage, namespace=namespace)
        if prod:  # besides the database (snapshot), bucket and secrets: what holds events or set-aside work
            for kept in (self.streaming.cluster, self.database.secret, self.dead_letters, self.schedules.dead_letters,
                         *([self.streaming.broker_logs] if self.streaming.broker_logs else [])):
                kept.apply_removal_policy(RemovalPolicy.RETAIN)
        root = functions_root or REPO / "functions"
        self.job_fns: dict[str, lambda_.Function] = {}
        for job in JOBS:  # every schedule's queue is consumed by its job's handler
            if not (root / job / "handler.py").is_file():
                raise FileNotFoundError(f"schedule {job} has no handler: {root / job / 'handler.py'}")
            fn = self.fns.function(job, timeout=JOB_TIMEOUT, extra_env=clickhouse_env)
            self._read_stores(fn)
            self.schedules.subscribe(job, fn)
            self.job_fns[job] = fn
        # The functions that create and advance invoices: they render invoice documents (and presign their URLs),
        # call Stripe (advance, approve, void) and emit invoice notifications. The Stripe webhook only records
        # payment status, through Stripe's secret (constructs/billing.py).
        invoice_fns = [self.api_fn, *(self.job_fns[j] for j in ("billing_run",) if j in self.job_fns)]
        for fn in invoice_fns:
            self.billing.grant_documents(fn)
        for fn in (*invoice_fns, self.stripe_fn):
            self.billing.grant_stripe(fn)
        # notify_dispatch's wake-up queue, and who may wake it (constructs/notifications.py).
        self.notifications: Notifications | None = None
        if "notify_dispatch" in self.job_fns:
            self.notifications = Notifications(
                self, "Notifications", stage=stage, dead_letters=self.schedules.dead_letters,
                email_from=str(self.node.try_get_context("notify_email_from") or EMAIL_FROM))
            self.notifications.wire(self.job_fns["notify_dispatch"], writers=invoice_fns)

        # Schema migrations once per deploy: after the database, before every other function.
        # It also makes the namespace topic (explicit partitions and retention, not the first ingest's defaults).
        self.migrate_fn = self.fns.function("migrate", timeout=MIGRATE_TIMEOUT, extra_env={
            **clickhouse_env, "BILLOW_DB_ADMIN_USER": MASTER_USER, "BILLOW_KAFKA_AUTH": "iam",
            "BILLOW_KAFKA_BOOTSTRAP": self.streaming.bootstrap_brokers, "BILLOW_KAFKA_PARTITIONS": str(PARTITIONS),
            "BILLOW_KAFKA_RETENTION_MS": str(TOPIC_RETENTION_MS)})
        self._read_stores(self.migrate_fn)
        self.database.grant_connect(self.migrate_fn, MASTER_USER)  # makes the app role (ensure_app_role), once
        self.migrate_fn.add_to_role_policy(iam.PolicyStatement(
            sid="KafkaConnect", actions=["kafka-cluster:Connect", "kafka-cluster:DescribeCluster"],
            resources=[self.streaming.cluster_arn]))
        self.migrate_fn.add_to_role_policy(iam.PolicyStatement(
            sid="KafkaTopic", actions=["kafka-cluster:CreateTopic", "kafka-cluster:DescribeTopic",
                                       "kafka-cluster:AlterTopic", "kafka-cluster:DescribeTopicDynamicConfiguration",
                                       "kafka-cluster:AlterTopicDynamicConfiguration"],
            resources=[self.streaming.topic_arn(self.topic)]))
        self.migrations = Migrations(self, "Migrations", fn=self.migrate_fn, after=[self.database],
                                     before=[f for n, f in self.fns.functions.items() if n != "migrate"], retain=prod)

        self.alarms = Alarms(self, "Alarms", stage=stage, retain=prod)
        for name, fn in self.fns.functions.items():
            self.alarms.function_errors(name.replace("_", "-"), fn)
            self.alarms.function_throttles(name.replace("_", "-"), fn)
        self.alarms.api(self.http.stage)
        for job in self.job_fns:
            self.alarms.job_queue_age(job, self.schedules.queues[job])
        self.alarms.database(self.database.cluster, self.database.proxy, max_acu=self.database.max_acu)
        for name, queue in (("dead-letters", self.dead_letters), ("jobs-dlq", self.schedules.dead_letters)):
            self.alarms.dead_letters(name, queue)
        self.alarms.consumer_lag(self.sink_fn, max_lag=100_000, minutes=5)
        self.alarms.sink_blocked(self.sink_fn, minutes=5)

        CfnOutput(self, "ApiUrl", value=self.http.url)
        CfnOutput(self, "ClickHouseSecretArn", value=self.usage_store.secret.secret_arn,
                  description="Fill this secret with your ClickHouse endpoint and credentials")
        CfnOutput(self, "StripeSecretArn", value=self.billing.stripe_secret.secret_arn,
                  description='Fill this secret with {"apiKey": "sk_...", "webhookSecret": "whsec_..."}')
        CfnOutput(self, "DocumentsBucketName", value=self.billing.documents.bucket_name,
                  description="Invoice documents (HTML, PDF) under invoices/<namespace>/")
        CfnOutput(self, "DatabaseProxyEndpoint", value=self.database.proxy.endpoint)
        CfnOutput(self, "AdminKeySecretArn", value=self.migrations.admin_key.secret_arn,
                  description="The first admin API key: aws secretsmanager get-secret-value --secret-id <this>")
        CfnOutput(self, "MskClusterArn", value=self.streaming.cluster_arn)
        CfnOutput(self, "DeadLetterQueueUrl", value=self.dead_letters.queue_url)
        for i, subnet in enumerate(self.network.vpc.public_subnets, 1):
            eip = subnet.node.try_find_child("EIP")
            if isinstance(eip, ec2.CfnEIP):  # ClickHouse Cloud's IP allow list needs these
                CfnOutput(self, f"NatPublicIp{i}", value=eip.attr_public_ip,
                          description="Egress IP of the functions (allow it at ClickHouse)")
        CfnOutput(self, "AlarmTopicArn", value=self.alarms.topic.topic_arn,
                  description="Subscribe an e-mail or pager endpoint to receive alarms")

    def _read_stores(self, fn: lambda_.Function) -> None:
        self.usage_store.secret.grant_read(fn)
        self.database.grant_connect(fn)
