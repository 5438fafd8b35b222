"""API keys on SQLAlchemy Core (SQLite embedded, PostgreSQL in AWS): the record and the SHA-256 of the secret."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from billow import jsonx
from billow.adapters.sql import reads, save_by_id

md = sa.MetaData()

api_keys = sa.Table(
    "api_keys", md,
    sa.Column("id", sa.String(26), primary_key=True),
    sa.Column("namespace", sa.String(64), nullable=False, index=True),
    sa.Column("key_hash", sa.String(64), nullable=False),
    sa.Column("doc", sa.Text, nullable=False),
)


class SqlKeyStore:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.reads = reads(engine)  # (sql.reads: one-statement reads in autocommit on PostgreSQL)

    def migrate(self) -> None:
        """The meta database to the schema head: one Alembic upgrade for every store's tables (billow.migrations)."""
        from billow.migrations import upgrade

        upgrade(self.engine)

    def put_key(self, doc: dict[str, Any], key_hash: str) -> None:
        with self.engine.begin() as c:
            save_by_id(c, api_keys, {"id": doc["id"], "namespace": doc["namespace"], "key_hash": key_hash,
                                     "doc": jsonx.dumps(doc)})

    def get_key(self, key_id: str) -> tuple[dict[str, Any], str] | None:
        with self.reads.connect() as c:
            row = c.execute(sa.select(api_keys.c.doc, api_keys.c.key_hash).where(api_keys.c.id == key_id)).first()
        return (jsonx.loads(row.doc), row.key_hash) if row else None

    def list_keys(self, namespace: str | None) -> list[dict[str, Any]]:
        q = sa.select(api_keys.c.doc)
        if namespace is not None:
            q = q.where(api_keys.c.namespace == namespace)
        with self.reads.connect() as c:
            return [jsonx.loads(r.doc) for r in c.execute(q.order_by(api_keys.c.id))]
