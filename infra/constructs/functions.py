"""Lambda functions: one per handler, each with its own role and log group, on shared assets from layers/build.py:
the code, the core dependencies layer (every function) and the billing layer (stripe, fpdf2 and what only they pull
in; only the handlers in layers.build.BILLING_FUNCTIONS, which import them).

What every function gets here, so the capability constructs (api.py, ingest.py, usage_sink.py, schedules.py,
migrations.py) add only what is theirs: the settings every handler reads (billow.bootstrap.Settings.from_env;
secrets by ARN only), login to the meta store (RDS Proxy or Aurora) as the app role (every handler's container opens
it and checks its schema revision), an error-rate and a throttles alarm, and, only with `usage=True`, the ClickHouse
secret (the usage store opens on first use, so ingest, the authorizer and the Stripe webhook never need it)."""

from __future__ import annotations

from pathlib import Path

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from infra.constructs.database import APP_USER, DATABASE, Database
from infra.constructs.network import Network
from infra.constructs.observability import Alarms
from infra.constructs.usage_store import UsageStore
from layers.build import BILLING_FUNCTIONS, BILLING_LAYER
from layers.rds_ca import LAMBDA_PATH as RDS_CA_LAMBDA_PATH

RUNTIME = lambda_.Runtime.PYTHON_3_12  # = layers.build.PYTHON; the wheels and .pyc files are cp312
DEFAULT_TIMEOUT = Duration.seconds(29)  # API Gateway's integration timeout
ARCHITECTURES = {"arm64": lambda_.Architecture.ARM_64, "x86_64": lambda_.Architecture.X86_64}
# Reserved concurrency (prod): each of these can take no more than this from the account (1,000 by default, 100
# of which stay unreserved), and is always guaranteed it: a traffic burst on ingest cannot starve the API or the
# authorizer, nor open more connections than RDS Proxy pools. Non-prod stages reserve nothing (a new account's
# limit can be as low as 10, and a reservation above what is free fails the deploy).
RESERVED_CONCURRENCY = {"ingest": 200, "api": 100, "authorizer": 50}


def construct_id(name: str) -> str:
    """A handler name as a construct id: usage_sink -> UsageSink."""
    return "".join(part.capitalize() for part in name.split("_"))


class BillowFunctions(Construct):
    def __init__(self, scope: Construct, cid: str, *, deps_dir: Path, code_dir: Path, arch: str, network: Network,
                 database: Database, usage_store: UsageStore, alarms: Alarms, namespace: str, stage: str,
                 retain_logs: bool, bounded: bool = False) -> None:
        super().__init__(scope, cid)
        if not all(d.is_dir() for d in (deps_dir / "python", deps_dir / BILLING_LAYER / "python", code_dir / "functions")):
            raise FileNotFoundError(f"Lambda assets missing under {deps_dir} / {code_dir}: "
                                    "run `.venv/bin/python -m layers.build` first")
        self.architecture = ARCHITECTURES[arch]
        self.vpc, self.subnets, self.security_group = network.vpc, network.app_subnets, network.functions_sg
        self.database, self.usage_store, self.alarms = database, usage_store, alarms
        self.environment = {  # what every function reads (billow.bootstrap.Settings.from_env): secrets by ARN only
            "BILLOW_NAMESPACE": namespace,
            "BILLOW_USAGE_STORE": "clickhouse",
            "BILLOW_DB_HOST": database.endpoint,  # IAM auth as the app role, proxy or not (constructs/database.py)
            "BILLOW_DB_USER": APP_USER, "BILLOW_DB_NAME": DATABASE,
            "BILLOW_DB_CA_BUNDLE": RDS_CA_LAMBDA_PATH,  # TLS verified against the RDS roots in the code asset
            "POWERTOOLS_METRICS_NAMESPACE": "Billow",
            "POWERTOOLS_LOG_LEVEL": "INFO",
            "BILLOW_AUTH": "keys",  # every request's namespace comes from its API key
        }
        self.stage = stage
        self.bounded = bounded  # apply RESERVED_CONCURRENCY
        self.logs_removal = RemovalPolicy.RETAIN if retain_logs else RemovalPolicy.DESTROY
        self.deps = lambda_.LayerVersion(
            self, "Deps",  # the exclusions are layers/build.py's stamp files, not layer content
            code=lambda_.Code.from_asset(str(deps_dir), exclude=[".key", ".sizes.json", BILLING_LAYER]),
            compatible_runtimes=[RUNTIME], compatible_architectures=[self.architecture],
            description="Billow third-party dependencies from uv.lock (manylinux wheels; no chdb, no boto3)")
        self.billing_deps = lambda_.LayerVersion(
            self, "BillingDeps",
            code=lambda_.Code.from_asset(str(deps_dir / BILLING_LAYER), exclude=[".sizes.json"]),
            compatible_runtimes=[RUNTIME], compatible_architectures=[self.architecture],
            description="Billow billing-only dependencies from uv.lock (stripe, fpdf2 and what only they need)")
        self.code = lambda_.Code.from_asset(str(code_dir))
        self.functions: dict[str, lambda_.Function] = {}

    def function(self, name: str, *, memory: int = 512, timeout: Duration = DEFAULT_TIMEOUT, usage: bool = False,
                 extra_env: dict[str, str] | None = None) -> lambda_.Function:
        """`name` is the handler package under functions/ (api, ingest, usage_sink, billing_run, ...); `usage`: it
        reads or writes the usage store."""
        cid = construct_id(name)
        log_group = logs.LogGroup(self, f"{cid}Logs", retention=logs.RetentionDays.ONE_MONTH,
                                  removal_policy=self.logs_removal)
        role = iam.Role(self, f"{cid}Role", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
                        description=f"Billow {name} function (least privilege, one role per function)",
                        managed_policies=[iam.ManagedPolicy.from_aws_managed_policy_name(
                            "service-role/AWSLambdaVPCAccessExecutionRole")])
        fn = lambda_.Function(
            self, cid, function_name=f"billow-{self.stage}-{name.replace('_', '-')}",
            runtime=RUNTIME, architecture=self.architecture, handler=f"functions.{name}.handler.lambda_handler",
            code=self.code, layers=[self.deps, self.billing_deps] if name in BILLING_FUNCTIONS else [self.deps],
            role=role, memory_size=memory, timeout=timeout,
            log_group=log_group, vpc=self.vpc, vpc_subnets=self.subnets, security_groups=[self.security_group],
            tracing=lambda_.Tracing.ACTIVE,
            reserved_concurrent_executions=RESERVED_CONCURRENCY.get(name) if self.bounded else None,
            environment={**self.environment, "POWERTOOLS_SERVICE_NAME": name, **(extra_env or {})})
        if usage:
            fn.add_environment("BILLOW_CLICKHOUSE_SECRET_ARN", self.usage_store.secret.secret_arn)
            self.usage_store.secret.grant_read(fn)
        self.database.grant_connect(fn)
        self.alarms.function_errors(name.replace("_", "-"), fn)
        self.alarms.function_throttles(name.replace("_", "-"), fn)
        self.functions[name] = fn
        return fn
