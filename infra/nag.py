"""cdk-nag suppressions. Each one is attached to the resource it covers (nothing is suppressed stack-wide)
and, for wildcard and managed-policy findings, names the exact finding (`applies_to`), with the reason it is
acceptable here. tests/infra checks that every wildcard resource in an IAM policy is covered by one."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aws_cdk import CfnElement, Stack
from cdk_nag import NagPackSuppression, NagSuppressions
from constructs import IConstruct

from infra.constructs.api import PUBLIC_ROUTES
from infra.constructs.billing import DOCUMENTS_PREFIX

if TYPE_CHECKING:
    from infra.stack import BillowStack

VPC_ACCESS = "Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole"
MSK_ACCESS = "Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaMSKExecutionRole"
BASIC_EXECUTION = "Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"
# The singleton provider function of custom_resources.AwsCustomResource (aws-cdk-lib's fixed id).
AWS_CUSTOM_RESOURCE_PROVIDER = "AWS679f53fac002430cb0da5b7982bd2287"


def _suppress(construct: IConstruct, rule: str, reason: str, applies_to: list[str] | None = None) -> None:
    NagSuppressions.add_resource_suppressions(
        construct, [NagPackSuppression(id=rule, reason=reason, applies_to=applies_to)], apply_to_children=True)


def apply_suppressions(stack: BillowStack) -> None:
    _suppress_functions(stack)

    provider = stack.node.try_find_child(AWS_CUSTOM_RESOURCE_PROVIDER)
    if provider is not None:
        _suppress(provider, "AwsSolutions-IAM4", (
            "aws-cdk-lib's AwsCustomResource provider (reads the MSK bootstrap brokers once per deploy) runs "
            "with AWSLambdaBasicExecutionRole, i.e. only CloudWatch Logs; its one API permission is "
            "kafka:GetBootstrapBrokers on this cluster."), applies_to=[BASIC_EXECUTION])
        _suppress(provider, "AwsSolutions-L1", (
            "The provider's Node.js runtime is chosen by aws-cdk-lib, not by this app."))

    for queue, what in ((stack.dead_letters, "the usage sink's own dead-letter queue for unreadable records"),):
        _suppress(queue, "AwsSolutions-SQS3", (
            f"This queue is itself a dead-letter destination ({what}); nothing consumes it automatically, an "
            "alarm fires at depth > 0, and a DLQ for it would only move that alarm."))

    _suppress(stack.usage_store.secret, "AwsSolutions-SMG4", (
        "The ClickHouse credentials belong to a server outside this account (ClickHouse Cloud or "
        "self-managed), which Secrets Manager cannot rotate; rotate them at ClickHouse and update the secret "
        "(docs/deploy.md)."))

    _suppress(stack.migrations.admin_key, "AwsSolutions-SMG4", (
        "It holds an API key that Billow itself issues (hashed in the database); Secrets Manager cannot rotate it. "
        "Rotate it with `billow keys create` / `billow keys revoke` through the API (docs/deploy.md)."))

    _suppress_billing(stack)

    for key, route in stack.http.routes.items():
        if key in PUBLIC_ROUTES:
            _suppress(route, "AwsSolutions-APIG4", (
                f"Public on purpose: {PUBLIC_ROUTES[key]}. Every other route goes through the API-key Lambda "
                "authorizer."))

    if not stack.retain_data:
        _suppress(stack.database.cluster, "AwsSolutions-RDS10", (
            "Non-prod stages are disposable (`cdk destroy` must work); stage=prod enables deletion protection "
            "and snapshots the cluster on removal."))


def _suppress_functions(stack: BillowStack) -> None:
    for name, fn in stack.fns.functions.items():
        role = fn.role
        assert role is not None
        managed = [VPC_ACCESS] + ([MSK_ACCESS] if name == "usage_sink" else [])
        _suppress(role, "AwsSolutions-IAM4", (
            "AWS-maintained execution policies: AWSLambdaVPCAccessExecutionRole (CloudWatch Logs and the "
            "network interfaces a function in a VPC needs; ec2:CreateNetworkInterface has no resource-level "
            "scoping) and, on the usage sink only, AWSLambdaMSKExecutionRole, which aws-cdk-lib's "
            "ManagedKafkaEventSource attaches for the MSK trigger's pollers (kafka:DescribeClusterV2, "
            "GetBootstrapBrokers and the same ENI actions)."), applies_to=managed)
        _suppress(role, "AwsSolutions-IAM5", (
            "Only X-Ray: xray:PutTraceSegments and xray:PutTelemetryRecords (active tracing) support no "
            "resource-level permissions. Every other statement of this role names its secret, cluster, "
            "topic, consumer group or queue (or the invoice documents' key prefix, suppressed on its own)."),
            applies_to=["Resource::*"])
        _suppress(fn, "AwsSolutions-L1", (
            "python3.12 on purpose: it is the interpreter of the project's venv and CI, the dependencies "
            "layer is built from cp312 wheels and ships cp312 bytecode (layers/build.py PYTHON). Move "
            "runtime, layer and venv together."))


def _suppress_billing(stack: BillowStack) -> None:
    _suppress(stack.billing.stripe_secret, "AwsSolutions-SMG4", (
        "The Stripe API key and webhook signing secret are issued by Stripe, which Secrets Manager cannot rotate; "
        "roll them in the Stripe dashboard and put the new values in this secret (docs/deploy.md, Billing)."))
    documents = stack.billing.documents
    _suppress(documents, "AwsSolutions-S1", (
        "No server access logs for the invoice documents bucket: only the api and billing_run roles are granted "
        "access (all public access blocked, TLS only), and downloads use presigned URLs those functions hand out "
        "to authenticated callers (API key or portal token), each such request in the API's access log. "
        "Object-level audit, if needed, is CloudTrail S3 data events on this bucket."))
    bucket = documents.node.default_child
    assert isinstance(bucket, CfnElement)
    bucket_id = Stack.of(documents).resolve(bucket.logical_id)  # cdk-nag names the finding by logical id
    for fn in stack.billing.document_writers:
        assert fn.role is not None
        _suppress(fn.role, "AwsSolutions-IAM5", (
            f"Invoice documents: s3:PutObject and s3:GetObject on the {DOCUMENTS_PREFIX} prefix of the documents "
            "bucket only; object keys are made per invoice at run time (invoices/<namespace>/<invoice id>/...)."),
            applies_to=[f"Resource::<{bucket_id}.Arn>/{DOCUMENTS_PREFIX}*"])
