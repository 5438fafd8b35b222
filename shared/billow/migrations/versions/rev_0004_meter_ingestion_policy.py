"""Per-meter ingestion policies (issue 21 item 2): meters.ingestion_policy, Billow's `ingestionPolicy` as JSON
(lateAfter, lateInvoiced, invalidValues); NULL means the defaults.

Revision ID: 0004_meter_ingestion_policy
Revises: 0003_apps
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_meter_ingestion_policy"
down_revision = "0003_apps"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A database made by create_all from today's models has the column already (adopted at the baseline).
    if "ingestion_policy" in {c["name"] for c in sa.inspect(op.get_bind()).get_columns("meters")}:
        return
    with op.batch_alter_table("meters") as batch:
        batch.add_column(sa.Column("ingestion_policy", sa.Text))


def downgrade() -> None:
    with op.batch_alter_table("meters") as batch:
        batch.drop_column("ingestion_policy")
