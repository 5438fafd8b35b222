"""The Billow stack: one stack composed of one construct per capability, each making its own functions (through
the Functions factory, which gives every function the stores' settings and grants and its error alarms) and their
grants, triggers and alarms. Construct ids and scopes are those resources always had: a changed logical id would
replace the resource on deploy.

  alarms         one SNS topic; each capability adds its alarms            constructs/observability.py
  network        VPC, NAT, SQS endpoint, the functions' security group      constructs/network.py
  streaming      MSK (IAM; Serverless, or 2 brokers off prod) + brokers     constructs/streaming.py
  database       Aurora Serverless v2 PostgreSQL (+ RDS Proxy in prod) + secret constructs/database.py
  usage_store    ClickHouse secret (filled by the operator)                 constructs/usage_store.py
  fns            the function factory: env, stores' grants, error alarms    constructs/functions.py
  ingest         functions/ingest: produces to the namespace topic          constructs/ingest.py
  usage_sink     functions/usage_sink, its MSK trigger and dead letters     constructs/usage_sink.py
  http           HTTP API routes; functions/api, authorizer, stripe_webhook constructs/api.py
  schedules      EventBridge Scheduler -> per-job SQS queues -> job handlers constructs/schedules.py
                 (billing_run, notify_dispatch); the API's backtests -> billing_run's queue
  billing        invoice documents bucket, Stripe secret, who may use them  constructs/billing.py
  notifications  notify_dispatch's wake-up queue, SES sender identity       constructs/notifications.py
  migrations     functions/migrate, a CDK trigger runs it once per deploy    constructs/migrations.py

Every function gets exactly the grants its handler needs; see the comments at each grant."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aws_cdk import CfnOutput, Stack
from aws_cdk import aws_ec2 as ec2
from constructs import Construct

from infra.constructs.api import HttpApi
from infra.constructs.billing import Billing
from infra.constructs.database import Database
from infra.constructs.functions import BillowFunctions
from infra.constructs.ingest import Ingest
from infra.constructs.migrations import Migrations
from infra.constructs.network import Network
from infra.constructs.notifications import Notifications
from infra.constructs.observability import Alarms
from infra.constructs.schedules import Schedules
from infra.constructs.streaming import Streaming, topic_for
from infra.constructs.usage_sink import UsageSink
from infra.constructs.usage_store import UsageStore

REPO = Path(__file__).resolve().parent.parent


class BillowStack(Stack):
    def __init__(self, scope: Construct, cid: str, *, stage: str, namespace: str, arch: str, deps_dir: Path,
                 code_dir: Path, functions_root: Path | None = None, msk_serverless: bool | None = None,
                 db_proxy: bool | None = None, **kwargs: Any) -> None:
        super().__init__(scope, cid, **kwargs)
        self.stage, self.namespace = stage, namespace
        self.retain_data = prod = stage == "prod"  # keep what holds data or set-aside work; size up
        prefix = f"billow-{stage}"
        self.topic = topic_for(namespace)

        self.alarms = alarms = Alarms(self, "Alarms", stage=stage, retain=prod)
        self.network = net = Network(self, "Network", nat_gateways=2 if prod else 1)
        # MSK Serverless idles at ~$552 a month; off prod two kafka.t3.small brokers do (issue 18 item 9, infra/costs.py)
        self.streaming = Streaming(self, "Streaming", vpc=net.vpc, subnets=net.app_subnets, clients=net.functions_sg,
                                   name=prefix, serverless=prod if msk_serverless is None else msk_serverless,
                                   retain=prod)
        self.database = Database(self, "Database", vpc=net.vpc, clients=net.functions_sg, app_subnets=net.app_subnets,
                                 data_subnets=net.data_subnets, min_acu=1 if prod else 0.5, max_acu=32 if prod else 8,
                                 retain=prod, name=prefix, alarms=alarms, proxy=prod if db_proxy is None else db_proxy)
        self.usage_store = UsageStore(self, "UsageStore", retain=prod)
        self.fns = fns = BillowFunctions(self, "Functions", deps_dir=deps_dir, code_dir=code_dir, arch=arch, network=net,
                                         database=self.database, usage_store=self.usage_store, alarms=alarms,
                                         namespace=namespace, stage=stage, retain_logs=prod, bounded=prod)
        self.ingest = Ingest(self, "Ingest", fns=fns, streaming=self.streaming, topic=self.topic)
        self.usage_sink = UsageSink(self, "UsageSink", fns=fns, streaming=self.streaming, topic=self.topic,
                                    alarms=alarms, provisioned=prod, retain=prod)
        self.dead_letters = self.usage_sink.dead_letters
        self.http = HttpApi(self, "Api", name=prefix, fns=fns, ingest=self.ingest.fn, alarms=alarms,
                            rate_limit=2000, burst_limit=4000, retain_logs=prod)
        self.schedules = Schedules(self, "Schedules", stage=stage, namespace=namespace, fns=fns, alarms=alarms,
                                   functions_root=functions_root or REPO / "functions", retain=prod)
        self.job_fns = self.schedules.functions
        self.schedules.accept_jobs(self.http.api_fn)  # backtests run on billing_run's worker, not in a frozen thread
        self.billing = Billing(self, "Billing", retain=prod, api=self.http.api_fn, jobs=self.job_fns,
                               webhook=self.http.stripe_fn)
        dispatch = self.job_fns.get("notify_dispatch")  # its wake-up queue, and who may wake it
        self.notifications = Notifications(self, "Notifications", stage=stage, dead_letters=self.schedules.dead_letters,
                                           dispatch=dispatch, writers=self.billing.invoicing) if dispatch else None
        # Schema migrations once per deploy: after the database, before every other function (so: made last).
        self.migrations = Migrations(self, "Migrations", fns=fns, database=self.database, streaming=self.streaming,
                                     topic=self.topic, retain=prod)
        self._outputs()

    def _outputs(self) -> None:
        CfnOutput(self, "ApiUrl", value=self.http.url)
        CfnOutput(self, "ClickHouseSecretArn", value=self.usage_store.secret.secret_arn,
                  description="Fill this secret with your ClickHouse endpoint and credentials")
        CfnOutput(self, "StripeSecretArn", value=self.billing.stripe_secret.secret_arn,
                  description='Fill this secret with {"apiKey": "sk_...", "webhookSecret": "whsec_..."}')
        CfnOutput(self, "DocumentsBucketName", value=self.billing.documents.bucket_name,
                  description="Invoice documents (HTML, PDF) under invoices/<namespace>/")
        if self.database.proxy:
            CfnOutput(self, "DatabaseProxyEndpoint", value=self.database.proxy.endpoint)
        else:
            CfnOutput(self, "DatabaseEndpoint", value=self.database.endpoint)
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
