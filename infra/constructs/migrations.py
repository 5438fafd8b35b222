"""Schema migrations once per deploy: a CDK trigger (a custom resource that invokes a function during the
deployment) runs functions/migrate after the database exists and before every other function is created or
updated, so new code never meets an old schema and no function migrates on a cold start
(billow.bootstrap.build only checks the revisions in Lambda). The trigger runs again whenever the migrate
function changes, which is every deploy that changes the code asset: the migrations ship in it. A failed
migration fails the deploy (synchronous invocation) and CloudFormation rolls back before any function
changed.

The same run mints the first admin key, if the namespace has none, into the `admin_key` secret made here (retained
in prod), so nobody needs a host in the VPC for it: `aws secretsmanager get-secret-value --secret-id
<AdminKeySecretArn>` (docs/deploy.md). Only the migrate function reads or writes it."""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import Duration, RemovalPolicy, triggers
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_secretsmanager as sm
from constructs import Construct

TIMEOUT = Duration.minutes(10)  # the function's and the trigger's: an index build on a big table takes a while


class Migrations(Construct):
    def __init__(self, scope: Construct, cid: str, *, fn: lambda_.Function, after: Sequence[Construct],
                 before: Sequence[Construct], retain: bool = False) -> None:
        super().__init__(scope, cid)
        self.fn = fn
        self.admin_key = sm.Secret(  # no fixed name: a deleted secret's name stays taken for 7-30 days
            self, "AdminKey", description="Billow: the first admin API key, minted by the migrate function at deploy",
            generate_secret_string=sm.SecretStringGenerator(  # "password": generated, unused (no literal in the template)
                secret_string_template='{"token": "", "keyId": "", "namespace": ""}', generate_string_key="password",
                exclude_punctuation=True, password_length=32),
            removal_policy=RemovalPolicy.RETAIN if retain else RemovalPolicy.DESTROY)
        fn.add_environment("BILLOW_ADMIN_KEY_SECRET_ARN", self.admin_key.secret_arn)
        self.admin_key.grant_read(fn)
        self.admin_key.grant_write(fn)
        self.trigger = triggers.Trigger(
            self, "Run", handler=fn, timeout=TIMEOUT, invocation_type=triggers.InvocationType.REQUEST_RESPONSE,
            execute_on_handler_change=True, execute_after=list(after), execute_before=list(before))
