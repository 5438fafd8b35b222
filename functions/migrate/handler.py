"""Schema migrations Lambda. The stack's CDK trigger (infra/constructs/migrations.py) invokes it once per deploy,
after the database and before every other function is updated, so new code never meets an old schema; invoke it
by hand (`aws lambda invoke --function-name billow-<stage>-migrate out.json`) to run it again, e.g. once the
ClickHouse secret is filled. No other function runs DDL: their cold starts only check the schema revisions.

The meta database (Aurora, through RDS Proxy in prod) goes to the Alembic head (concurrent runs queue on an advisory
lock), then ClickHouse runs its own migrations. While the ClickHouse secret still holds the placeholder host
the usage store is skipped, not failed: the first deploy has to finish before there is a secret to fill. Any
other failure raises, the trigger fails the deploy and CloudFormation rolls it back.

Before the migrations, with IAM auth, it makes the application database role (logged in as the master user); after
them, the namespace's Kafka topic with its partitions and retention.ms (billow.adapters.kafka_topics), and the first
admin key into its Secrets Manager secret if the namespace has none (billow.services.first_admin_key).
LATEST meters whose cells were stored before usage-store migration 5 are filled here (`migrate_all`), while more
than FILL_MARGIN_MS of the invocation is left, not by the meter's first LATEST query behind API Gateway's 29 s."""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from billow.bootstrap import Settings
from functions.observability import lambda_entry

logger = Logger(service="billow-migrate")
PLACEHOLDER_HOST = "SET-ME.clickhouse.cloud"  # infra/constructs/usage_store.py: the secret before it is filled


def pg_connect(**kwargs: Any) -> Any:
    import pg8000.dbapi

    return pg8000.dbapi.connect(**kwargs)


def master_password_options(settings: Settings, admin: str, secret_arn: str) -> dict[str, Any]:
    """Without RDS Proxy (dev): the master user logs in to the cluster endpoint with the master secret's password,
    read now (each run: rotation never leaves a stale one behind), over TLS verified against the RDS CA bundle."""
    from billow.adapters.aws import secret_json
    from billow.adapters.rds_iam import PORT, tls_context

    password = str(secret_json(secret_arn)["password"])
    ctx = tls_context(settings.db_ca_bundle)
    assert settings.db_host and settings.db_name

    def creator() -> Any:
        return pg_connect(user=admin, host=settings.db_host, port=PORT, database=settings.db_name,
                          password=password, ssl_context=ctx)

    return {"creator": creator}


def ensure_app_role(settings: Settings) -> str | None:
    """With IAM auth: log in as the master user (BILLOW_DB_ADMIN_USER: an IAM token through RDS Proxy, or without a
    proxy the password in BILLOW_DB_ADMIN_SECRET_ARN) and make the application role (settings.db_user, IAM logins
    only) if it is not there yet; the migrations then run as it."""
    admin = os.environ.get("BILLOW_DB_ADMIN_USER")
    if not (admin and settings.db_user) or settings.meta_store_url:
        return None
    import sqlalchemy as sa

    from billow.adapters import rds_iam
    from billow.migrations import meta_engine_options, meta_url

    secret_arn = os.environ.get("BILLOW_DB_ADMIN_SECRET_ARN")
    options = (master_password_options(settings, admin, secret_arn) if secret_arn
               else meta_engine_options(settings, user=admin))
    engine = sa.create_engine(meta_url(settings), **options)
    try:
        return rds_iam.ensure_app_role(engine, settings.db_user)
    finally:
        engine.dispose()


def first_admin_key(settings: Settings, secret_arn: str) -> str:
    import boto3

    from billow.adapters.sql import SqlMetaStore
    from billow.adapters.sql_keys import SqlKeyStore
    from billow.migrations import meta_engine_options, meta_url
    from billow.services.first_admin_key import ensure_first_admin_key
    from billow.timeutil import utcnow

    meta = SqlMetaStore(meta_url(settings), **meta_engine_options(settings))
    try:
        return ensure_first_admin_key(settings.namespace, secret_arn, keys=SqlKeyStore(meta.engine),
                                      secrets=boto3.client("secretsmanager"), now=utcnow())
    finally:
        meta.close()


def provision_namespace(settings: Settings) -> str:
    """The namespace's sandbox app and default billing profile (issue 16: as OpenMeter makes them for a new
    namespace); idempotent, so every deploy may run it."""
    from billow.adapters.sql import SqlMetaStore
    from billow.adapters.sql_apps import SqlAppStore
    from billow.adapters.sql_billing import SqlBillingStore
    from billow.migrations import meta_engine_options, meta_url
    from billow.services.apps import provision
    from billow.timeutil import utcnow

    meta = SqlMetaStore(meta_url(settings), **meta_engine_options(settings))
    try:
        made = provision(settings.namespace, apps=SqlAppStore(meta.engine), billing=SqlBillingStore(meta.engine),
                         now=utcnow())
    finally:
        meta.close()
    return f"default billing profile {made['id']} on the sandbox app" if made else "provisioned before"


FILL_MARGIN_MS = 120_000  # no LATEST fill starts with less time left than this (a big meter's takes minutes)


def _while_time_left(context: LambdaContext | None) -> Any:
    """Whether another meter's LATEST fill may start: while the invocation has FILL_MARGIN_MS left (None outside
    Lambda: every meter)."""
    if context is None:
        return None
    return lambda: context.get_remaining_time_in_millis() > FILL_MARGIN_MS


@lambda_entry(None, logger=logger)
def lambda_handler(event: dict[str, Any], context: LambdaContext | None) -> dict[str, str]:
    # SQLAlchemy (and Alembic when there is work) load here, not at the cold import
    from billow.migrations import migrate_all

    settings = Settings.from_env()
    role = ensure_app_role(settings)
    unfilled = settings.usage_store == "clickhouse" and PLACEHOLDER_HOST in (settings.clickhouse_dsn or "")
    done = migrate_all(replace(settings, usage_store="memory") if unfilled else settings,
                       fill_until=_while_time_left(context))
    if unfilled:
        done["usage"] = ("skipped: the ClickHouse secret still holds the placeholder host; fill it, then invoke "
                         "this function again")
    if role:
        done["dbRole"] = f"{settings.db_user}: {role}"
    if settings.kafka_bootstrap:  # the namespace topic, with its partitions and retention (not the first ingest)
        from billow.adapters.kafka_topics import ensure_topic
        from billow.bus import topic_for

        topic = topic_for(settings.namespace)
        done["topic"] = f"{topic} " + ensure_topic(settings.kafka_config(), topic, partitions=settings.kafka_partitions,
                                                   retention_ms=settings.kafka_retention_ms)
    if arn := os.environ.get("BILLOW_ADMIN_KEY_SECRET_ARN"):  # the first admin key, into the stack's secret
        done["adminKey"] = first_admin_key(settings, arn)
    done["apps"] = provision_namespace(settings)
    logger.info("schema migrations done", extra=done)
    return done
