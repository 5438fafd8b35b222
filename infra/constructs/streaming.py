"""MSK Serverless (IAM auth) and its bootstrap broker string (not a CloudFormation attribute: read once at
deploy time with kafka:GetBootstrapBrokers)."""

from __future__ import annotations

from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_msk as msk
from aws_cdk import custom_resources as cr
from constructs import Construct


class Streaming(Construct):
    def __init__(self, scope: Construct, cid: str, *, vpc: ec2.IVpc, clients: ec2.ISecurityGroup, name: str) -> None:
        super().__init__(scope, cid)
        self.security_group = ec2.SecurityGroup(self, "Brokers", vpc=vpc, allow_all_outbound=False,
                                                description="MSK Serverless brokers: IAM listener from Billow only")
        self.security_group.add_ingress_rule(clients, ec2.Port.tcp(9098), "Billow functions, SASL/IAM")
        subnets = vpc.select_subnets(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS).subnet_ids
        self.cluster = msk.CfnServerlessCluster(
            self, "Cluster", cluster_name=name,
            client_authentication=msk.CfnServerlessCluster.ClientAuthenticationProperty(
                sasl=msk.CfnServerlessCluster.SaslProperty(iam=msk.CfnServerlessCluster.IamProperty(enabled=True))),
            vpc_configs=[msk.CfnServerlessCluster.VpcConfigProperty(
                subnet_ids=subnets, security_groups=[self.security_group.security_group_id])])
        self.cluster_arn = self.cluster.attr_arn
        brokers = cr.AwsCustomResource(
            self, "BootstrapBrokers",
            on_update=cr.AwsSdkCall(service="Kafka", action="getBootstrapBrokers",
                                    parameters={"ClusterArn": self.cluster_arn},
                                    physical_resource_id=cr.PhysicalResourceId.of(f"{name}-bootstrap")),
            policy=cr.AwsCustomResourcePolicy.from_statements([iam.PolicyStatement(
                actions=["kafka:GetBootstrapBrokers"], resources=[self.cluster_arn])]),
            install_latest_aws_sdk=False)
        self.bootstrap_brokers = brokers.get_response_field("BootstrapBrokerStringSaslIam")

    def topic_arn(self, topic: str) -> str:
        # arn:aws:kafka:region:account:topic/<cluster name>/<cluster uuid>/<topic>; the uuid is the last
        # segment of the cluster ARN.
        from aws_cdk import Fn

        parts = Fn.split("/", self.cluster_arn)
        head = Fn.select(0, Fn.split(":cluster/", self.cluster_arn))
        return f"{head}:topic/{Fn.select(1, parts)}/{Fn.select(2, parts)}/{topic}"

    def group_arn(self, group: str) -> str:
        from aws_cdk import Fn

        parts = Fn.split("/", self.cluster_arn)
        head = Fn.select(0, Fn.split(":cluster/", self.cluster_arn))
        return f"{head}:group/{Fn.select(1, parts)}/{Fn.select(2, parts)}/{group}"
