"""CDK app entry point (`cdk.json` runs `.venv/bin/python -m infra.app` from the repo root).

Stage, namespace, architecture, account and region come from context (`-c stage=prod -c namespace=acme
-c account=123456789012 -c region=eu-west-1 -c arch=arm64`) or from CDK_DEFAULT_ACCOUNT/REGION, which the
cdk CLI sets from the active credentials; nothing is hard-coded. Without an account and region the stack is
environment-agnostic (fine for `cdk synth`; `cdk deploy` resolves them from the credentials). `-c msk=serverless`
or `-c msk=provisioned` picks the Kafka cluster (default: Serverless in prod, 2 x kafka.t3.small elsewhere);
`-c db_proxy=true|false` RDS Proxy in front of Aurora (default: prod only).

The Lambda assets are built first (layers/build.py, cached by lockfile hash, no Docker)."""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from aws_cdk import App, Aspects, Environment, Tags
from cdk_nag import AwsSolutionsChecks

from infra.nag import apply_suppressions
from infra.stack import BillowStack

_NAME = re.compile(r"^[a-z][a-z0-9-]{0,19}$")
_NAMESPACE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")  # the same rule as billow.bootstrap.Settings


@dataclass(frozen=True)
class Config:
    stage: str
    namespace: str
    arch: str
    account: str | None
    region: str | None
    msk: str = "serverless"  # serverless (prod's default) or provisioned (every other stage's default)
    # RDS Proxy in front of Aurora (prod's default); without it (every other stage: its 8-ACU minimum is $87.60 a
    # month) the functions log in to the cluster endpoint, TLS verified against layers/rds-ca-bundle.pem
    db_proxy: bool = True

    @classmethod
    def from_app(cls, app: App) -> Config:
        def ctx(key: str, default: str | None = None) -> str | None:
            value = app.node.try_get_context(key)
            return str(value) if value not in (None, "") else default

        cfg = cls(stage=ctx("stage", "dev") or "dev", namespace=ctx("namespace", "default") or "default",
                  arch=ctx("arch", "arm64") or "arm64",
                  account=ctx("account", os.environ.get("CDK_DEFAULT_ACCOUNT")),
                  region=ctx("region", os.environ.get("CDK_DEFAULT_REGION")))
        stage_msk = "serverless" if cfg.stage == "prod" else "provisioned"  # issue 18 item 9: dev idles cheaply
        proxy = ctx("db_proxy", "true" if cfg.stage == "prod" else "false")
        cfg = cls(**{**cfg.__dict__, "msk": ctx("msk", stage_msk) or stage_msk, "db_proxy": proxy == "true"})
        if proxy not in ("true", "false"):
            raise ValueError(f"invalid context: db_proxy {proxy!r} must be true or false")
        if errors := cfg.errors():
            raise ValueError("invalid context: " + "; ".join(errors))
        return cfg

    def errors(self) -> list[str]:
        errors = []
        if not _NAME.match(self.stage):
            errors.append(f"stage {self.stage!r} must match {_NAME.pattern}")
        if not _NAMESPACE.match(self.namespace):
            errors.append(f"namespace {self.namespace!r} must match {_NAMESPACE.pattern}")
        if self.arch not in ("arm64", "x86_64"):
            errors.append(f"arch {self.arch!r} must be arm64 or x86_64")
        if self.msk not in ("serverless", "provisioned"):
            errors.append(f"msk {self.msk!r} must be serverless or provisioned")
        if not self.db_proxy and self.region and "${" not in self.region:
            from layers.rds_ca import covered_regions

            if self.region not in covered_regions():
                errors.append(f"region {self.region!r}: the shipped RDS CA bundle (layers/rds_ca.py) has no Aurora "
                              "root for it, so a direct database login could not verify TLS; add the region's roots "
                              "to the bundle or deploy with -c db_proxy=true")
        return errors


def build_app(app: App | None = None, *, assets: tuple[Path, Path] | None = None,
              functions_root: Path | None = None, require_account: bool = False) -> tuple[App, BillowStack]:
    """Compose the app. `assets` = (dependencies layer dir, code dir); built by layers/build.py if omitted.
    `functions_root` is where job handlers are looked for (default: the repo's functions/). `require_account`
    (what `cdk synth`/`deploy` get, through main()): stage=prod only with an explicit `-c account=...`, so a
    production stack never lands in whichever account the shell's credentials happen to point at."""
    app = app or App()
    cfg = Config.from_app(app)
    if require_account and cfg.stage == "prod" and not app.node.try_get_context("account"):
        raise ValueError("stage=prod needs an explicit account: -c account=<12-digit AWS account id> (the "
                         "credentials' default account is not used for prod)")
    if assets is None:
        from layers.build import build

        deps, code, _ = build(cfg.arch)
        assets = (deps, code)
    env = Environment(account=cfg.account, region=cfg.region) if cfg.account or cfg.region else None
    stack = BillowStack(app, f"Billow-{cfg.stage}", stage=cfg.stage, namespace=cfg.namespace, arch=cfg.arch,
                        deps_dir=assets[0], code_dir=assets[1], functions_root=functions_root, env=env,
                        msk_serverless=cfg.msk == "serverless", db_proxy=cfg.db_proxy,
                        termination_protection=cfg.stage == "prod",
                        description=f"Billow usage metering and billing ({cfg.stage})")
    # RDS Proxy target groups take no tags (CloudFormation rejects them).
    for key, value in (("app", "billow"), ("stage", cfg.stage)):
        Tags.of(stack).add(key, value, exclude_resource_types=["AWS::RDS::DBProxyTargetGroup"])
    apply_suppressions(stack)
    Aspects.of(app).add(AwsSolutionsChecks(verbose=True))
    return app, stack


def main() -> None:
    """`cdk synth/deploy` (which sets CDK_OUTDIR) and `make synth` (which does not: the assembly goes to ./cdk.out,
    not a temporary directory) both run this; the template's path goes to stderr."""
    app = App(outdir=os.path.abspath(os.environ.get("CDK_OUTDIR") or "cdk.out"))  # jsii runs elsewhere
    _, stack = build_app(app, require_account=True)
    out = Path(app.synth().directory) / stack.template_file
    print(f"template: {os.path.relpath(out)}", file=sys.stderr)


if __name__ == "__main__":
    main()
