"""Installed apps and customer app data (ports.AppStore) on SQLAlchemy Core (SQLite embedded, PostgreSQL in
AWS). An app is OpenMeter's App JSON in `doc`; what must never be served (the Stripe API key, the webhook
signing secret) is kept apart in `secrets`. App ids are ULIDs, unique across namespaces, so a Stripe webhook
(which carries no API key) finds its namespace from the app id in its path."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from billow import jsonx
from billow.adapters.sql import app_use_lock, reads, serialise, upsert
from billow.errors import Conflict, NotFound

md = sa.MetaData()

apps = sa.Table(
    "apps", md,
    sa.Column("namespace", sa.String(64), nullable=False),
    sa.Column("id", sa.String(26), primary_key=True),
    sa.Column("type", sa.String(32), nullable=False),
    sa.Column("deleted", sa.Boolean, nullable=False),
    sa.Column("singleton", sa.String(32)),
    sa.Column("doc", sa.Text, nullable=False),
    sa.Column("secrets", sa.Text),
    sa.Index("apps_namespace", "namespace", "type"),
    sa.Index("apps_singleton", "namespace", "singleton", unique=True),
)

customer_apps = sa.Table(
    "customer_apps", md,
    sa.Column("namespace", sa.String(64), nullable=False),
    sa.Column("customer_id", sa.String(26), nullable=False),
    sa.Column("app_id", sa.String(26), nullable=False),
    sa.Column("doc", sa.Text, nullable=False),
    sa.PrimaryKeyConstraint("namespace", "customer_id", "app_id"),
)


class SqlAppStore:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.reads = reads(engine)  # (sql.reads: one-statement reads in autocommit on PostgreSQL)

    def migrate(self) -> None:
        """The meta database to the schema head: one Alembic upgrade for every store's tables (billow.migrations)."""
        from billow.migrations import upgrade

        upgrade(self.engine)

    # -- apps ------------------------------------------------------------------------------------------------
    def add_app(self, namespace: str, doc: dict[str, Any], secrets: dict[str, Any] | None = None, *,
                singleton: str | None = None) -> dict[str, Any]:
        """Insert a new app. With `singleton`, at most one per namespace: if another process made it first, that
        app is returned instead (and nothing is written)."""
        row = {"namespace": namespace, "id": doc["id"], "type": doc["type"], "deleted": False,
               "singleton": singleton, "doc": jsonx.dumps(doc),
               "secrets": jsonx.dumps(secrets) if secrets is not None else None}
        try:
            with self.engine.begin() as c:
                c.execute(apps.insert().values(**row))
        except IntegrityError:
            if singleton is None:
                raise
            with self.reads.connect() as c:
                found = c.execute(sa.select(apps.c.doc).where(apps.c.namespace == namespace,
                                                              apps.c.singleton == singleton)).first()
            if found is None:
                raise
            return dict(jsonx.loads(found.doc))
        return doc

    def put_app(self, namespace: str, doc: dict[str, Any], secrets: dict[str, Any] | None = None, *,
                live: bool = False, check: Callable[[], None] | None = None, expect_doc: str | None = None) -> None:
        """Update an existing app's document (and its secrets, when given). With `live`, only an app still installed
        (else NotFound: uninstalled meanwhile, as to a later call). With `expect_doc`, only an app still stored as
        that JSON (else Conflict: another container's update or uninstall wrote it since it was read). With `check`
        (uninstalling it: no billing profile uses it), the app's uses are locked (app_use_lock), the check runs (it
        raises to refuse) and the write follows in that transaction, so a profile written to use it at once is
        either seen by the check or sees the app uninstalled."""
        values: dict[str, Any] = {"doc": jsonx.dumps(doc), "deleted": doc.get("deletedAt") is not None}
        if secrets is not None:
            values["secrets"] = jsonx.dumps(secrets)
        q = apps.update().where(apps.c.namespace == namespace, apps.c.id == doc["id"])
        if live:
            q = q.where(apps.c.deleted.is_(False))
        if expect_doc is not None:
            q = q.where(apps.c.doc == expect_doc)
        with self.engine.begin() as c:
            if check is not None:
                serialise(c, app_use_lock(namespace, doc["id"]))
                check()
            done = c.execute(q.values(**values)).rowcount
        if expect_doc is not None and done != 1:
            raise Conflict(f"app {doc['id']} changed meanwhile; reload it and try again")
        if live and done != 1:
            raise NotFound(f"app {doc['id']} not found")

    def get_app(self, namespace: str, id_: str) -> dict[str, Any] | None:
        with self.reads.connect() as c:
            row = c.execute(sa.select(apps.c.doc).where(apps.c.namespace == namespace, apps.c.id == id_)).first()
        return jsonx.loads(row.doc) if row else None

    def app_secrets(self, namespace: str, id_: str) -> dict[str, Any]:
        with self.reads.connect() as c:
            row = c.execute(sa.select(apps.c.secrets).where(apps.c.namespace == namespace, apps.c.id == id_)).first()
        return dict(jsonx.loads(row.secrets)) if row and row.secrets else {}

    def namespace_of_app(self, id_: str) -> str | None:
        """The namespace an app id belongs to (ids are unique across namespaces)."""
        with self.reads.connect() as c:
            row = c.execute(sa.select(apps.c.namespace).where(apps.c.id == id_)).first()
        return str(row.namespace) if row else None

    def list_apps(self, namespace: str, include_deleted: bool = False) -> list[dict[str, Any]]:
        q = sa.select(apps.c.doc).where(apps.c.namespace == namespace)
        if not include_deleted:
            q = q.where(apps.c.deleted.is_(False))
        with self.reads.connect() as c:
            return [jsonx.loads(r.doc) for r in c.execute(q.order_by(apps.c.id))]

    # -- customer app data ---------------------------------------------------------------------------------------
    def put_customer_app(self, namespace: str, customer_id: str, app_id: str, doc: dict[str, Any] | None) -> None:
        """Replace the customer's data for the app (None deletes it). One upsert: a delete then an insert let two
        containers writing at once both find nothing to delete and the later insert fail on the primary key."""
        with self.engine.begin() as c:
            if doc is None:
                c.execute(customer_apps.delete().where(customer_apps.c.namespace == namespace,
                                                       customer_apps.c.customer_id == customer_id,
                                                       customer_apps.c.app_id == app_id))
            else:
                upsert(c, customer_apps, dict(namespace=namespace, customer_id=customer_id, app_id=app_id,
                                              doc=jsonx.dumps(doc)))

    def customer_apps(self, namespace: str, customer_id: str) -> dict[str, dict[str, Any]]:
        """The customer's data per app id."""
        q = sa.select(customer_apps.c.app_id, customer_apps.c.doc).where(
            customer_apps.c.namespace == namespace, customer_apps.c.customer_id == customer_id)
        with self.reads.connect() as c:
            return {r.app_id: jsonx.loads(r.doc) for r in c.execute(q.order_by(customer_apps.c.app_id))}

    def app_in_customer_data(self, namespace: str, app_id: str) -> bool:
        with self.reads.connect() as c:
            return c.execute(sa.select(customer_apps.c.app_id).where(
                customer_apps.c.namespace == namespace, customer_apps.c.app_id == app_id).limit(1)).first() is not None
