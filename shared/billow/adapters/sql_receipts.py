"""The ingest_receipts table (issue 21 item 3; meta migration 0005): one row per ingestion receipt, its JSON
document. SqlMetaStore reads and writes it (put_receipt / get_receipt)."""

from __future__ import annotations

import sqlalchemy as sa

md = sa.MetaData()

ingest_receipts = sa.Table(
    "ingest_receipts", md,
    sa.Column("namespace", sa.String(64), primary_key=True),
    sa.Column("id", sa.String(26), primary_key=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("doc", sa.Text, nullable=False),
)
