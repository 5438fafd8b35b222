"""Schema migrations once per deploy: a CDK trigger (a custom resource that invokes a function during the
deployment) runs functions/migrate after the database exists and before every other function is created or
updated, so new code never meets an old schema and no function migrates on a cold start
(billow.bootstrap.build only checks the revisions in Lambda). The trigger runs again whenever the migrate
function changes, which is every deploy that changes the code asset: the migrations ship in it. A failed
migration fails the deploy (synchronous invocation) and CloudFormation rolls back before any function
changed."""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import Duration, triggers
from aws_cdk import aws_lambda as lambda_
from constructs import Construct

TIMEOUT = Duration.minutes(10)  # the function's and the trigger's: an index build on a big table takes a while


class Migrations(Construct):
    def __init__(self, scope: Construct, cid: str, *, fn: lambda_.Function, after: Sequence[Construct],
                 before: Sequence[Construct]) -> None:
        super().__init__(scope, cid)
        self.fn = fn
        self.trigger = triggers.Trigger(
            self, "Run", handler=fn, timeout=TIMEOUT, invocation_type=triggers.InvocationType.REQUEST_RESPONSE,
            execute_on_handler_change=True, execute_after=list(after), execute_before=list(before))
