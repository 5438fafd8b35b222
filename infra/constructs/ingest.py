"""Ingest: the function behind `POST /api/v1/events` (routed by constructs/api.py), which produces each accepted
batch to its namespace topic on MSK (IAM auth; idempotent producer; it creates the topic on first use if the migrate
function has not). It needs no usage store: the events reach ClickHouse through the usage sink (usage_sink.py)."""

from __future__ import annotations

from aws_cdk import aws_iam as iam
from constructs import Construct

from infra.constructs.functions import BillowFunctions
from infra.constructs.streaming import Streaming


class Ingest(Construct):
    def __init__(self, scope: Construct, cid: str, *, fns: BillowFunctions, streaming: Streaming, topic: str) -> None:
        super().__init__(scope, cid)
        self.fn = fns.function("ingest", extra_env={
            "BILLOW_BUS": "kafka", "BILLOW_KAFKA_AUTH": "iam", "BILLOW_KAFKA_BOOTSTRAP": streaming.bootstrap_brokers})
        self.fn.add_to_role_policy(iam.PolicyStatement(
            sid="KafkaConnect", actions=["kafka-cluster:Connect", "kafka-cluster:DescribeCluster",
                                         "kafka-cluster:WriteDataIdempotently"],
            resources=[streaming.cluster_arn]))
        self.fn.add_to_role_policy(iam.PolicyStatement(
            sid="KafkaProduce", actions=["kafka-cluster:CreateTopic", "kafka-cluster:DescribeTopic",
                                         "kafka-cluster:WriteData"],
            resources=[streaming.topic_arn(topic)]))
