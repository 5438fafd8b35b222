"""Features, entitlements, grants, resets and balance snapshots on SQLAlchemy Core: SQLite (embedded default)
and PostgreSQL through pg8000 (Aurora in AWS). Resources are kept as the JSON documents the API serves, with
the columns their look-ups need beside them; exact amounts stay decimal strings inside the documents."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from billow import jsonx
from billow.adapters.sql import (
    TS,
    among,
    customer_lock,
    entitlement_lock,
    feature_use_lock,
    insert_new,
    meter_use_lock,
    reads,
    save_by_id,
    serialise,
    subject_lock,
    to_datetime,
    utc,
)
from billow.domain.fields import fits_subject_key
from billow.errors import Conflict, NotFound

md = sa.MetaData()

features = sa.Table(
    "features", md,
    sa.Column("namespace", sa.String(64), nullable=False),
    sa.Column("id", sa.String(26), primary_key=True),
    sa.Column("key", sa.String(64), nullable=False),
    sa.Column("meter_slug", sa.String(64)),
    sa.Column("doc", sa.Text, nullable=False),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("archived_at", TS),
    sa.Index("features_live_key", "namespace", "key", unique=True,
             sqlite_where=sa.text("archived_at IS NULL"), postgresql_where=sa.text("archived_at IS NULL")),
)

entitlements = sa.Table(
    "entitlements", md,
    sa.Column("namespace", sa.String(64), nullable=False),
    sa.Column("id", sa.String(26), primary_key=True),
    sa.Column("subject_key", sa.Text, nullable=False),
    sa.Column("feature_key", sa.String(64), nullable=False),
    sa.Column("feature_id", sa.String(26), nullable=False),
    sa.Column("doc", sa.Text, nullable=False),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("deleted_at", TS),
    # At most one live entitlement per feature per subject.
    sa.Index("entitlements_live", "namespace", "subject_key", "feature_key", unique=True,
             sqlite_where=sa.text("deleted_at IS NULL"), postgresql_where=sa.text("deleted_at IS NULL")),
)

grants = sa.Table(
    "grants", md,
    sa.Column("namespace", sa.String(64), nullable=False),
    sa.Column("id", sa.String(26), primary_key=True),
    sa.Column("entitlement_id", sa.String(26), nullable=False, index=True),
    sa.Column("doc", sa.Text, nullable=False),
    sa.Column("created_at", TS, nullable=False),
)

resets = sa.Table(
    "entitlement_resets", md,
    sa.Column("namespace", sa.String(64), nullable=False),
    sa.Column("entitlement_id", sa.String(26), nullable=False),
    sa.Column("at", TS, nullable=False),
    sa.Column("retain_anchor", sa.Boolean, nullable=False),
    sa.Column("preserve_overage", sa.Boolean),
    sa.Column("created_at", TS, nullable=False),
    sa.PrimaryKeyConstraint("entitlement_id", "at"),
)

# A balance snapshot: the engine state of one entitlement at one instant, so that a balance is computed from the
# latest snapshot forward instead of from the beginning of time. Late usage older than a snapshot deletes it.
snapshots = sa.Table(
    "balance_snapshots", md,
    sa.Column("namespace", sa.String(64), nullable=False),
    sa.Column("entitlement_id", sa.String(26), nullable=False),
    sa.Column("subject_key", sa.Text, nullable=False),
    sa.Column("at", TS, nullable=False),
    sa.Column("doc", sa.Text, nullable=False),
    sa.PrimaryKeyConstraint("entitlement_id", "at"),
    sa.Index("balance_snapshots_subject", "namespace", "subject_key", "at"),
)

# Late usage seen by the sink: a snapshot computed while such usage was being written is not saved.
late_usage = sa.Table(
    "late_usage", md,
    sa.Column("namespace", sa.String(64), nullable=False),
    sa.Column("subject_key", sa.Text, nullable=False),
    sa.Column("earliest", TS, nullable=False),
    sa.Column("seen_at", TS, nullable=False),
    sa.Index("late_usage_subject", "namespace", "subject_key", "seen_at"),
)


def _hold_party(c: sa.Connection, namespace: str, customer_id: str | None, subject: str | None) -> None:
    """The lock of the billable party a write goes through: its customer's (customer_lock), or, for a subject no
    customer owns, the subject's (subject_lock)."""
    if customer_id is not None:
        serialise(c, customer_lock(namespace, customer_id))
    elif subject is not None:
        serialise(c, subject_lock(namespace, subject))


