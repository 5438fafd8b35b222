"""The VPC: public subnets (NAT), private subnets with egress for the functions, the MSK cluster and the
RDS Proxy, isolated subnets for Aurora. One NAT gateway: the functions reach ClickHouse Cloud, Secrets
Manager, STS and the MSK trigger's pollers reach Lambda and STS through it. SQS has an interface endpoint
(the usage sink's dead letters stay inside the VPC), S3 a gateway endpoint."""

from __future__ import annotations

from aws_cdk import aws_ec2 as ec2
from constructs import Construct


class Network(Construct):
    def __init__(self, scope: Construct, cid: str, *, nat_gateways: int) -> None:
        super().__init__(scope, cid)
        self.vpc = ec2.Vpc(self, "Vpc", max_azs=2, nat_gateways=nat_gateways, subnet_configuration=[
            ec2.SubnetConfiguration(name="public", subnet_type=ec2.SubnetType.PUBLIC, cidr_mask=24),
            ec2.SubnetConfiguration(name="app", subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS, cidr_mask=22),
            ec2.SubnetConfiguration(name="data", subnet_type=ec2.SubnetType.PRIVATE_ISOLATED, cidr_mask=24)])
        self.vpc.add_flow_log("FlowLogs", traffic_type=ec2.FlowLogTrafficType.REJECT)
        self.app_subnets = ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS)
        self.data_subnets = ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_ISOLATED)
        self.functions_sg = ec2.SecurityGroup(self, "Functions", vpc=self.vpc, allow_all_outbound=True,
                                              description="Billow Lambda functions")
        self.endpoints_sg = ec2.SecurityGroup(self, "Endpoints", vpc=self.vpc, allow_all_outbound=False,
                                              description="Interface VPC endpoints: HTTPS from the Billow groups")
        self.endpoints_sg.add_ingress_rule(self.functions_sg, ec2.Port.tcp(443), "HTTPS from Billow functions")
        self.sqs_endpoint = self.vpc.add_interface_endpoint(
            "Sqs", service=ec2.InterfaceVpcEndpointAwsService.SQS, subnets=self.app_subnets,
            security_groups=[self.endpoints_sg], private_dns_enabled=True, open=False)
        # S3 (invoice documents) through a gateway endpoint: free, and no NAT data processing charge.
        self.s3_endpoint = self.vpc.add_gateway_endpoint("S3", service=ec2.GatewayVpcEndpointAwsService.S3,
                                                         subnets=[self.app_subnets])

    def allow_endpoints_from(self, peer: ec2.ISecurityGroup, description: str) -> None:
        self.endpoints_sg.add_ingress_rule(peer, ec2.Port.tcp(443), description)
