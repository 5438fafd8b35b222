"""Billing: the invoice documents bucket and the Stripe app's secret, and who may use them.

Invoice documents (HTML + PDF, billow.services.documents) are written by billing_run (rendered after a run)
and the api (rendered on first request), under `invoices/<namespace>/<invoice id>/`, with SSE-S3 (the adapter
puts with ServerSideEncryption=AES256), and handed out as presigned GET URLs signed by the same function roles:
so those two roles, and nothing else, get s3:PutObject and s3:GetObject on `invoices/*`.

Stripe secret JSON, filled by the operator after the first deploy (billow.bootstrap.Settings.with_secrets):
  {"apiKey": "sk_...", "webhookSecret": "whsec_..."}
Secrets Manager generates the placeholder (empty apiKey/webhookSecret plus a random "password" key nobody
reads), so no literal value sits in the template; until it is filled, the Stripe operations answer 409 "not
configured" and the webhook answers 500 (Stripe redelivers for up to three days). The functions read it once per
cold start."""

from __future__ import annotations

from collections.abc import Mapping

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_secretsmanager as sm
from constructs import Construct

DOCUMENTS_PREFIX = "invoices/"  # billow.services.documents: invoices/<namespace>/<invoice id>/<number>.html|.pdf
NONCURRENT_DAYS = 365  # a re-rendered or deleted document stays recoverable this long
INVOICING_JOBS = ("billing_run",)  # the scheduled jobs that create and advance invoices (besides the api)


class Billing(Construct):
    def __init__(self, scope: Construct, cid: str, *, retain: bool, api: lambda_.Function,
                 jobs: Mapping[str, lambda_.Function], webhook: lambda_.Function) -> None:
        """`api`, the INVOICING_JOBS among `jobs` (the invoicing functions): they render invoice documents (and
        presign their URLs) and call Stripe (advance, approve, void); the Stripe `webhook` only records payment
        status, through Stripe's secret."""
        super().__init__(scope, cid)
        self.documents = s3.Bucket(
            self, "Documents",  # no fixed name: bucket names are global
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL, enforce_ssl=True,
            encryption=s3.BucketEncryption.S3_MANAGED, versioned=True,
            lifecycle_rules=[s3.LifecycleRule(id="old-versions", noncurrent_version_expiration=Duration.days(
                NONCURRENT_DAYS), abort_incomplete_multipart_upload_after=Duration.days(1))],
            removal_policy=RemovalPolicy.RETAIN if retain else RemovalPolicy.DESTROY, auto_delete_objects=not retain)
        self.stripe_secret = sm.Secret(
            self, "Stripe",  # no fixed name: a deleted secret's name stays taken for 7-30 days
            description='Billow Stripe app: set {"apiKey": "sk_...", "webhookSecret": "whsec_..."} after the first '
                        "deploy",
            generate_secret_string=sm.SecretStringGenerator(
                secret_string_template='{"apiKey": "", "webhookSecret": ""}', generate_string_key="password",
                exclude_punctuation=True, password_length=32),
            removal_policy=RemovalPolicy.RETAIN if retain else RemovalPolicy.DESTROY)
        self.document_writers: list[lambda_.Function] = []
        self.invoicing = [api, *(jobs[job] for job in INVOICING_JOBS if job in jobs)]
        for fn in self.invoicing:
            self.grant_documents(fn)
        for fn in (*self.invoicing, webhook):
            self.grant_stripe(fn)

    def grant_documents(self, fn: lambda_.Function) -> None:
        """Write invoice documents and presign GETs for them (a presigned URL carries the signer's rights)."""
        fn.add_environment("BILLOW_DOCUMENTS_BUCKET", self.documents.bucket_name)
        self.document_writers.append(fn)
        fn.add_to_role_policy(iam.PolicyStatement(
            sid="InvoiceDocuments", actions=["s3:PutObject", "s3:GetObject"],
            resources=[self.documents.arn_for_objects(DOCUMENTS_PREFIX + "*")]))

    def grant_stripe(self, fn: lambda_.Function) -> None:
        fn.add_environment("BILLOW_STRIPE_SECRET_ARN", self.stripe_secret.secret_arn)
        self.stripe_secret.grant_read(fn)
