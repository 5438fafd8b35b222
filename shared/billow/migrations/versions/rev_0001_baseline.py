"""Baseline: the meta-store schema as the stores' `create_all` made it before versioned migrations (every table
of every SQL store: meters, subjects, customers, entitlements, keys, catalog, billing, notifications, portal,
LLM prices). Frozen here: later changes are new revisions, never edits of this one. A database made by
`create_all` before this revision existed is adopted (checked against `metadata()` and stamped) by
billow.migrations.upgrade, not re-created.

Revision ID: 0001_baseline
Revises:
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0001_baseline"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def _live(column: str, also: str = "") -> dict[str, Any]:
    where = sa.text(f"{column} IS NULL{also}")
    return {"sqlite_where": where, "postgresql_where": where}


def metadata() -> sa.MetaData:
    """The baseline tables (a fresh MetaData per call: it never changes with the adapters' models)."""
    md = sa.MetaData()
    S, T, B, I = sa.String, sa.Text, sa.Boolean, sa.Integer  # noqa: N806, E741
    # billow.adapters.sql (meters, subjects, customers)
    sa.Table("meters", md,
             sa.Column("namespace", S(64), nullable=False), sa.Column("id", S(26), primary_key=True),
             sa.Column("slug", S(64), nullable=False), sa.Column("name", S(256), nullable=False),
             sa.Column("description", T), sa.Column("aggregation", S(16), nullable=False),
             sa.Column("event_type", T, nullable=False), sa.Column("event_from", TS),
             sa.Column("value_property", T), sa.Column("group_by", T, nullable=False), sa.Column("metadata", T),
             sa.Column("managed", B, nullable=False), sa.Column("created_at", TS, nullable=False),
             sa.Column("updated_at", TS, nullable=False), sa.Column("deleted_at", TS),
             sa.Index("meters_live_slug", "namespace", "slug", unique=True, **_live("deleted_at")))
    sa.Table("subjects", md,
             sa.Column("namespace", S(64), nullable=False), sa.Column("id", S(26), primary_key=True),
             sa.Column("key", T, nullable=False), sa.Column("display_name", T), sa.Column("metadata", T),
             sa.Column("created_at", TS, nullable=False), sa.Column("updated_at", TS, nullable=False),
             sa.Column("deleted_at", TS),
             sa.Index("subjects_live_key", "namespace", "key", unique=True, **_live("deleted_at")))
    sa.Table("customers", md,
             sa.Column("namespace", S(64), nullable=False), sa.Column("id", S(26), primary_key=True),
             sa.Column("key", S(256)), sa.Column("doc", T, nullable=False),
             sa.Column("created_at", TS, nullable=False), sa.Column("deleted_at", TS),
             sa.Index("customers_live_key", "namespace", "key", unique=True,
                      **_live("deleted_at", " AND key IS NOT NULL")))
    sa.Table("customer_subjects", md,
             sa.Column("namespace", S(64), nullable=False), sa.Column("subject_key", T, nullable=False),
             sa.Column("customer_id", S(26), nullable=False),
             sa.PrimaryKeyConstraint("namespace", "subject_key"))
    # billow.adapters.sql_entitlements
    sa.Table("features", md,
             sa.Column("namespace", S(64), nullable=False), sa.Column("id", S(26), primary_key=True),
             sa.Column("key", S(64), nullable=False), sa.Column("meter_slug", S(64)),
             sa.Column("doc", T, nullable=False), sa.Column("created_at", TS, nullable=False),
             sa.Column("archived_at", TS),
             sa.Index("features_live_key", "namespace", "key", unique=True, **_live("archived_at")))
    sa.Table("entitlements", md,
             sa.Column("namespace", S(64), nullable=False), sa.Column("id", S(26), primary_key=True),
             sa.Column("subject_key", T, nullable=False), sa.Column("feature_key", S(64), nullable=False),
             sa.Column("feature_id", S(26), nullable=False), sa.Column("doc", T, nullable=False),
             sa.Column("created_at", TS, nullable=False), sa.Column("deleted_at", TS),
             sa.Index("entitlements_live", "namespace", "subject_key", "feature_key", unique=True,
                      **_live("deleted_at")))
    sa.Table("grants", md,
             sa.Column("namespace", S(64), nullable=False), sa.Column("id", S(26), primary_key=True),
             sa.Column("entitlement_id", S(26), nullable=False), sa.Column("doc", T, nullable=False),
             sa.Column("created_at", TS, nullable=False),
             sa.Index("ix_grants_entitlement_id", "entitlement_id"))
    sa.Table("entitlement_resets", md,
             sa.Column("namespace", S(64), nullable=False), sa.Column("entitlement_id", S(26), nullable=False),
             sa.Column("at", TS, nullable=False), sa.Column("retain_anchor", B, nullable=False),
             sa.Column("preserve_overage", B), sa.Column("created_at", TS, nullable=False),
             sa.PrimaryKeyConstraint("entitlement_id", "at"))
    sa.Table("balance_snapshots", md,
             sa.Column("namespace", S(64), nullable=False), sa.Column("entitlement_id", S(26), nullable=False),
             sa.Column("subject_key", T, nullable=False), sa.Column("at", TS, nullable=False),
             sa.Column("doc", T, nullable=False),
             sa.PrimaryKeyConstraint("entitlement_id", "at"),
             sa.Index("balance_snapshots_subject", "namespace", "subject_key", "at"))
    sa.Table("late_usage", md,
             sa.Column("namespace", S(64), nullable=False), sa.Column("subject_key", T, nullable=False),
             sa.Column("earliest", TS, nullable=False), sa.Column("seen_at", TS, nullable=False),
             sa.Index("late_usage_subject", "namespace", "subject_key", "seen_at"))
    # billow.adapters.sql_keys
    sa.Table("api_keys", md,
             sa.Column("id", S(26), primary_key=True), sa.Column("namespace", S(64), nullable=False),
             sa.Column("key_hash", S(64), nullable=False), sa.Column("doc", T, nullable=False),
             sa.Index("ix_api_keys_namespace", "namespace"))
    # billow.adapters.sql_catalog
    for name in ("plans", "addons"):
        sa.Table(name, md,
                 sa.Column("namespace", S(64), nullable=False), sa.Column("id", S(26), primary_key=True),
                 sa.Column("key", S(64), nullable=False), sa.Column("version", I, nullable=False),
                 sa.Column("deleted", B, nullable=False), sa.Column("doc", T, nullable=False),
                 sa.UniqueConstraint("namespace", "key", "version", name=f"{name}_key_version"))
    sa.Table("plan_addons", md,
             sa.Column("namespace", S(64), nullable=False), sa.Column("id", S(26), primary_key=True),
             sa.Column("plan_id", S(26), nullable=False), sa.Column("addon_id", S(26), nullable=False),
             sa.Column("deleted", B, nullable=False), sa.Column("doc", T, nullable=False),
             sa.Index("ix_plan_addons_plan_id", "plan_id"))
    sa.Table("subscriptions", md,
             sa.Column("namespace", S(64), nullable=False), sa.Column("id", S(26), primary_key=True),
             sa.Column("customer_id", S(26), nullable=False), sa.Column("doc", T, nullable=False),
             sa.Index("ix_subscriptions_customer_id", "customer_id"))
    # billow.adapters.sql_billing
    sa.Table("billing_profiles", md,
             sa.Column("namespace", S(64), nullable=False), sa.Column("id", S(26), primary_key=True),
             sa.Column("is_default", B, nullable=False), sa.Column("deleted", B, nullable=False),
             sa.Column("doc", T, nullable=False))
    sa.Table("billing_customer_overrides", md,
             sa.Column("namespace", S(64), nullable=False), sa.Column("customer_id", S(26), nullable=False),
             sa.Column("doc", T, nullable=False),
             sa.PrimaryKeyConstraint("namespace", "customer_id"))
    sa.Table("invoices", md,
             sa.Column("namespace", S(64), nullable=False), sa.Column("id", S(26), primary_key=True),
             sa.Column("customer_id", S(26), nullable=False), sa.Column("number", S(64), nullable=False),
             sa.Column("status", S(32), nullable=False), sa.Column("doc", T, nullable=False),
             sa.UniqueConstraint("namespace", "number", name="invoices_number"),
             sa.Index("invoices_customer", "namespace", "customer_id"))
    sa.Table("billing_marks", md,
             sa.Column("namespace", S(64), nullable=False), sa.Column("subscription_id", S(26), nullable=False),
             sa.Column("period_start", TS, nullable=False), sa.Column("term", S(16), nullable=False),
             sa.Column("rev", I, nullable=False), sa.Column("billed_at", TS, nullable=False),
             sa.Column("doc", T, nullable=False),
             sa.PrimaryKeyConstraint("namespace", "subscription_id", "period_start", "term"))
    sa.Table("billing_credits", md,
             sa.Column("namespace", S(64), nullable=False), sa.Column("id", S(26), primary_key=True),
             sa.Column("customer_id", S(26), nullable=False), sa.Column("currency", S(3), nullable=False),
             sa.Column("amount", S(64), nullable=False), sa.Column("doc", T, nullable=False),
             sa.Index("billing_credits_customer", "namespace", "customer_id", "currency"))
    # billow.adapters.sql_notifications
    sa.Table("notification_channels", md,
             sa.Column("id", S(26), primary_key=True), sa.Column("namespace", S(64), nullable=False),
             sa.Column("deleted", B, nullable=False), sa.Column("doc", T, nullable=False),
             sa.Index("ix_notification_channels_namespace", "namespace"))
    sa.Table("notification_rules", md,
             sa.Column("id", S(26), primary_key=True), sa.Column("namespace", S(64), nullable=False),
             sa.Column("type", S(64), nullable=False), sa.Column("active", B, nullable=False),
             sa.Column("deleted", B, nullable=False), sa.Column("doc", T, nullable=False),
             sa.Index("ix_notification_rules_namespace", "namespace"),
             sa.Index("notification_rules_active", "active", "type"))
    sa.Table("notification_events", md,
             sa.Column("id", S(26), primary_key=True), sa.Column("namespace", S(64), nullable=False),
             sa.Column("type", S(64), nullable=False), sa.Column("rule_id", S(26), nullable=False),
             sa.Column("subject_key", T), sa.Column("feature_id", S(26)), sa.Column("feature_key", S(64)),
             sa.Column("dedup_key", S(512)), sa.Column("created_at", TS, nullable=False),
             sa.Column("doc", T, nullable=False),
             sa.Index("notification_events_ns_created", "namespace", "created_at"),
             sa.Index("notification_events_dedup", "namespace", "dedup_key", unique=True))
    sa.Table("notification_deliveries", md,
             sa.Column("event_id", S(26), nullable=False), sa.Column("channel_id", S(26), nullable=False),
             sa.Column("namespace", S(64), nullable=False), sa.Column("state", S(16), nullable=False),
             sa.Column("reason", T, nullable=False), sa.Column("tries", I, nullable=False),
             sa.Column("attempts", T, nullable=False), sa.Column("due_at", TS),
             sa.Column("updated_at", TS, nullable=False), sa.Column("version", I, nullable=False),
             sa.PrimaryKeyConstraint("event_id", "channel_id"),
             sa.Index("notification_deliveries_due", "due_at"))
    # billow.adapters.sql_portal
    sa.Table("portal_tokens", md,
             sa.Column("id", S(26), primary_key=True), sa.Column("namespace", S(64), nullable=False),
             sa.Column("subject", T, nullable=False), sa.Column("token_hash", S(64), nullable=False),
             sa.Column("invalidated_at", TS), sa.Column("doc", T, nullable=False),
             sa.Index("portal_tokens_by_subject", "namespace", "subject"))
    # billow.adapters.sql_llm_prices
    sa.Table("llm_price_overrides", md,
             sa.Column("id", S(26), primary_key=True), sa.Column("namespace", S(64), nullable=False),
             sa.Column("provider", S(128), nullable=False), sa.Column("model", S(256), nullable=False),
             sa.Column("effective_from", S(32), nullable=False), sa.Column("doc", T, nullable=False),
             sa.UniqueConstraint("namespace", "provider", "model", "effective_from",
                                 name="llm_price_overrides_unique"))
    return md


def upgrade() -> None:
    metadata().create_all(op.get_bind())


def downgrade() -> None:
    metadata().drop_all(op.get_bind())
