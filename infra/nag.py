"""cdk-nag suppressions, each with the reason it is acceptable here."""

from __future__ import annotations

from typing import Any

from cdk_nag import NagPackSuppression, NagSuppressions


def suppress(stack: Any) -> None:
    """`stack` is an infra.stack.BillowStack."""
    NagSuppressions.add_resource_suppressions(stack.clickhouse, [NagPackSuppression(id="AwsSolutions-SMG4", reason=(
        "The ClickHouse password belongs to a service outside this account (ClickHouse Cloud or self-managed); "
        "Secrets Manager cannot rotate it there. Rotate it at ClickHouse and update the secret."))], apply_to_children=True)
    if not stack.retain_data:
        NagSuppressions.add_resource_suppressions(stack.database.cluster, [NagPackSuppression(
            id="AwsSolutions-RDS10", reason="Non-prod stages are disposable (cdk destroy must work); stage=prod "
                                            "turns deletion protection on and snapshots on removal.")],
            apply_to_children=True)
    NagSuppressions.add_stack_suppressions(stack, [
        NagPackSuppression(id="AwsSolutions-IAM4", reason=(
            "AWSLambdaBasicExecutionRole / AWSLambdaVPCAccessExecutionRole are the AWS-maintained minimum for "
            "writing logs and attaching ENIs in the VPC; the custom resource provider uses the same basic role.")),
        NagPackSuppression(id="AwsSolutions-IAM5", reason=(
            "Wildcards are AWS-generated: ENI management (ec2:*NetworkInterface on *, required by Lambda in a VPC), "
            "X-Ray PutTraceSegments (no resource-level permissions), CloudWatch log streams of our own log groups, "
            "and the secret rotation application; every Billow statement names its cluster, topic, group, queue "
            "and secret.")),
        NagPackSuppression(id="AwsSolutions-APIG4", reason=(
            "Billow authenticates API keys in the application (issue 10 adds the cached Lambda authorizer); "
            "OpenMeter's API is bearer-token based and the embedded host checks the same way.")),
        NagPackSuppression(id="AwsSolutions-RDS11", reason=(
            "The cluster is only reachable from the RDS Proxy security group in isolated subnets; a non-default "
            "port adds no protection and would have to be carried separately from the RDS-generated secret.")),
        NagPackSuppression(id="AwsSolutions-L1", reason=(
            "python3.13 is the newest runtime the locked dependency wheels are built and tested for; the custom "
            "resource provider's Node.js runtime is chosen by aws-cdk-lib.")),
        NagPackSuppression(id="AwsSolutions-SQS3", reason=(
            "These queues are themselves dead-letter destinations (records, failed batches); a DLQ of a DLQ "
            "would only move the alarm.")),
    ])
