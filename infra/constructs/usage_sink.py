"""The usage sink: the function the MSK trigger feeds with the namespace topic's records, which stores them in the
usage store (ClickHouse), its dead-letter queue for records it cannot read (it sends them there itself), its grants
(read the topic, commit its consumer group's offsets) and its alarms (consumer lag, a blocked sink, dead letters).

A batch the sink cannot store is never set aside: the sink fails a batch only when a store is down (bad records
never fail it: it dead-letters them itself), and then the batch must wait, not be dropped (issue 15). What Lambda's
Kafka event source mapping supports (docs/deploy.md, "MSK trigger"): retry controls only in provisioned mode;
MaximumRetryAttempts -1 retries without limit, but with an on-failure destination Lambda caps it at 10 (and an
SQS/SNS destination keeps only the batch's coordinates while the offsets move on); MaximumRecordAge defaults to -1
(never discard). So: -1, no destination, no record age, no split (halving cannot help an outage). The partition
stays blocked until the store is back, nothing is committed past the failing batch, and Alarms.sink_blocked pages
meanwhile. ReportBatchItemFailures stays off: the sink returns counts, not batchItemFailures.
Off prod the trigger runs in on-demand mode (no provisioned pollers, which bill per hour even at idle; issue 18
item 9): there the retry controls do not exist and Lambda retries a failing batch until it succeeds or its records
leave the topic, the same unlimited retries with no destination."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as sources
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from infra.constructs.functions import BillowFunctions
from infra.constructs.observability import Alarms
from infra.constructs.streaming import Streaming

SINK_GROUP = "billow-usage-sink"  # the MSK trigger's consumer group
SINK_BATCH_SIZE = 1000
SINK_RETRIES = -1  # without limit: a usage-store outage blocks the partition until the store is back


class UsageSink(Construct):
    def __init__(self, scope: Construct, cid: str, *, fns: BillowFunctions, streaming: Streaming, topic: str,
                 alarms: Alarms, provisioned: bool, retain: bool) -> None:
        super().__init__(scope, cid)
        stack = Stack.of(self)
        # Records the sink cannot read. In the stack's scope, not this construct's: its logical id (DeadLetters...)
        # predates this construct, and a new one would replace the queue and lose what it holds.
        self.dead_letters = sqs.Queue(stack, "DeadLetters", queue_name=f"billow-{fns.stage}-dead-letters",
                                      encryption=sqs.QueueEncryption.SQS_MANAGED, enforce_ssl=True,
                                      retention_period=Duration.days(14),
                                      removal_policy=RemovalPolicy.RETAIN if retain else RemovalPolicy.DESTROY)
        self.fn = fns.function("usage_sink", memory=1024, timeout=Duration.minutes(2), usage=True,
                               extra_env={"BILLOW_DLQ_URL": self.dead_letters.queue_url})
        # The MSK trigger polls with the function's role (read topic, commit group offsets).
        self.fn.add_to_role_policy(iam.PolicyStatement(
            sid="KafkaCluster", actions=["kafka:DescribeClusterV2", "kafka-cluster:Connect",
                                         "kafka-cluster:DescribeClusterDynamicConfiguration"],
            resources=[streaming.cluster_arn]))
        self.fn.add_to_role_policy(iam.PolicyStatement(
            sid="KafkaConsume", actions=["kafka-cluster:DescribeTopic", "kafka-cluster:ReadData"],
            resources=[streaming.topic_arn(topic)]))
        self.fn.add_to_role_policy(iam.PolicyStatement(
            sid="KafkaGroup", actions=["kafka-cluster:AlterGroup", "kafka-cluster:DescribeGroup"],
            resources=[streaming.group_arn(SINK_GROUP)]))
        self.dead_letters.grant_send_messages(self.fn)
        pollers = sources.ProvisionedPollerConfig(minimum_pollers=1, maximum_pollers=4) if provisioned else None
        self.source = sources.ManagedKafkaEventSource(
            cluster_arn=streaming.cluster_arn, topic=topic, consumer_group_id=SINK_GROUP,
            batch_size=SINK_BATCH_SIZE, max_batching_window=Duration.seconds(1),
            starting_position=lambda_.StartingPosition.TRIM_HORIZON,
            retry_attempts=SINK_RETRIES if pollers else None, bisect_batch_on_error=False if pollers else None,
            provisioned_poller_config=pollers)
        self.fn.add_event_source(self.source)
        alarms.dead_letters("dead-letters", self.dead_letters)
        alarms.consumer_lag(self.fn, max_lag=100_000, minutes=5)
        alarms.sink_blocked(self.fn, minutes=5)
