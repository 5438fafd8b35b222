"""The ClickHouse usage store lives outside this stack (ClickHouse Cloud or self-managed). The stack owns
only the secret the operator fills after the first deploy, and hands functions its ARN.

Secret JSON (either form; billow.bootstrap.Settings.with_secrets reads both):
  {"dsn": "https://user:password@host:8443/billow"}
  {"host": "...", "port": 8443, "username": "...", "password": "...", "database": "billow"}
The generated value is a placeholder with a strong random password (usable for a self-managed server);
until the host is set, functions that open the usage store fail at cold start, visibly (error alarms)."""

from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_secretsmanager as sm
from constructs import Construct

PLACEHOLDER_HOST = "SET-ME.clickhouse.cloud"


class UsageStore(Construct):
    def __init__(self, scope: Construct, cid: str, *, retain: bool) -> None:
        super().__init__(scope, cid)
        self.secret = sm.Secret(
            self, "ClickHouse",  # no fixed name: a deleted secret's name stays taken for 7-30 days
            description="Billow ClickHouse endpoint and credentials: set host/port/username/password/database "
                        "(or a single 'dsn') after the first deploy",
            generate_secret_string=sm.SecretStringGenerator(
                secret_string_template=f'{{"host": "{PLACEHOLDER_HOST}", "port": 8443, "username": "default", '
                                       '"database": "billow"}',
                generate_string_key="password", exclude_punctuation=True, password_length=32),
            removal_policy=RemovalPolicy.RETAIN if retain else RemovalPolicy.DESTROY)
