"""Issue 18's Fix list items that were asserted only on the stage=test template (or not at all), on the prod template:
the migrations trigger (item 5), the billing layer only where it is imported (item 8), the two schedules and nothing
left of the entitlement_reset job (item 10), TLS to the database verified against the shipped RDS CA bundle and forced
by the cluster (item 3), and the aws-cdk-lib lower bound the docs state (item 10)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests.infra.support import HANDLERS, Synth, as_list, dumps, refs, synthesize

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def prod(tmp_path_factory: pytest.TempPathFactory, lambda_assets: Any) -> Synth:
    return synthesize(tmp_path_factory.mktemp("cdk.out"), {"stage": "prod", "namespace": "acme",
                                                           "account": "123456789012"}, lambda_assets)


def test_prod_migrates_once_per_deploy_before_every_other_function(prod: Synth) -> None:
    fn_id, fn = prod.function("migrate")
    (trigger_id, trigger), = prod.of_type("Custom::Trigger").items()
    (version,) = refs(trigger["Properties"]["HandlerArn"])
    assert prod.resources[version]["Type"] == "AWS::Lambda::Version"
    assert prod.resources[version]["Properties"]["FunctionName"] == {"Ref": fn_id}
    assert trigger["Properties"]["ExecuteOnHandlerChange"] is True
    assert trigger["Properties"]["InvocationType"] == "RequestResponse"  # a failed migration fails the deploy
    after = set(as_list(trigger.get("DependsOn", [])))
    database = prod.stack.database
    writer = database.cluster.node.find_child("Writer").node.default_child
    assert {prod.logical_id(database.cluster), prod.logical_id(writer), prod.logical_id(database.proxy)} <= after
    for name in set(HANDLERS) - {"migrate"}:
        assert trigger_id in as_list(prod.function(name)[1].get("DependsOn", [])), name


def test_prod_attaches_the_billing_layer_only_to_the_functions_that_import_it(prod: Synth) -> None:
    from layers.build import BILLING_FUNCTIONS

    core = prod.logical_id(prod.stack.fns.deps)
    billing = prod.logical_id(prod.stack.fns.billing_deps)
    for name in HANDLERS:
        layers = [ref["Ref"] for ref in prod.function(name)[1]["Properties"]["Layers"]]
        assert layers == ([core, billing] if name in BILLING_FUNCTIONS else [core]), name


def test_prod_schedules_exactly_the_two_jobs_and_no_entitlement_reset(prod: Synth) -> None:
    schedules = prod.of_type("AWS::Scheduler::Schedule").values()
    jobs = {s["Properties"]["Name"] for s in schedules}
    assert jobs == {"billow-prod-billing-run", "billow-prod-notify-dispatch"}, jobs
    text = dumps(prod.template.to_json()).lower()
    assert "entitlement_reset" not in text and "entitlement-reset" not in text  # no schedule, queue or function
    assert {q["Properties"]["QueueName"] for q in prod.of_type("AWS::SQS::Queue").values()
            if "jobs" in q["Properties"].get("QueueName", "")} == {
        "billow-prod-jobs-billing-run", "billow-prod-jobs-notify-dispatch", "billow-prod-jobs-dlq"}


def test_prod_database_tls_is_forced_and_verified_against_the_shipped_bundle(prod: Synth) -> None:
    from layers.rds_ca import LAMBDA_PATH

    (group,) = prod.of_type("AWS::RDS::DBClusterParameterGroup").values()
    assert group["Properties"]["Parameters"]["rds.force_ssl"] == "1"
    (proxy,) = prod.of_type("AWS::RDS::DBProxy").values()
    assert proxy["Properties"]["RequireTLS"] is True
    for name in HANDLERS:
        env = prod.function(name)[1]["Properties"]["Environment"]["Variables"]
        assert env["BILLOW_DB_CA_BUNDLE"] == LAMBDA_PATH, name


def test_the_aws_cdk_lib_lower_bound_is_the_one_the_docs_state() -> None:
    """docs/deploy.md says which release added the newest CDK API the stack uses (rds.DefaultAuthScheme, 2.235.0);
    pyproject.toml's infra group must not allow an older one, and the installed aws-cdk-lib has that API."""
    from aws_cdk import aws_lambda_event_sources, aws_rds

    infra = tomllib.loads((REPO / "pyproject.toml").read_text())["dependency-groups"]["infra"]
    (spec,) = [d for d in infra if d.startswith("aws-cdk-lib")]
    found = re.search(r">=\s*(\d+)\.(\d+)", spec)
    assert found and (int(found.group(1)), int(found.group(2))) >= (2, 235), spec
    assert "**aws-cdk-lib 2.235.0 or later**" in (REPO / "docs" / "deploy.md").read_text()
    assert hasattr(aws_rds, "DefaultAuthScheme") and hasattr(aws_lambda_event_sources, "ProvisionedPollerConfig")