def _reset(row: Any) -> dict[str, Any]:
    """A stored reset as list_resets and ledger_rows answer it."""
    return {"at": utc(row.at), "retainAnchor": row.retain_anchor, "preserveOverage": row.preserve_overage}


class SqlEntitlementStore:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.reads = reads(engine)  # (sql.reads: one-statement reads in autocommit on PostgreSQL)
        # Counts this process's writes: a cached balance computed at an older generation is stale.
        self.generation = 0

    def migrate(self) -> None:
        """The meta database to the schema head: one Alembic upgrade for every store's tables (billow.migrations)."""
        from billow.migrations import upgrade

        upgrade(self.engine)

    # -- features ---------------------------------------------------------------------------------
    def put_feature(self, namespace: str, doc: Mapping[str, Any], *, created_at: datetime,
                    archived_at: datetime | None = None, check: Callable[[], None] | None = None) -> None:
        """With `check` (a new feature's meter still there), the meter's uses are locked (meter_use_lock), the check
        runs (it raises to refuse) and the write follows in that transaction, so a deletion of the meter at once
        either sees this feature or is seen by the check. Archiving takes the lock a new entitlement of the feature
        takes (feature_use_lock), so one written at once is there when the archive is, or sees the feature archived."""
        self.generation += 1
        row = dict(namespace=namespace, id=doc["id"], key=doc["key"], meter_slug=doc.get("meterSlug"),
                   doc=jsonx.dumps(doc), created_at=created_at, archived_at=archived_at)
        if archived_at is not None:  # archiving: only a live feature (one archived meanwhile is NotFound, as after)
            with self.engine.begin() as c:
                serialise(c, feature_use_lock(namespace, doc["key"]))
                done = c.execute(features.update().where(features.c.namespace == namespace, features.c.id == doc["id"],
                                                         features.c.archived_at.is_(None))
                                 .values(doc=row["doc"], archived_at=archived_at)).rowcount
            if done != 1:
                raise NotFound(f"feature {doc['key']!r} not found")
            return
        try:
            with self.engine.begin() as c:
                if check is not None and doc.get("meterSlug"):
                    serialise(c, meter_use_lock(namespace, doc["meterSlug"]))
                    check()
                save_by_id(c, features, row)
        except IntegrityError:
            raise Conflict(f"a feature with key {doc['key']!r} already exists") from None

    def get_feature(self, namespace: str, id_or_key: str, include_archived: bool = False) -> dict[str, Any] | None:
        q = sa.select(features.c.doc).where(features.c.namespace == namespace,
                                            sa.or_(features.c.id == id_or_key, features.c.key == id_or_key))
        if not include_archived:
            q = q.where(features.c.archived_at.is_(None))
        with self.reads.connect() as c:
            row = c.execute(q.order_by(features.c.archived_at.is_(None).desc(), features.c.created_at.desc())).first()
        return jsonx.loads(row.doc) if row else None

    def list_features(self, namespace: str, include_archived: bool = False,
                      meter_slugs: list[str] | None = None) -> list[dict[str, Any]]:
        q = sa.select(features.c.doc).where(features.c.namespace == namespace)
        if not include_archived:
            q = q.where(features.c.archived_at.is_(None))
        if meter_slugs:
            q = q.where(features.c.meter_slug.in_(meter_slugs))
        with self.reads.connect() as c:
            return [jsonx.loads(r.doc) for r in c.execute(q.order_by(features.c.created_at, features.c.id))]

    # -- entitlements -----------------------------------------------------------------------------
    def put_entitlement(self, namespace: str, doc: Mapping[str, Any], *, created_at: datetime,
                        deleted_at: datetime | None = None, party: Sequence[str] | None = None,
                        check: Callable[[], None] | None = None, customer_id: str | None = None,
                        grants: Sequence[Mapping[str, Any]] = (), subject: str | None = None) -> None:
        """Save an entitlement, and the `grants` it issues as it is made (v1 issueAfterReset, v2 grants[]) in its
        transaction: a deletion of it at once never answers before its grants are there. With `party` (the subject keys of the customer its subject belongs to: one billable
        party), only if none of them has a live entitlement of its feature where it is written, else Conflict naming
        that one (`conflictingEntityId`); such writes of one feature go one at a time. The one-live-entitlement
        index is per subject: creates through two subjects of one customer at once would both go in. With
        `deleted_at` (deleting it), only a live one: one deleted meanwhile (another deletion at once) is NotFound, as
        to a later deletion, and its end (activeTo) stays the first deletion's (and `check`, with `customer_id` or
        `subject`, runs under the party's lock and the entitlement's). With `check` (a new one's feature
        still live), it runs (it raises to refuse) under the feature's lock, which its archive takes too
        (feature_use_lock): an archive at once either sees this entitlement written or is seen by the check; with
        `customer_id` (made for a customer: its customer still live), under that customer's lock too, which its
        deletion and update take (customer_lock); with `subject` instead (made through a subject no customer owns),
        under that subject's lock, which its deletion takes (subject_lock)."""
        self.generation += 1
        row = dict(namespace=namespace, id=doc["id"], subject_key=doc["subjectKey"], feature_key=doc["featureKey"],
                   feature_id=doc["featureId"], doc=jsonx.dumps(doc), created_at=created_at, deleted_at=deleted_at)
        if deleted_at is not None:  # under the lock a new grant of it takes: one written at once is there, or refused
            with self.engine.begin() as c:
                _hold_party(c, namespace, customer_id, subject)  # before the entitlement's: the writers' one order
                serialise(c, entitlement_lock(namespace, doc["id"]))
                if check is not None:
                    check()
                done = c.execute(entitlements.update().where(
                    entitlements.c.namespace == namespace, entitlements.c.id == doc["id"],
                    entitlements.c.deleted_at.is_(None)).values(doc=row["doc"], deleted_at=deleted_at)).rowcount
            if done != 1:
                raise NotFound(f"entitlement {doc['id']!r} not found")
            return
        try:
            with self.engine.begin() as c:
                if party is not None or check is not None:
                    serialise(c, feature_use_lock(namespace, doc["featureKey"]))
                _hold_party(c, namespace, customer_id, subject)  # after the feature's: no writer takes the reverse
                if check is not None:
                    check()
                if party is not None:
                    found = c.execute(self._FIND, {"ns": namespace, "keys": list(party),
                                                   "feature": doc["featureKey"]}).first()
                    if found is not None:
                        existing = jsonx.loads(found.doc)
                        raise Conflict(f"subject {existing['subjectKey']!r} already has an entitlement for feature "
                                       f"{doc['featureKey']!r}", extensions={"conflictingEntityId": existing["id"]})
                save_by_id(c, entitlements, row)
                for g in grants:
                    self._save_grant(c, namespace, g, created_at)
        except IntegrityError:
            raise Conflict(f"subject {doc['subjectKey']!r} already has an entitlement for feature "
                           f"{doc['featureKey']!r}") from None

    def replace_entitlement(self, namespace: str, old_id: str, doc: Mapping[str, Any], *, at: datetime,
                            old_doc: Mapping[str, Any], check: Callable[[], None] | None = None,
                            grants: Sequence[Mapping[str, Any]] = (), customer_id: str | None = None,
                            subject: str | None = None) -> None:
        """Delete `old_id` and insert `doc`, with the `grants` it issues, in one transaction (override). Conflict if
        `old_id` is no longer live (an override or delete beside this one ended it first) or another live
        entitlement took its place. With `check` (the feature still live; its customer, with `customer_id`, or its
        subject, with `subject`), it runs first under the feature's lock (and the customer's or the subject's), as
        put_entitlement's."""
        self.generation += 1
        try:
            with self.engine.begin() as c:
                if check is not None:
                    serialise(c, feature_use_lock(namespace, doc["featureKey"]))
                _hold_party(c, namespace, customer_id, subject)  # after the feature's, before the entitlement's
                if check is not None:
                    check()
                serialise(c, entitlement_lock(namespace, old_id))  # as a deletion: a grant of it at once is seen
                if c.execute(entitlements.update().where(entitlements.c.namespace == namespace,
                                                         entitlements.c.id == old_id, entitlements.c.deleted_at.is_(None))
                             .values(deleted_at=at, doc=jsonx.dumps(old_doc))).rowcount != 1:
                    raise Conflict(f"entitlement {old_id} was replaced or deleted meanwhile; reload it and try again")
                c.execute(entitlements.insert().values(
                    namespace=namespace, id=doc["id"], subject_key=doc["subjectKey"], feature_key=doc["featureKey"],
                    feature_id=doc["featureId"], doc=jsonx.dumps(doc), created_at=at, deleted_at=None))
                for g in grants:
                    self._save_grant(c, namespace, g, at)
        except IntegrityError:
            raise Conflict(f"subject {doc['subjectKey']!r} already has an entitlement for feature "
                           f"{doc['featureKey']!r}") from None

    def get_entitlement(self, namespace: str, entitlement_id: str, include_deleted: bool = False) -> dict[str, Any] | None:
        q = sa.select(entitlements.c.doc).where(entitlements.c.namespace == namespace, entitlements.c.id == entitlement_id)
        if not include_deleted:
            q = q.where(entitlements.c.deleted_at.is_(None))
        with self.reads.connect() as c:
            row = c.execute(q).first()
        return jsonx.loads(row.doc) if row else None

    # The statements of an entitlement check, built once: a statement made per call costs more than the query (the
    # check's SQLAlchemy statement building was ~10 % of an uncached check's time).
    _FIND = sa.select(entitlements.c.doc).where(
        entitlements.c.namespace == sa.bindparam("ns"), among(entitlements.c.subject_key, "keys"),
        entitlements.c.feature_key == sa.bindparam("feature"), entitlements.c.deleted_at.is_(None)
    ).order_by(entitlements.c.created_at, entitlements.c.id).limit(1)
    _GRANTS_OF = sa.select(grants.c.doc).where(
        grants.c.namespace == sa.bindparam("ns"), among(grants.c.entitlement_id, "ids")
    ).order_by(grants.c.created_at, grants.c.id)
    _RESETS = sa.select(resets).where(resets.c.namespace == sa.bindparam("ns"),
                                      resets.c.entitlement_id == sa.bindparam("ent")).order_by(resets.c.at)
    _LATEST_SNAPSHOT = sa.select(snapshots.c.doc).where(
        snapshots.c.namespace == sa.bindparam("ns"), snapshots.c.entitlement_id == sa.bindparam("ent"),
        snapshots.c.at <= sa.bindparam("not_after", type_=TS)).order_by(snapshots.c.at.desc()).limit(1)

    # An entitlement's resets, its latest snapshot up to an instant and its grants, in one statement (parts 0, 1, 2).
    # (Every NULL typed: PostgreSQL types a UNION's columns pairwise, and two untyped NULLs make text.)
    _SNAPSHOT_OF = _LATEST_SNAPSHOT.subquery()
    _NO_AT, _NO_FLAG, _NO_TEXT = sa.cast(sa.null(), TS), sa.cast(sa.null(), sa.Boolean), sa.cast(sa.null(), sa.Text)
    _LEDGER = sa.union_all(
        sa.select(sa.literal_column("0").label("part"), resets.c.at.label("at"), resets.c.retain_anchor,
                  resets.c.preserve_overage, _NO_TEXT.label("doc"), _NO_AT.label("created_at"),
                  _NO_TEXT.label("id")).where(resets.c.namespace == sa.bindparam("ns"),
                                              resets.c.entitlement_id == sa.bindparam("ent")),
        sa.select(sa.literal_column("1"), _NO_AT, _NO_FLAG, _NO_FLAG, _SNAPSHOT_OF.c.doc, _NO_AT, _NO_TEXT),
        sa.select(sa.literal_column("2"), _NO_AT, _NO_FLAG, _NO_FLAG, grants.c.doc, grants.c.created_at,
                  grants.c.id).where(grants.c.namespace == sa.bindparam("ns"),
                                     grants.c.entitlement_id == sa.bindparam("ent")),
    ).order_by(sa.literal_column("part"), sa.literal_column("at"), sa.literal_column("created_at"),
               sa.literal_column("id"))

    def ledger_rows(self, namespace: str, entitlement_id: str, snapshot_not_after: datetime
                    ) -> tuple[list[dict[str, Any]], dict[str, Any] | None, list[dict[str, Any]]]:
        """list_resets, latest_snapshot and list_grants of one entitlement, read by one statement: one round trip
        where they were three calls (three round trips each on PostgreSQL), and one reading of the database, so a
        reset or grant written meanwhile (each drops the snapshots it makes stale) is seen by all three or none."""
        found: tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]] = ([], [], [])
        with self.reads.connect() as c:
            for r in c.execute(self._LEDGER, {"ns": namespace, "ent": entitlement_id, "not_after": snapshot_not_after}):
                found[r.part].append(_reset(r) if r.part == 0 else jsonx.loads(r.doc))
        return found[0], found[1][0] if found[1] else None, found[2]

    def find_entitlement(self, namespace: str, subject_keys: list[str], feature_key: str) -> dict[str, Any] | None:
        with self.reads.connect() as c:
            row = c.execute(self._FIND, {"ns": namespace, "keys": list(subject_keys), "feature": feature_key}).first()
        return jsonx.loads(row.doc) if row else None

    def list_entitlements(self, namespace: str, subject_keys: list[str] | None = None, include_deleted: bool = False,
                          feature_keys: list[str] | None = None) -> list[dict[str, Any]]:
        q = sa.select(entitlements.c.doc).where(entitlements.c.namespace == namespace)
        if subject_keys is not None:
            q = q.where(among(entitlements.c.subject_key, subject_keys, self.engine))
        if feature_keys:
            q = q.where(among(entitlements.c.feature_key, feature_keys, self.engine))
        if not include_deleted:
            q = q.where(entitlements.c.deleted_at.is_(None))
        with self.reads.connect() as c:
            return [jsonx.loads(r.doc) for r in c.execute(q.order_by(entitlements.c.created_at, entitlements.c.id))]

    # -- grants -----------------------------------------------------------------------------------
    def put_grant(self, namespace: str, doc: Mapping[str, Any], *, created_at: datetime,
                  expect_doc: str | None = None, check: Callable[[], None] | None = None,
                  customer_id: str | None = None, subject: str | None = None) -> None:
        """Save a grant; with `expect_doc` (voiding it), only if it is still stored as that JSON, else Conflict: two
        voids at once (each at its own instant) would both answer 204 and the later write keep its instant only.
        With `check` (a new grant's entitlement still live), it runs (it raises to refuse) under the entitlement's
        lock (entitlement_lock), which its deletion and override take too: a deletion at once either sees this grant
        written or is seen by the check; with `customer_id` (granted through a customer), under that customer's lock
        first, which its deletion and update take (customer_lock), or with `subject` that subject's (subject_lock).
        A void's `check` runs under the entitlement's lock too, which a reset takes."""
        with self.engine.begin() as c:
            _hold_party(c, namespace, customer_id, subject)  # before the entitlement's: the writers' one order
            if check is not None:
                serialise(c, entitlement_lock(namespace, doc["entitlementId"]))
                check()
            if expect_doc is None:
                self._save_grant(c, namespace, doc, created_at)
            elif c.execute(grants.update().where(grants.c.namespace == namespace, grants.c.id == doc["id"],
                                                 grants.c.doc == expect_doc).values(doc=jsonx.dumps(doc))).rowcount != 1:
                raise Conflict(f"grant {doc['id']!r} changed meanwhile (voided?); reload it and try again")
            else:
                self._drop_snapshots_from(c, doc)
        self.generation += 1  # a new or voided grant changes balances: cached ones are stale

    @staticmethod
    def _save_grant(c: sa.Connection, namespace: str, doc: Mapping[str, Any], created_at: datetime) -> None:
        save_by_id(c, grants, dict(namespace=namespace, id=doc["id"], entitlement_id=doc["entitlementId"],
                                   doc=jsonx.dumps(doc), created_at=created_at), keep=("created_at",))
        SqlEntitlementStore._drop_snapshots_from(c, doc)

    @staticmethod
    def _drop_snapshots_from(c: sa.Connection, doc: Mapping[str, Any]) -> None:
        """A grant changes the balance from its effective time on: later snapshots no longer hold."""
        effective = utc(to_datetime(doc["effectiveAt"]))
        c.execute(snapshots.delete().where(snapshots.c.entitlement_id == doc["entitlementId"],
                                           snapshots.c.at >= effective))

    def get_grant(self, namespace: str, grant_id: str) -> dict[str, Any] | None:
        with self.reads.connect() as c:
            row = c.execute(sa.select(grants.c.doc).where(grants.c.namespace == namespace, grants.c.id == grant_id)).first()
        return jsonx.loads(row.doc) if row else None

    def list_grants(self, namespace: str, entitlement_ids: list[str] | None = None) -> list[dict[str, Any]]:
        if entitlement_ids is not None:
            with self.reads.connect() as c:
                return [jsonx.loads(r.doc) for r in c.execute(self._GRANTS_OF, {"ns": namespace,
                                                                                 "ids": list(entitlement_ids)})]
        q = sa.select(grants.c.doc).where(grants.c.namespace == namespace)
        if entitlement_ids is not None:
            q = q.where(among(grants.c.entitlement_id, entitlement_ids, self.engine))
        with self.reads.connect() as c:
            return [jsonx.loads(r.doc) for r in c.execute(q.order_by(grants.c.created_at, grants.c.id))]

    # -- resets -----------------------------------------------------------------------------------
    def add_reset(self, namespace: str, entitlement_id: str, at: datetime, *, retain_anchor: bool,
                  preserve_overage: bool | None, now: datetime, check: Callable[[], None] | None = None,
                  customer_id: str | None = None, subject: str | None = None) -> None:
        """With `check` (its entitlement still live, the reset after the current usage period's start), it runs (it
        raises to refuse) under the entitlement's lock (entitlement_lock), which its deletion, override, grants, voids
        and other resets take too: a deletion or reset at once either sees this reset written or is seen by the
        check; with `customer_id`, under that customer's lock first (customer_lock), or with `subject` that
        subject's (subject_lock)."""
        self.generation += 1
        self.generation += 1
        try:
            with self.engine.begin() as c:
                _hold_party(c, namespace, customer_id, subject)  # before the entitlement's: the writers' one order
                if check is not None:
                    serialise(c, entitlement_lock(namespace, entitlement_id))
                    check()
                c.execute(resets.insert().values(namespace=namespace, entitlement_id=entitlement_id, at=at,
                                                 retain_anchor=retain_anchor, preserve_overage=preserve_overage,
                                                 created_at=now))
                c.execute(snapshots.delete().where(snapshots.c.entitlement_id == entitlement_id, snapshots.c.at >= at))
        except IntegrityError:
            raise Conflict(f"the entitlement was already reset at {jsonx.dumps(at)}") from None

    def list_resets(self, namespace: str, entitlement_id: str) -> list[dict[str, Any]]:
        with self.reads.connect() as c:
            rows = c.execute(self._RESETS, {"ns": namespace, "ent": entitlement_id})
            return [_reset(r) for r in rows]

    # -- snapshots --------------------------------------------------------------------------------
    def latest_snapshot(self, namespace: str, entitlement_id: str, not_after: datetime) -> dict[str, Any] | None:
        with self.reads.connect() as c:
            row = c.execute(self._LATEST_SNAPSHOT, {"ns": namespace, "ent": entitlement_id, "not_after": not_after}).first()
        return jsonx.loads(row.doc) if row else None

    def save_snapshot(self, namespace: str, entitlement_id: str, subject_key: str, at: datetime,
                      doc: Mapping[str, Any], *, computed_from: datetime) -> bool:
        """Save unless late usage for the subject, older than `at`, was seen since `computed_from` (the wall
        time before the usage it rests on was read). Returns whether it was saved."""
        with self.engine.begin() as c:
            late = c.execute(sa.select(late_usage.c.earliest).where(
                late_usage.c.namespace == namespace, late_usage.c.subject_key == subject_key,
                late_usage.c.seen_at >= computed_from, late_usage.c.earliest < at).limit(1)).first()
            if late:
                return False
            # Two containers checking at once save the same state at the same reset: the first one's row stays.
            insert_new(c, snapshots, dict(namespace=namespace, entitlement_id=entitlement_id, subject_key=subject_key,
                                          at=at, doc=jsonx.dumps(doc)))
        return True

    def usage_arrived_late(self, namespace: str, earliest_by_subject: Mapping[str, datetime], now: datetime) -> None:
        """Late usage was stored: drop the snapshots it makes stale and remember it for snapshots in flight. A subject
        key longer than any entitlement's (domain/fields.subject_key) has no snapshot to drop: it is left out, so that
        it cannot fail the others' write (PostgreSQL refuses an index entry over ~2,700 bytes)."""
        earliest_by_subject = {s: t for s, t in earliest_by_subject.items() if fits_subject_key(s)}
        if not earliest_by_subject:
            return
        with self.engine.begin() as c:
            c.execute(late_usage.insert(), [{"namespace": namespace, "subject_key": s, "earliest": t, "seen_at": now}
                                            for s, t in earliest_by_subject.items()])
            # One statement for every subject (executemany): the sink reports a batch's subjects at once.
            c.execute(snapshots.delete().where(snapshots.c.namespace == namespace,
                                               snapshots.c.subject_key == sa.bindparam("late_subject"),
                                               snapshots.c.at > sa.bindparam("late_earliest")),
                      [{"late_subject": s, "late_earliest": t} for s, t in earliest_by_subject.items()])

    def forget_late_usage(self, before: datetime) -> None:
        self.generation += 1
        with self.engine.begin() as c:
            c.execute(late_usage.delete().where(late_usage.c.seen_at < before))

