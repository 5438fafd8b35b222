"""Aurora Serverless v2 PostgreSQL in isolated subnets; in prod reached through RDS Proxy (TLS and IAM required),
elsewhere straight at the cluster endpoint (issue 18 item 9: the proxy's 8-ACU minimum, $87.60 a month, was a third
of dev's idle cost). The cluster forces TLS (`rds.force_ssl`), and the functions verify it against the RDS CA bundle
shipped in the code asset (layers/rds_ca.py, BILLOW_DB_CA_BUNDLE). The master credentials are generated into Secrets
Manager (rotated every 30 days).

Logins survive rotation: the functions log in as the application role APP_USER, a member of `rds_iam` that the
migrate function makes once (billow.adapters.rds_iam.ensure_app_role), with an IAM token per connection (signed from
the function's role): through the proxy, which logs in to Aurora with IAM end to end (its role may connect as
APP_USER), or directly to the cluster. Every function is granted `rds-db:connect` on the dbuser ARN (the proxy's or
the cluster's) of the users it logs in as (`grant_connect`). Only the migrate function logs in as the master user,
to make that role: through the proxy with IAM (the proxy uses the master secret), or without a proxy with the master
secret's password, read on each run (the master user cannot log in with IAM); no other function reads it."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_rds as rds
from constructs import Construct

from infra.constructs.observability import Alarms

ENGINE_VERSION = rds.AuroraPostgresEngineVersion.VER_16_9
DATABASE = "billow"  # the functions' BILLOW_DB_NAME (the secret names no database: it would be "postgres")
MASTER_USER = "billow"
APP_USER = "billow_app"  # the application role (IAM logins only)


class Database(Construct):
    def __init__(self, scope: Construct, cid: str, *, vpc: ec2.IVpc, clients: ec2.ISecurityGroup,
                 app_subnets: ec2.SubnetSelection, data_subnets: ec2.SubnetSelection,
                 min_acu: float, max_acu: float, retain: bool, name: str, alarms: Alarms, proxy: bool = True) -> None:
        super().__init__(scope, cid)
        self.max_acu = max_acu
        self.security_group = ec2.SecurityGroup(
            self, "Db", vpc=vpc, allow_all_outbound=False,
            description=f"Aurora PostgreSQL: from {'RDS Proxy' if proxy else 'Billow functions'} and rotation only")
        self.proxy_security_group: ec2.SecurityGroup | None = None
        if proxy:
            self.proxy_security_group = ec2.SecurityGroup(self, "ProxySg", vpc=vpc, allow_all_outbound=False,
                                                          description="RDS Proxy: from Billow functions only")
            self.proxy_security_group.add_ingress_rule(clients, ec2.Port.tcp(5432), "Billow functions")
            self.proxy_security_group.add_egress_rule(self.security_group, ec2.Port.tcp(5432), "to Aurora")
            self.security_group.add_ingress_rule(self.proxy_security_group, ec2.Port.tcp(5432), "RDS Proxy")
        else:
            self.security_group.add_ingress_rule(clients, ec2.Port.tcp(5432), "Billow functions (no proxy)")
        self.cluster = rds.DatabaseCluster(
            self, "Cluster",
            engine=rds.DatabaseClusterEngine.aurora_postgres(version=ENGINE_VERSION),
            writer=rds.ClusterInstance.serverless_v2("Writer", publicly_accessible=False),
            serverless_v2_min_capacity=min_acu, serverless_v2_max_capacity=max_acu,
            credentials=rds.Credentials.from_generated_secret(MASTER_USER),
            default_database_name=DATABASE,
            vpc=vpc, vpc_subnets=data_subnets, security_groups=[self.security_group],
            storage_encrypted=True, iam_authentication=True, deletion_protection=retain,
            parameters={"rds.force_ssl": "1"},  # no plaintext login, whatever a client asks for
            backup=rds.BackupProps(retention=Duration.days(7)), cloudwatch_logs_exports=["postgresql"],
            removal_policy=RemovalPolicy.SNAPSHOT if retain else RemovalPolicy.DESTROY)
        assert self.cluster.secret is not None
        self.secret = self.cluster.secret
        if retain:  # besides the cluster (snapshot on removal): its master secret
            self.secret.apply_removal_policy(RemovalPolicy.RETAIN)
        # The rotation function needs Secrets Manager's API: run it in the app subnets (NAT), not isolated.
        self.cluster.add_rotation_single_user(automatically_after=Duration.days(30), vpc_subnets=app_subnets)
        self.proxy: rds.DatabaseProxy | None = None
        if self.proxy_security_group is not None:
            self.proxy = self.cluster.add_proxy(
                "Proxy", db_proxy_name=f"{name}-db", secrets=[self.secret], vpc=vpc, vpc_subnets=app_subnets,
                security_groups=[self.proxy_security_group], require_tls=True, iam_auth=True,
                default_auth_scheme=rds.DefaultAuthScheme.IAM_AUTH,
                debug_logging=False, idle_client_timeout=Duration.minutes(30))
            proxy_role = self.proxy.node.find_child("IAMRole")
            assert isinstance(proxy_role, iam.Role)
            self.cluster.grant_connect(proxy_role, APP_USER)  # end-to-end IAM: the proxy logs in to Aurora as APP_USER
        # what the functions connect to (BILLOW_DB_HOST): the proxy, or the cluster's writer endpoint
        self.endpoint = self.proxy.endpoint if self.proxy else self.cluster.cluster_endpoint.hostname
        alarms.database(self.cluster, self.proxy, max_acu=max_acu)

    def grant_connect(self, grantee: iam.IGrantable, user: str = APP_USER) -> None:
        """Let `grantee` log in as `user` with an IAM token: rds-db:connect on the proxy's dbuser ARN, or without a
        proxy on the cluster's (dbuser:<cluster resource id>/<user>)."""
        if self.proxy:
            self.proxy.grant_connect(grantee, user)
        else:
            self.cluster.grant_connect(grantee, user)

    def grant_master_login(self, fn: lambda_.Function, user: str) -> None:
        """The migrate function's login as the master user `user`: through the proxy with IAM, or without a proxy
        with the master secret's password (BILLOW_DB_ADMIN_SECRET_ARN, read on each run, so rotation cannot break
        it; the master user cannot log in with IAM)."""
        if self.proxy:
            self.grant_connect(fn, user)
        else:
            fn.add_environment("BILLOW_DB_ADMIN_SECRET_ARN", self.secret.secret_arn)
            self.secret.grant_read(fn)
