"""Consumer-portal tokens on SQLAlchemy Core (SQLite embedded, PostgreSQL in AWS): the token record, the SHA-256 of
its secret, and when it was invalidated. Opened through `Container.store(SqlPortalStore)`."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa

from billow import jsonx
from billow.adapters.sql import TS, reads, utc
from billow.timeutil import format_rfc3339

md = sa.MetaData()

portal_tokens = sa.Table(
    "portal_tokens", md,
    sa.Column("id", sa.String(26), primary_key=True),
    sa.Column("namespace", sa.String(64), nullable=False),
    sa.Column("subject", sa.Text, nullable=False),
    sa.Column("token_hash", sa.String(64), nullable=False),
    sa.Column("invalidated_at", TS),
    sa.Column("doc", sa.Text, nullable=False),  # id, subject, allowedMeterSlugs, createdAt, expiresAt
    sa.Index("portal_tokens_by_subject", "namespace", "subject"),
)


def _doc(row: Any) -> dict[str, Any]:
    doc: dict[str, Any] = jsonx.loads(row.doc)
    at = utc(row.invalidated_at)
    if at is not None:
        doc["invalidatedAt"] = format_rfc3339(at)
    return doc


class SqlPortalStore:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.reads = reads(engine)  # (sql.reads: one-statement reads in autocommit on PostgreSQL)

    def migrate(self) -> None:
        """The meta database to the schema head: one Alembic upgrade for every store's tables (billow.migrations)."""
        from billow.migrations import upgrade

        upgrade(self.engine)

    def put_token(self, namespace: str, doc: dict[str, Any], token_hash: str) -> None:
        with self.engine.begin() as c:
            c.execute(portal_tokens.insert().values(id=doc["id"], namespace=namespace, subject=doc["subject"],
                                                    token_hash=token_hash, doc=jsonx.dumps(doc)))

    def get_token(self, token_id: str) -> tuple[str, dict[str, Any], str] | None:
        """(namespace, record, secret hash) of any namespace: the token itself says which one it acts for."""
        with self.reads.connect() as c:
            row = c.execute(sa.select(portal_tokens).where(portal_tokens.c.id == token_id)).first()
        return (row.namespace, _doc(row), row.token_hash) if row else None

    def list_tokens(self, namespace: str, limit: int) -> list[dict[str, Any]]:
        """Newest first."""
        q = (sa.select(portal_tokens).where(portal_tokens.c.namespace == namespace)
             .order_by(portal_tokens.c.id.desc()).limit(limit))
        with self.reads.connect() as c:
            return [_doc(r) for r in c.execute(q)]

    def invalidate(self, namespace: str, *, token_id: str | None, subject: str | None, at: datetime) -> int:
        """Invalidate the namespace's live tokens with this id or for this subject; how many were live."""
        match = []
        if token_id is not None:
            match.append(portal_tokens.c.id == token_id)
        if subject is not None:
            match.append(portal_tokens.c.subject == subject)
        if not match:
            return 0
        with self.engine.begin() as c:
            res = c.execute(portal_tokens.update()
                            .where(portal_tokens.c.namespace == namespace, portal_tokens.c.invalidated_at.is_(None),
                                   sa.or_(*match))
                            .values(invalidated_at=at))
        return int(res.rowcount or 0)

    def exists(self, namespace: str, token_id: str) -> bool:
        with self.reads.connect() as c:
            return c.execute(sa.select(portal_tokens.c.id).where(
                portal_tokens.c.namespace == namespace, portal_tokens.c.id == token_id)).first() is not None
