"""Aurora Serverless v2 PostgreSQL behind RDS Proxy; credentials generated into Secrets Manager."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_rds as rds
from constructs import Construct


class Database(Construct):
    def __init__(self, scope: Construct, cid: str, *, vpc: ec2.IVpc, clients: ec2.ISecurityGroup,
                 min_acu: float, max_acu: float, retain: bool) -> None:
        super().__init__(scope, cid)
        self.security_group = ec2.SecurityGroup(self, "Db", vpc=vpc, allow_all_outbound=False,
                                                description="Aurora PostgreSQL: reachable from the proxy only")
        proxy_sg = ec2.SecurityGroup(self, "Proxy", vpc=vpc, allow_all_outbound=True,
                                     description="RDS Proxy: reachable from Billow functions only")
        proxy_sg.add_ingress_rule(clients, ec2.Port.tcp(5432), "Billow functions")
        self.security_group.add_ingress_rule(proxy_sg, ec2.Port.tcp(5432), "RDS Proxy")
        self.cluster = rds.DatabaseCluster(
            self, "Cluster",
            engine=rds.DatabaseClusterEngine.aurora_postgres(version=rds.AuroraPostgresEngineVersion.VER_16_4),
            writer=rds.ClusterInstance.serverless_v2("Writer"),
            serverless_v2_min_capacity=min_acu, serverless_v2_max_capacity=max_acu,
            credentials=rds.Credentials.from_generated_secret("billow"),
            default_database_name="billow",
            vpc=vpc, vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_ISOLATED),
            security_groups=[self.security_group], storage_encrypted=True, iam_authentication=True,
            deletion_protection=retain, backup=rds.BackupProps(retention=Duration.days(7)),
            cloudwatch_logs_exports=["postgresql"],
            removal_policy=RemovalPolicy.SNAPSHOT if retain else RemovalPolicy.DESTROY)
        assert self.cluster.secret is not None
        self.secret = self.cluster.secret
        self.cluster.add_rotation_single_user(automatically_after=Duration.days(30))
        self.proxy = self.cluster.add_proxy(
            "Proxy", secrets=[self.secret], vpc=vpc, security_groups=[proxy_sg], require_tls=True,
            vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS))
