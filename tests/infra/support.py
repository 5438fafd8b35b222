"""Helpers for the CDK template tests: synthesize the app once and look things up in the template."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")

# Every function the stack deploys, listed rather than found on disk: a schedule without a handler, a handler directory
# the stack leaves out or a function without a handler directory fails test_stack.py's
# test_the_stack_deploys_exactly_the_listed_handlers.
HANDLERS = {name: f"functions.{name}.handler.lambda_handler"
            for name in ("api", "ingest", "usage_sink", "authorizer", "stripe_webhook", "migrate")}
# One per EventBridge schedule (infra/constructs/schedules.JOBS), each consuming its job's queue.
JOB_HANDLERS = {name: f"functions.{name}.handler.lambda_handler" for name in ("billing_run", "notify_dispatch")}
HANDLERS.update(JOB_HANDLERS)


@dataclass
class Synth:
    app: Any
    stack: Any
    template: Any  # aws_cdk.assertions.Template
    resources: dict[str, Any]
    outdir: Path

    def of_type(self, kind: str) -> dict[str, Any]:
        return {k: v for k, v in self.resources.items() if v["Type"] == kind}

    def function(self, name: str) -> tuple[str, dict[str, Any]]:
        handler = f"functions.{name}.handler.lambda_handler"
        found = [(k, v) for k, v in self.of_type("AWS::Lambda::Function").items()
                 if v["Properties"].get("Handler") == handler]
        assert len(found) == 1, f"{len(found)} functions with handler {handler}"
        return found[0]

    def role_of(self, name: str) -> str:
        return str(self.function(name)[1]["Properties"]["Role"]["Fn::GetAtt"][0])

    def statements(self, role_id: str) -> list[dict[str, Any]]:
        return [s for p in self.of_type("AWS::IAM::Policy").values() if {"Ref": role_id} in p["Properties"]["Roles"]
                for s in p["Properties"]["PolicyDocument"]["Statement"]]

    def actions(self, role_id: str) -> set[str]:
        return {a for s in self.statements(role_id) for a in as_list(s["Action"])}

    def logical_id(self, construct: Any) -> str:
        from aws_cdk import CfnElement

        element = construct if isinstance(construct, CfnElement) else construct.node.default_child
        return str(self.stack.resolve(element.logical_id))


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def refs(value: Any) -> set[str]:
    """Every logical id a CloudFormation expression refers to (Ref / Fn::GetAtt), recursively."""
    found: set[str] = set()
    if isinstance(value, dict):
        if "Ref" in value and isinstance(value["Ref"], str):
            found.add(value["Ref"])
        if "Fn::GetAtt" in value:
            found.add(value["Fn::GetAtt"][0])
        for v in value.values():
            found |= refs(v)
    elif isinstance(value, list):
        for v in value:
            found |= refs(v)
    return found


def synthesize(tmp: Path, context: dict[str, Any], assets: tuple[Path, Path, Any],
               functions_root: Path | None = None) -> Synth:
    from aws_cdk import App
    from aws_cdk.assertions import Template

    from infra.app import build_app

    app = App(outdir=str(tmp), context={**context, "aws:cdk:enable-asset-metadata": True})
    app, stack = build_app(app, assets=(assets[0], assets[1]), functions_root=functions_root)
    template = Template.from_stack(stack)
    return Synth(app, stack, template, template.to_json()["Resources"], tmp)


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True)
