"""Plans, add-ons, plan add-ons and subscriptions on SQLAlchemy Core (SQLite embedded, PostgreSQL in AWS). Each
resource is kept as the JSON document the API serves, with the columns its look-ups need beside it; amounts
stay decimal strings inside the documents."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from billow import jsonx
from billow.adapters.sql import (
    addon_use_lock,
    customer_lock,
    feature_use_lock,
    reads,
    save_by_id,
    serialise,
    version_lock,
)
from billow.errors import Conflict

md = sa.MetaData()


def _versioned(name: str) -> sa.Table:
    return sa.Table(
        name, md,
        sa.Column("namespace", sa.String(64), nullable=False),
        sa.Column("id", sa.String(26), primary_key=True),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("deleted", sa.Boolean, nullable=False),
        sa.Column("doc", sa.Text, nullable=False),
        sa.UniqueConstraint("namespace", "key", "version", name=f"{name}_key_version"),
    )


plans = _versioned("plans")
addons = _versioned("addons")

plan_addons = sa.Table(
    "plan_addons", md,
    sa.Column("namespace", sa.String(64), nullable=False),
    sa.Column("id", sa.String(26), primary_key=True),
    sa.Column("plan_id", sa.String(26), nullable=False, index=True),
    sa.Column("addon_id", sa.String(26), nullable=False),
    sa.Column("deleted", sa.Boolean, nullable=False),
    sa.Column("doc", sa.Text, nullable=False),
)

subscriptions = sa.Table(
    "subscriptions", md,
    sa.Column("namespace", sa.String(64), nullable=False),
    sa.Column("id", sa.String(26), primary_key=True),
    sa.Column("customer_id", sa.String(26), nullable=False, index=True),
    sa.Column("doc", sa.Text, nullable=False),
)

KINDS = {"plan": plans, "addon": addons}


class SqlCatalogStore:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.reads = reads(engine)  # (sql.reads: one-statement reads in autocommit on PostgreSQL)

    def migrate(self) -> None:
        """The meta database to the schema head: one Alembic upgrade for every store's tables (billow.migrations)."""
        from billow.migrations import upgrade

        upgrade(self.engine)

    # -- plans and add-ons (versioned by key) ------------------------------------------------------------
    def put_versioned(self, kind: str, namespace: str, doc: dict[str, Any]) -> None:
        """Save a plan or add-on version as it is (a new one: Conflict when its key has that version already)."""
        try:
            with self.engine.begin() as c:
                save_by_id(c, KINDS[kind], self._version_row(namespace, doc))
        except IntegrityError:
            raise Conflict(f"{kind} {doc['key']!r} version {doc['version']} already exists") from None

    def change_versions[T](self, kind: str, namespace: str, key: str,
                           change: Callable[[list[dict[str, Any]]], tuple[T, Sequence[dict[str, Any]]]], *,
                           feature_keys: Callable[[list[dict[str, Any]]], Sequence[str]] | None = None) -> T:
        """One version change of a key (create, next, update, publish, archive, delete), one at a time per key: the
        key's lock (version_lock) is taken, its versions (deleted ones too) are read in this transaction, the locks
        of the features `feature_keys` names from them (feature_use_lock, which a feature's archive takes: a
        publish's check then sees the archive or is seen) are taken in one order, `change` runs (it raises to write
        nothing; it must not write through the store) and the versions it returns are written in this transaction,
        an add-on version under its lock too (addon_use_lock, which adding it to a subscription takes). A publish read
        the key's versions, wrote the new one, then ended the one it replaced, each on its own: an archive of that
        one landing in between ended it after the new one began (two versions in force)."""
        table = KINDS[kind]
        with self.engine.begin() as c:
            serialise(c, version_lock(namespace, kind, key))
            every = [jsonx.loads(r.doc) for r in c.execute(
                sa.select(table.c.doc).where(table.c.namespace == namespace, table.c.key == key)
                .order_by(table.c.version))]
            for feature in sorted(set(feature_keys(every) if feature_keys is not None else ())):
                serialise(c, feature_use_lock(namespace, feature))
            result, written = change(every)
            if kind == "addon":  # after the key's and the features': no writer takes them the other way round
                for addon_id in sorted({d["id"] for d in written}):
                    serialise(c, addon_use_lock(namespace, addon_id))
            for doc in written:
                save_by_id(c, table, self._version_row(namespace, doc))
        return result

    @staticmethod
    def _version_row(namespace: str, doc: dict[str, Any]) -> dict[str, Any]:
        return {"id": doc["id"], "namespace": namespace, "key": doc["key"], "version": doc["version"],
                "deleted": doc.get("deletedAt") is not None, "doc": jsonx.dumps(doc)}

    def get_versioned(self, kind: str, namespace: str, id_: str) -> dict[str, Any] | None:
        table = KINDS[kind]
        with self.reads.connect() as c:
            row = c.execute(sa.select(table.c.doc).where(table.c.namespace == namespace, table.c.id == id_)).first()
        return jsonx.loads(row.doc) if row else None

    def list_versioned(self, kind: str, namespace: str, *, key: str | None = None,
                       include_deleted: bool = False) -> list[dict[str, Any]]:
        """Ordered by key, then version."""
        table = KINDS[kind]
        q = sa.select(table.c.doc).where(table.c.namespace == namespace)
        if key is not None:
            q = q.where(table.c.key == key)
        if not include_deleted:
            q = q.where(table.c.deleted.is_(False))
        with self.reads.connect() as c:
            return [jsonx.loads(r.doc) for r in c.execute(q.order_by(table.c.key, table.c.version))]

    # -- plan add-ons ------------------------------------------------------------------------------------
    def put_plan_addon(self, namespace: str, doc: dict[str, Any]) -> None:
        with self.engine.begin() as c:
            save_by_id(c, plan_addons, {"id": doc["id"], "namespace": namespace, "plan_id": doc["planId"],
                                        "addon_id": doc["addon"]["id"], "deleted": doc.get("deletedAt") is not None,
                                        "doc": jsonx.dumps(doc)})

    def change_plan_addons(self, namespace: str, plan_id: str,
                           change: Callable[[dict[str, Any] | None, list[dict[str, Any]]], dict[str, Any]]
                           ) -> dict[str, Any]:
        """Write the plan add-on `change` makes (a new one, or one of the plan's changed) from the plan and its live
        add-ons as they are in this transaction, which holds the plan's row until it ends (`change` raises to write
        nothing; it must not call the store). Writers of one plan's add-ons, and its update and publish (which write
        its row), go one after another: two adds of one add-on at once would each find it missing and both insert
        it, and a write after a look that found a draft would land on the plan its publish made meanwhile."""
        with self.engine.begin() as c:
            if c.dialect.name == "sqlite":  # its write lock first (FOR UPDATE is PostgreSQL's), as meter_lock does
                c.execute(plans.update().where(plans.c.namespace == namespace, plans.c.id == plan_id)
                          .values(doc=plans.c.doc))
            row = c.execute(sa.select(plans.c.doc).where(plans.c.namespace == namespace, plans.c.id == plan_id)
                            .with_for_update()).first()
            live = [jsonx.loads(r.doc) for r in c.execute(
                sa.select(plan_addons.c.doc).where(plan_addons.c.namespace == namespace,
                                                   plan_addons.c.plan_id == plan_id, plan_addons.c.deleted.is_(False))
                .order_by(plan_addons.c.id))]
            doc = change(jsonx.loads(row.doc) if row else None, live)
            save_by_id(c, plan_addons, {"id": doc["id"], "namespace": namespace, "plan_id": doc["planId"],
                                        "addon_id": doc["addon"]["id"], "deleted": doc.get("deletedAt") is not None,
                                        "doc": jsonx.dumps(doc)})
        return doc

    def list_plan_addons(self, namespace: str, plan_id: str) -> list[dict[str, Any]]:
        q = sa.select(plan_addons.c.doc).where(plan_addons.c.namespace == namespace, plan_addons.c.plan_id == plan_id,
                                               plan_addons.c.deleted.is_(False))
        with self.reads.connect() as c:
            return [jsonx.loads(r.doc) for r in c.execute(q.order_by(plan_addons.c.id))]

    # -- subscriptions -------------------------------------------------------------------------------------
    def put_subscription(self, namespace: str, doc: dict[str, Any], *, expect_doc: str | None = None,
                         check: Callable[[list[dict[str, Any]]], None] | None = None,
                         addon_id: str | None = None, others: Sequence[tuple[dict[str, Any], str]] = ()) -> None:
        """Save a subscription; with `expect_doc`, only if it is still stored as that JSON (what it was read as),
        else Conflict: another writer changed it since (two add-on adds at once). With `check`, it runs (it raises to
        refuse) on the customer's subscriptions as they are in this transaction, under the lock add_subscription
        takes (customer_lock): a continued subscription (its cancelation unscheduled) and a new one starting where
        it ended, at once, would each check without the other and both run. With `addon_id` (an add-on added), the
        check runs under the add-on version's lock too (addon_use_lock), which its archive takes: an archive at once
        either sees the add-on on the subscription or is seen by the check. `others` (with `check`: a restore's
        deletions of the customer's next subscriptions) are written in the same transaction, each only if still
        stored as the JSON beside it: all are written, or (Conflict) none."""
        row = {"id": doc["id"], "namespace": namespace, "customer_id": doc["customerId"], "doc": jsonx.dumps(doc)}
        with self.engine.begin() as c:
            if check is not None:
                serialise(c, customer_lock(namespace, doc["customerId"]))
                if addon_id is not None:  # after the customer's: no writer takes them the other way round
                    serialise(c, addon_use_lock(namespace, addon_id))
                check(self._of_customer(c, namespace, doc["customerId"]))
            if expect_doc is None:
                save_by_id(c, subscriptions, row)
                return
            for other, other_as in [*others, (doc, expect_doc)]:
                self._write_as_read(c, namespace, other, other_as)

    def add_subscription(self, namespace: str, doc: dict[str, Any],
                         check: Callable[[list[dict[str, Any]]], None], *, ending: dict[str, Any] | None = None,
                         expect_doc: str | None = None) -> None:
        """Insert a new subscription if `check` passes (it raises when not) on its customer's subscriptions as they
        are in this transaction, one such add per customer at a time: two containers adding at once would each
        check without the other's and both write (two subscriptions where the check allows one). With `ending` (a
        plan change), the subscription it ends is written in this transaction, only if still stored as
        `expect_doc` (else Conflict, and the new one is not written either). A subscription on a plan version is
        checked under its plan key's lock too (version_lock), which the version's archive, deletion and the publish
        that ends it take: `check` sees the version as they left it, or they run after the subscription is written.
        That lock is taken before the customer's, as a key's version change takes it before its features' and an
        entitlement's write takes features' before the customer's: no cycle of writers waiting on each other."""
        with self.engine.begin() as c:
            if doc.get("plan"):
                serialise(c, version_lock(namespace, "plan", doc["plan"]["key"]))
            serialise(c, customer_lock(namespace, doc["customerId"]))
            check(self._of_customer(c, namespace, doc["customerId"]))
            if ending is not None:
                self._write_as_read(c, namespace, ending, expect_doc)
            c.execute(subscriptions.insert().values(id=doc["id"], namespace=namespace, customer_id=doc["customerId"],
                                                    doc=jsonx.dumps(doc)))

    @staticmethod
    def _write_as_read(c: Any, namespace: str, doc: dict[str, Any], expect_doc: str | None) -> None:
        """Write the subscription only if it is still stored as `expect_doc`, else Conflict (raised in the
        transaction: nothing it wrote is kept)."""
        if c.execute(subscriptions.update().where(
                subscriptions.c.namespace == namespace, subscriptions.c.id == doc["id"],
                subscriptions.c.doc == expect_doc).values(doc=jsonx.dumps(doc))).rowcount != 1:
            raise Conflict(f"subscription {doc['id']} changed meanwhile; reload it and try again")

    @staticmethod
    def _of_customer(c: Any, namespace: str, customer_id: str) -> list[dict[str, Any]]:
        return [jsonx.loads(r.doc) for r in c.execute(
            sa.select(subscriptions.c.doc).where(subscriptions.c.namespace == namespace,
                                                 subscriptions.c.customer_id == customer_id)
            .order_by(subscriptions.c.id))]

    def get_subscription(self, namespace: str, id_: str) -> dict[str, Any] | None:
        q = sa.select(subscriptions.c.doc).where(subscriptions.c.namespace == namespace, subscriptions.c.id == id_)
        with self.reads.connect() as c:
            row = c.execute(q).first()
        return jsonx.loads(row.doc) if row else None

    def list_subscriptions(self, namespace: str, customer_id: str | None = None, *,
                           customer_ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """The namespace's subscriptions, or one customer's, or (`customer_ids`) those of these customers."""
        q = sa.select(subscriptions.c.doc).where(subscriptions.c.namespace == namespace)
        if customer_id is not None:
            q = q.where(subscriptions.c.customer_id == customer_id)
        if customer_ids is not None:
            q = q.where(subscriptions.c.customer_id.in_(list(customer_ids)))
        with self.reads.connect() as c:
            return [jsonx.loads(r.doc) for r in c.execute(q.order_by(subscriptions.c.id))]
