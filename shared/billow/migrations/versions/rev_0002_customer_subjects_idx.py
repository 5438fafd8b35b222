"""Index customer_subjects by (namespace, customer_id). Every customer create, update and delete
(SqlMetaStore.put_customer) first deletes the customer's subject links by customer id, and
subjects_of_customers looks them up the same way; the (namespace, subject_key) primary key serves neither, so
each scanned all of the namespace's links.

Revision ID: 0002_customer_subjects_idx
Revises: 0001_baseline
"""

from __future__ import annotations

from alembic import op

revision = "0002_customer_subjects_idx"
down_revision = "0001_baseline"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # IF NOT EXISTS: a database whose tables a newer `create_all` made may already have it.
    op.create_index("customer_subjects_customer", "customer_subjects", ["namespace", "customer_id"],
                    if_not_exists=True)


def downgrade() -> None:
    op.drop_index("customer_subjects_customer", table_name="customer_subjects", if_exists=True)
