"""One Lambda function per handler, all on the same two assets: the dependencies layer and the code."""

from __future__ import annotations

from pathlib import Path

from aws_cdk import Duration
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

RUNTIME = lambda_.Runtime.PYTHON_3_13
ARCH = lambda_.Architecture.ARM_64


class BillowFunctions(Construct):
    """Shared assets (layers/build.py output) and a factory for the functions."""

    def __init__(self, scope: Construct, cid: str, *, assets: Path, vpc: ec2.IVpc, security_group: ec2.ISecurityGroup,
                 environment: dict[str, str]) -> None:
        super().__init__(scope, cid)
        self.assets = assets
        self.vpc = vpc
        self.security_group = security_group
        self.environment = environment
        self.deps = lambda_.LayerVersion(
            self, "Deps", code=lambda_.Code.from_asset(str(assets / "deps")),
            compatible_runtimes=[RUNTIME], compatible_architectures=[ARCH],
            description="Billow third-party dependencies from uv.lock (manylinux wheels, no chdb)")
        self.code = lambda_.Code.from_asset(str(assets / "code"))

    def function(self, cid: str, handler: str, *, memory: int = 512, timeout_s: int = 29,
                 extra_env: dict[str, str] | None = None) -> lambda_.Function:
        log_group = logs.LogGroup(self, f"{cid}Logs", retention=logs.RetentionDays.ONE_MONTH)
        return lambda_.Function(
            self, cid, runtime=RUNTIME, architecture=ARCH, handler=handler, code=self.code, layers=[self.deps],
            memory_size=memory, timeout=Duration.seconds(timeout_s), log_group=log_group,
            vpc=self.vpc, vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS),
            security_groups=[self.security_group], tracing=lambda_.Tracing.ACTIVE,
            environment={**self.environment, "POWERTOOLS_SERVICE_NAME": cid.lower(), **(extra_env or {})})
