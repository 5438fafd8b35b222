"""The Kafka cluster (IAM auth only, SASL/IAM on 9098) in the app subnets, and its SASL/IAM bootstrap broker string:
MSK Serverless (prod's default), or MSK provisioned with two kafka.t3.small brokers, one per AZ (every other stage's
default: about $69 a month at idle instead of about $552; issue 18 item 9, infra/costs.py). `-c msk=` picks either.

Neither exposes a bootstrap brokers attribute in CloudFormation (both return only their ARN), so a custom resource
reads them once per deployment with kafka:GetBootstrapBrokers. Cluster, topic and group ARNs have the same shape
for both, so the IAM grants and the MSK trigger do not depend on the choice.

The brokers' security group also carries the MSK trigger's pollers: Lambda places the event source
mapping's network interfaces in the cluster's subnets with the cluster's security groups, so the group
admits itself on 9098 and may call out on 443 (Lambda, STS through the NAT gateway)."""

from __future__ import annotations

from aws_cdk import Fn, RemovalPolicy
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_msk as msk
from aws_cdk import custom_resources as cr
from constructs import Construct

IAM_PORT = 9098  # the SASL/IAM listener (MSK Serverless's only one; the only one the provisioned cluster enables)
# MSK provisioned (non-prod): the smallest broker, one per AZ of the VPC's two. A t3.small broker takes at most a few
# new IAM connections per second, ample for a dev stage; prod stays on Serverless (or pick larger brokers).
BROKER_TYPE = "kafka.t3.small"
BROKERS = 2
BROKER_STORAGE_GB = 10  # per broker (EBS, $0.10/GB-month); the topic keeps 7 days (migrations.TOPIC_RETENTION_MS)
KAFKA_VERSION = "3.8.x"  # MSK's auto-patched 3.8 line


def topic_for(namespace: str) -> str:
    """Must agree with billow.bus.topic_for (a topic per namespace)."""
    return f"billow.{namespace}.events"


class Streaming(Construct):
    def __init__(self, scope: Construct, cid: str, *, vpc: ec2.IVpc, subnets: ec2.SubnetSelection,
                 clients: ec2.ISecurityGroup, name: str, serverless: bool = True, retain: bool = False) -> None:
        super().__init__(scope, cid)
        self.serverless = serverless
        self.broker_logs: logs.LogGroup | None = None  # the provisioned cluster's broker logs
        self.security_group = ec2.SecurityGroup(
            self, "Brokers", vpc=vpc, allow_all_outbound=False,
            description="MSK: SASL/IAM from Billow functions and the MSK trigger pollers")
        self.security_group.add_ingress_rule(clients, ec2.Port.tcp(IAM_PORT), "Billow functions, SASL/IAM")
        self.security_group.add_ingress_rule(self.security_group, ec2.Port.tcp(IAM_PORT),
                                             "MSK trigger pollers (they use this group)")
        self.security_group.add_egress_rule(self.security_group, ec2.Port.tcp(IAM_PORT),
                                            "MSK trigger pollers to the brokers")
        self.security_group.add_egress_rule(ec2.Peer.any_ipv4(), ec2.Port.tcp(443),
                                            "MSK trigger pollers to Lambda, STS and SQS APIs")
        subnet_ids = vpc.select_subnets(subnet_type=subnets.subnet_type).subnet_ids
        self.cluster: msk.CfnServerlessCluster | msk.CfnCluster
        if serverless:
            self.cluster = msk.CfnServerlessCluster(
                self, "Cluster", cluster_name=name,
                client_authentication=msk.CfnServerlessCluster.ClientAuthenticationProperty(
                    sasl=msk.CfnServerlessCluster.SaslProperty(iam=msk.CfnServerlessCluster.IamProperty(enabled=True))),
                vpc_configs=[msk.CfnServerlessCluster.VpcConfigProperty(
                    subnet_ids=subnet_ids, security_groups=[self.security_group.security_group_id])])
            self.cluster_arn = self.cluster.attr_arn
        else:
            self.broker_logs = logs.LogGroup(self, "BrokerLogs", retention=logs.RetentionDays.ONE_MONTH,
                                             removal_policy=RemovalPolicy.DESTROY)
            self.cluster = msk.CfnCluster(
                self, "Cluster", cluster_name=name, kafka_version=KAFKA_VERSION, number_of_broker_nodes=BROKERS,
                broker_node_group_info=msk.CfnCluster.BrokerNodeGroupInfoProperty(
                    instance_type=BROKER_TYPE, client_subnets=subnet_ids,
                    security_groups=[self.security_group.security_group_id],
                    storage_info=msk.CfnCluster.StorageInfoProperty(
                        ebs_storage_info=msk.CfnCluster.EBSStorageInfoProperty(volume_size=BROKER_STORAGE_GB))),
                client_authentication=msk.CfnCluster.ClientAuthenticationProperty(  # IAM only: no plaintext, no SCRAM
                    sasl=msk.CfnCluster.SaslProperty(iam=msk.CfnCluster.IamProperty(enabled=True)),
                    unauthenticated=msk.CfnCluster.UnauthenticatedProperty(enabled=False)),
                encryption_info=msk.CfnCluster.EncryptionInfoProperty(  # at rest: MSK's default key
                    encryption_in_transit=msk.CfnCluster.EncryptionInTransitProperty(client_broker="TLS",
                                                                                     in_cluster=True)),
                logging_info=msk.CfnCluster.LoggingInfoProperty(broker_logs=msk.CfnCluster.BrokerLogsProperty(
                    cloud_watch_logs=msk.CfnCluster.CloudWatchLogsProperty(
                        enabled=True, log_group=self.broker_logs.log_group_name))))
            self.cluster_arn = self.cluster.ref  # Ref of AWS::MSK::Cluster is its ARN
        brokers = cr.AwsCustomResource(
            self, "BootstrapBrokers",
            on_update=cr.AwsSdkCall(service="Kafka", action="getBootstrapBrokers",
                                    parameters={"ClusterArn": self.cluster_arn},
                                    physical_resource_id=cr.PhysicalResourceId.of(f"{name}-bootstrap-brokers"),
                                    output_paths=["BootstrapBrokerStringSaslIam"]),
            policy=cr.AwsCustomResourcePolicy.from_statements([iam.PolicyStatement(
                actions=["kafka:GetBootstrapBrokers"], resources=[self.cluster_arn])]),
            install_latest_aws_sdk=False)
        self.bootstrap_brokers = brokers.get_response_field("BootstrapBrokerStringSaslIam")
        if retain:  # what holds the events (and the brokers' logs)
            for kept in (self.cluster, *([self.broker_logs] if self.broker_logs else [])):
                kept.apply_removal_policy(RemovalPolicy.RETAIN)

    def _arn(self, kind: str, name: str) -> str:
        # cluster: arn:aws:kafka:<region>:<account>:cluster/<cluster name>/<cluster uuid>
        # topic/group: arn:aws:kafka:<region>:<account>:<kind>/<cluster name>/<cluster uuid>/<name>
        head = Fn.select(0, Fn.split(":cluster/", self.cluster_arn))
        parts = Fn.split("/", self.cluster_arn)
        return f"{head}:{kind}/{Fn.select(1, parts)}/{Fn.select(2, parts)}/{name}"

    def topic_arn(self, topic: str) -> str:
        return self._arn("topic", topic)

    def group_arn(self, group: str) -> str:
        return self._arn("group", group)
