"""CDK app: `npx aws-cdk@2 deploy -c stage=dev` (cdk.json runs this). Stage, namespace, account and region
come from context or the CDK_DEFAULT_* environment, never from code. The Lambda assets are built from
the lockfile first (layers/build.py, no Docker)."""

from __future__ import annotations

import os
from pathlib import Path

from aws_cdk import App, Aspects, Environment, Tags
from cdk_nag import AwsSolutionsChecks

from infra.nag import suppress
from infra.stack import BillowStack


def build_app(app: App | None = None, assets: Path | None = None) -> tuple[App, BillowStack]:
    app = app or App()
    stage = str(app.node.try_get_context("stage") or "dev")
    namespace = str(app.node.try_get_context("namespace") or "default")
    account = app.node.try_get_context("account") or os.environ.get("CDK_DEFAULT_ACCOUNT")
    region = app.node.try_get_context("region") or os.environ.get("CDK_DEFAULT_REGION")
    if assets is None:
        from layers.build import OUT, build

        build(str(app.node.try_get_context("arch") or "arm64"))
        assets = OUT
    stack = BillowStack(app, f"Billow-{stage}", stage=stage, namespace=namespace, assets=assets,
                        env=Environment(account=account, region=region) if account or region else None)
    for key, value in (("app", "billow"), ("stage", stage)):  # proxy target groups take no tags
        Tags.of(stack).add(key, value, exclude_resource_types=["AWS::RDS::DBProxyTargetGroup"])
    suppress(stack)
    Aspects.of(app).add(AwsSolutionsChecks(verbose=True))
    return app, stack


if __name__ == "__main__":
    build_app()[0].synth()
