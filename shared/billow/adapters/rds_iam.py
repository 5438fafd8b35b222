"""IAM database authentication through RDS Proxy (AWS): a login that survives password rotation.

Every new connection logs in as the application role (BILLOW_DB_USER) with a fresh IAM auth token, signed locally
by boto3 from the function's role (15 minutes valid, only needed at login), over TLS verified against a CA bundle
(BILLOW_DB_CA_BUNDLE, else the system's trust store: RDS Proxy presents an ACM certificate under Amazon's public
roots; a direct connection to an Aurora endpoint needs the RDS CA bundle,
https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem), to the database BILLOW_DB_NAME names. The
application role is made once per deploy by the migrate function (`ensure_app_role`), logged in as the master user.
"""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

PORT = 5432
IAM_ROLE = "rds_iam"  # Aurora PostgreSQL's role for IAM logins: a member can log in with a token only
_NAME_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def tls_context(ca_bundle: str | None = None) -> ssl.SSLContext:
    """A client TLS context that verifies the server's certificate and host name (pg8000 without one does not)."""
    if ca_bundle:
        if not Path(ca_bundle).is_file():
            raise ValueError(f"db_ca_bundle: {ca_bundle} does not exist (BILLOW_DB_CA_BUNDLE: a PEM file of CA "
                             "certificates to verify the database's TLS certificate)")
        try:
            ctx = ssl.create_default_context(cafile=ca_bundle)
        except ssl.SSLError as exc:
            raise ValueError(f"db_ca_bundle: {ca_bundle} holds no CA certificate ({exc})") from exc
        if not ctx.cert_store_stats()["x509_ca"]:
            raise ValueError(f"db_ca_bundle: {ca_bundle} holds no CA certificate")
    else:
        ctx = ssl.create_default_context()
        if not ctx.cert_store_stats()["x509_ca"]:  # a trust store in a directory only loads on lookup: use certifi
            try:
                import certifi
            except ImportError:  # pragma: no cover - certifi ships with the layer
                raise ValueError("db_ca_bundle: no CA certificates found to verify the database's TLS certificate; "
                                 "set BILLOW_DB_CA_BUNDLE to a PEM bundle") from None
            ctx.load_verify_locations(certifi.where())
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = True
    return ctx


class IamConnector:
    """SQLAlchemy `creator`: one pg8000 connection per call, each with a new IAM auth token as its password."""

    def __init__(self, *, host: str, user: str, database: str, region: str | None = None, port: int = PORT,
                 ca_bundle: str | None = None) -> None:
        self.host, self.user, self.database, self.port = host, user, database, port
        self.region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        self.ssl_context = tls_context(ca_bundle)
        self.rds: Any = None  # boto3's RDS client, made at the first login
        self.connect: Callable[..., Any] | None = None  # pg8000.dbapi.connect

    def token(self) -> str:
        if self.rds is None:
            import boto3

            self.rds = boto3.client("rds", region_name=self.region)
        return str(self.rds.generate_db_auth_token(DBHostname=self.host, Port=self.port, DBUsername=self.user,
                                                   Region=self.region))

    def __call__(self) -> Any:
        if self.connect is None:
            import pg8000.dbapi

            self.connect = pg8000.dbapi.connect
        return self.connect(user=self.user, host=self.host, port=self.port, database=self.database,
                            password=self.token(), ssl_context=self.ssl_context)


def iam_url(user: str, host: str | None, database: str | None, port: int = PORT) -> str:
    if not database:
        raise ValueError("db_name: IAM auth (db_user) needs the database pinned: set BILLOW_DB_NAME")
    if not host:
        raise ValueError("db_host: IAM auth (db_user) needs the RDS Proxy endpoint: set BILLOW_DB_HOST")
    return f"postgresql+pg8000://{user}@{host}:{port}/{database}"


def ensure_app_role(engine: Any, user: str, *, iam_role: str = IAM_ROLE) -> str:
    """Make `user` the application's login role in the engine's database, logging in with IAM tokens only (member
    of `iam_role`) and allowed to create the schema's tables (the migrations then run as it and own them).
    Idempotent: "created" the first time, "exists" after. Runs logged in as the master user (the migrate function)."""
    for what, name in (("db_user", user), ("iam role", iam_role)):
        if not _NAME_RE.match(name):
            raise ValueError(f"{what}: {name!r} must match {_NAME_RE.pattern}")
    with engine.begin() as c:
        database = c.exec_driver_sql("SELECT current_database()").scalar()
        if not _NAME_RE.match(database):
            raise ValueError(f"db_name: {database!r} must match {_NAME_RE.pattern}")
        exists = c.exec_driver_sql("SELECT 1 FROM pg_roles WHERE rolname = %s", (user,)).scalar() is not None
        if not exists:
            c.exec_driver_sql(f'CREATE ROLE "{user}" LOGIN')
        c.exec_driver_sql(f'GRANT "{iam_role}" TO "{user}"')
        c.exec_driver_sql(f'GRANT CONNECT, CREATE, TEMPORARY ON DATABASE "{database}" TO "{user}"')
        c.exec_driver_sql(f'GRANT USAGE, CREATE ON SCHEMA public TO "{user}"')
    return "exists" if exists else "created"
