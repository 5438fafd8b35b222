"""MSK Serverless (IAM auth only) in the app subnets, and its SASL/IAM bootstrap broker string.

MSK Serverless exposes no bootstrap brokers attribute in CloudFormation (AWS::MSK::ServerlessCluster returns
only its ARN), so a custom resource reads them once per deployment with kafka:GetBootstrapBrokers.

The brokers' security group also carries the MSK trigger's pollers: Lambda places the event source
mapping's network interfaces in the cluster's subnets with the cluster's security groups, so the group
admits itself on 9098 and may call out on 443 (Lambda, STS through the NAT gateway)."""

from __future__ import annotations

from aws_cdk import Fn
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_msk as msk
from aws_cdk import custom_resources as cr
from constructs import Construct

IAM_PORT = 9098  # MSK Serverless listener for SASL/IAM (the only one it has)


def topic_for(namespace: str) -> str:
    """Must agree with billow.bus.topic_for (a topic per namespace)."""
    return f"billow.{namespace}.events"


class Streaming(Construct):
    def __init__(self, scope: Construct, cid: str, *, vpc: ec2.IVpc, subnets: ec2.SubnetSelection,
                 clients: ec2.ISecurityGroup, name: str) -> None:
        super().__init__(scope, cid)
        self.security_group = ec2.SecurityGroup(
            self, "Brokers", vpc=vpc, allow_all_outbound=False,
            description="MSK Serverless: SASL/IAM from Billow functions and the MSK trigger pollers")
        self.security_group.add_ingress_rule(clients, ec2.Port.tcp(IAM_PORT), "Billow functions, SASL/IAM")
        self.security_group.add_ingress_rule(self.security_group, ec2.Port.tcp(IAM_PORT),
                                             "MSK trigger pollers (they use this group)")
        self.security_group.add_egress_rule(self.security_group, ec2.Port.tcp(IAM_PORT),
                                            "MSK trigger pollers to the brokers")
        self.security_group.add_egress_rule(ec2.Peer.any_ipv4(), ec2.Port.tcp(443),
                                            "MSK trigger pollers to Lambda, STS and SQS APIs")
        self.cluster = msk.CfnServerlessCluster(
            self, "Cluster", cluster_name=name,
            client_authentication=msk.CfnServerlessCluster.ClientAuthenticationProperty(
                sasl=msk.CfnServerlessCluster.SaslProperty(iam=msk.CfnServerlessCluster.IamProperty(enabled=True))),
            vpc_configs=[msk.CfnServerlessCluster.VpcConfigProperty(
                subnet_ids=vpc.select_subnets(subnet_type=subnets.subnet_type).subnet_ids,
                security_groups=[self.security_group.security_group_id])])
        self.cluster_arn = self.cluster.attr_arn
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
