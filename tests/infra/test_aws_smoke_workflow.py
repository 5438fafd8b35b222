""".github/workflows/aws-smoke.yml cannot run here; what it assumes about the stack is checked on the stage=ci template:
the stack's name, the outputs it reads, the API function it may invoke to mint a key, alarms that publish to the alarm
topic (one is forced), and that it always destroys what it deployed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.infra.support import Synth, synthesize

WORKFLOW = Path(__file__).resolve().parents[2] / ".github" / "workflows" / "aws-smoke.yml"


@pytest.fixture(scope="module")
def ci(tmp_path_factory: pytest.TempPathFactory, lambda_assets: Any) -> Synth:
    return synthesize(tmp_path_factory.mktemp("cdk.out"), {"stage": "ci", "namespace": "default"}, lambda_assets)


@pytest.fixture(scope="module")
def workflow() -> dict[str, Any]:
    return yaml.safe_load(WORKFLOW.read_text())


def run_of(workflow: dict[str, Any], name: str) -> dict[str, Any]:
    (step,) = [s for s in workflow["jobs"]["smoke"]["steps"] if s.get("name", "").startswith(name)]
    return step


def test_the_workflow_matches_the_ci_stack(ci: Synth, workflow: dict[str, Any]) -> None:
    env = workflow["env"]
    assert ci.stack.stack_name == env["STACK"] and env["STAGE"] == "ci" and ci.stack.namespace == env["NAMESPACE"]
    outputs = ci.template.to_json()["Outputs"]
    assert {"ApiUrl", "AlarmTopicArn"} <= set(outputs)  # what scripts/aws_smoke.py env reads
    assert ci.function("api")[1]["Properties"]["FunctionName"] == "billow-ci-api"  # admin-key --function
    assert '--function "billow-${STAGE}-api"' in run_of(workflow, "Admin API key")["run"]
    topic = ci.logical_id(ci.stack.alarms.topic)
    alarms = [a for a in ci.of_type("AWS::CloudWatch::Alarm").values()
              if {"Ref": topic} in a["Properties"].get("AlarmActions", [])]
    assert alarms  # describe-alarms --action-prefix <topic> finds one to force


def test_the_workflow_deploys_smokes_and_always_destroys(workflow: dict[str, Any]) -> None:
    assert workflow["permissions"] == {"id-token": "write", "contents": "read"}
    steps = workflow["jobs"]["smoke"]["steps"]
    names = [s.get("name", s.get("uses")) for s in steps]
    order = [next(i for i, n in enumerate(names) if n.startswith(p)) for p in (
        "Set up Billow", "AWS credentials", "Deploy stage=ci", "Read the stack outputs", "Admin API key",
        "Smoke tests", "A forced alarm", "Destroy stage=ci")]
    assert order == sorted(order)
    assert "make setup" in run_of(workflow, "Set up Billow")["run"]
    assert run_of(workflow, "AWS credentials")["with"]["role-to-assume"] == "${{ secrets.AWS_SMOKE_ROLE_ARN }}"
    assert "tests/smoke" in run_of(workflow, "Smoke tests")["run"]
    assert "set-alarm-state" in run_of(workflow, "A forced alarm")["run"]
    destroy = run_of(workflow, "Destroy stage=ci")
    assert destroy["if"] == "always()" and "destroy" in destroy["run"] and "--force" in destroy["run"]
    assert names[-1] == "Destroy stage=ci"
