"""LLM price overrides on SQLAlchemy Core (SQLite embedded, PostgreSQL in AWS): one row per (namespace,
provider, model, effectiveFrom), the override itself as a JSON document."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from billow import jsonx
from billow.adapters.sql import reads
from billow.domain.llm import PriceOverride
from billow.errors import Conflict
from billow.timeutil import format_rfc3339

md = sa.MetaData()

llm_prices = sa.Table(
    "llm_price_overrides", md,
    sa.Column("id", sa.String(26), primary_key=True),
    sa.Column("namespace", sa.String(64), nullable=False),
    sa.Column("provider", sa.String(128), nullable=False),
    sa.Column("model", sa.String(256), nullable=False),
    # RFC 3339 UTC (sorts as text); "" = effective for all usage
    sa.Column("effective_from", sa.String(32), nullable=False),
    sa.Column("doc", sa.Text, nullable=False),
    sa.UniqueConstraint("namespace", "provider", "model", "effective_from", name="llm_price_overrides_unique"),
)


class SqlLlmPriceStore:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.reads = reads(engine)  # (sql.reads: one-statement reads in autocommit on PostgreSQL)

    def migrate(self) -> None:
        """The meta database to the schema head: one Alembic upgrade for every store's tables (billow.migrations)."""
        from billow.migrations import upgrade

        upgrade(self.engine)

    def put_override(self, namespace: str, override: PriceOverride) -> None:
        eff = format_rfc3339(override.effective_from) if override.effective_from else ""
        try:
            with self.engine.begin() as c:
                c.execute(llm_prices.insert().values(
                    id=override.id, namespace=namespace, provider=override.provider, model=override.model,
                    effective_from=eff, doc=jsonx.dumps(override.to_json())))
        except IntegrityError:
            when = f"effective from {eff}" if eff else "without effectiveFrom"
            raise Conflict(f"a price for {override.provider}/{override.model} {when} already exists; "
                           "delete it first") from None

    def list_overrides(self, namespace: str, provider: str | None = None,
                       model: str | None = None) -> list[PriceOverride]:
        q = sa.select(llm_prices.c.provider, llm_prices.c.model, llm_prices.c.effective_from, llm_prices.c.doc).where(
            llm_prices.c.namespace == namespace)
        if provider is not None:
            q = q.where(llm_prices.c.provider == provider.lower())
        if model is not None:
            q = q.where(llm_prices.c.model == model.lower())
        with self.reads.connect() as c:  # sorted here, in code point order: an ORDER BY follows the collation
            rows = [(r.provider, r.model, r.effective_from, r.doc) for r in c.execute(q)]
        return [PriceOverride.from_json(jsonx.loads(doc)) for *_, doc in sorted(rows)]

    def delete_override(self, namespace: str, override_id: str) -> bool:
        with self.engine.begin() as c:
            result = c.execute(llm_prices.delete().where(llm_prices.c.namespace == namespace,
                                                         llm_prices.c.id == override_id))
        return bool(result.rowcount)
