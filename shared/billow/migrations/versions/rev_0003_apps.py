"""Apps as entities (OpenMeter's app API, issue 16): the installed apps of a namespace (sandbox, custom invoicing,
Stripe) with their ULIDs, and the per-customer app data (a Stripe customer id, ...).

`apps.secrets` holds what never goes out in a response (the Stripe API key, the webhook signing secret); the
auto-provisioned sandbox app has singleton = 'sandbox', unique per namespace, so two processes provisioning
the same namespace at once make one app.

Revision ID: 0003_apps
Revises: 0002_customer_subjects_idx
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_apps"
down_revision = "0002_customer_subjects_idx"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "apps",
        sa.Column("namespace", sa.String(64), nullable=False),
        sa.Column("id", sa.String(26), primary_key=True),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("deleted", sa.Boolean, nullable=False),
        sa.Column("singleton", sa.String(32)),
        sa.Column("doc", sa.Text, nullable=False),
        sa.Column("secrets", sa.Text),
    )
    op.create_index("apps_namespace", "apps", ["namespace", "type"])
    op.create_index("apps_singleton", "apps", ["namespace", "singleton"], unique=True)
    op.create_table(
        "customer_apps",
        sa.Column("namespace", sa.String(64), nullable=False),
        sa.Column("customer_id", sa.String(26), nullable=False),
        sa.Column("app_id", sa.String(26), nullable=False),
        sa.Column("doc", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("namespace", "customer_id", "app_id"),
    )


def downgrade() -> None:
    op.drop_table("customer_apps")
    op.drop_index("apps_singleton", table_name="apps")
    op.drop_index("apps_namespace", table_name="apps")
    op.drop_table("apps")
