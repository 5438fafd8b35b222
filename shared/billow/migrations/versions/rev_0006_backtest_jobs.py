"""Backtest jobs (issue 20): backtest_jobs, one row per job, so any process reads a job another started (AWS:
the API function accepts it, the billing_run worker runs it) and a worker that died shows as failed.

Revision ID: 0006_backtest_jobs
Revises: 0005_ingest_receipts
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_backtest_jobs"
down_revision = "0005_ingest_receipts"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if sa.inspect(op.get_bind()).has_table("backtest_jobs"):
        return
    op.create_table(
        "backtest_jobs",
        sa.Column("namespace", sa.String(64), primary_key=True),
        sa.Column("id", sa.String(26), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("spec", sa.Text, nullable=False),
        sa.Column("total", sa.Integer, nullable=False),
        sa.Column("success", sa.Integer, nullable=False),
        sa.Column("failed", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True)),
        sa.Column("error", sa.Text),
        sa.Column("failures", sa.Text, nullable=False),
        sa.Column("result", sa.Text),
    )
    op.create_index("backtest_jobs_completed", "backtest_jobs", ["namespace", "completed_at"])


def downgrade() -> None:
    op.drop_index("backtest_jobs_completed", table_name="backtest_jobs")
    op.drop_table("backtest_jobs")
