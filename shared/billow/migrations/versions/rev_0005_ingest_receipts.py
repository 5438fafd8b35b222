"""Ingestion receipts (issue 21 item 3): ingest_receipts, one row per receipt asked for (`Prefer:
return=representation` on POST /api/v1/events), its JSON document.

Revision ID: 0005_ingest_receipts
Revises: 0004_meter_ingestion_policy
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_ingest_receipts"
down_revision = "0004_meter_ingestion_policy"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if sa.inspect(op.get_bind()).has_table("ingest_receipts"):
        return
    op.create_table(
        "ingest_receipts",
        sa.Column("namespace", sa.String(64), primary_key=True),
        sa.Column("id", sa.String(26), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("doc", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("ingest_receipts")
