"""Notification channels, rules, events and per-(event, channel) delivery state on SQLAlchemy Core (SQLite
embedded, PostgreSQL in AWS). One event per dedup key is a unique index; a delivery is claimed by a
conditional UPDATE on its version, so two dispatchers never send the same delivery."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from billow import jsonx
from billow.adapters.sql import TS, channel_use_lock, feature_use_lock, reads, save_by_id, serialise, utc
from billow.domain.notifications import Delivery
from billow.errors import Conflict, NotFound

md = sa.MetaData()

channels = sa.Table(
    "notification_channels", md,
    sa.Column("id", sa.String(26), primary_key=True),
    sa.Column("namespace", sa.String(64), nullable=False, index=True),
    sa.Column("deleted", sa.Boolean, nullable=False, default=False),
    sa.Column("doc", sa.Text, nullable=False),
)

rules = sa.Table(
    "notification_rules", md,
    sa.Column("id", sa.String(26), primary_key=True),
    sa.Column("namespace", sa.String(64), nullable=False, index=True),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("active", sa.Boolean, nullable=False),  # neither deleted nor disabled
    sa.Column("deleted", sa.Boolean, nullable=False, default=False),
    sa.Column("doc", sa.Text, nullable=False),
    sa.Index("notification_rules_active", "active", "type"),
)

events = sa.Table(
    "notification_events", md,
    sa.Column("id", sa.String(26), primary_key=True),
    sa.Column("namespace", sa.String(64), nullable=False),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("rule_id", sa.String(26), nullable=False),
    sa.Column("subject_key", sa.Text),
    sa.Column("feature_id", sa.String(26)),
    sa.Column("feature_key", sa.String(64)),
    sa.Column("dedup_key", sa.String(512)),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("doc", sa.Text, nullable=False),
    sa.Index("notification_events_ns_created", "namespace", "created_at"),
    sa.Index("notification_events_dedup", "namespace", "dedup_key", unique=True),
)

deliveries = sa.Table(
    "notification_deliveries", md,
    sa.Column("event_id", sa.String(26), nullable=False),
    sa.Column("channel_id", sa.String(26), nullable=False),
    sa.Column("namespace", sa.String(64), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text, nullable=False, default=""),
    sa.Column("tries", sa.Integer, nullable=False, default=0),  # attempts since the event was (re)sent
    sa.Column("attempts", sa.Text, nullable=False, default="[]"),  # every attempt, JSON
    # When the delivery is due: the next attempt, or (while SENDING) when the claim lapses. NULL: never.
    sa.Column("due_at", TS),
    sa.Column("updated_at", TS, nullable=False),
    sa.Column("version", sa.Integer, nullable=False, default=0),
    sa.PrimaryKeyConstraint("event_id", "channel_id"),
    sa.Index("notification_deliveries_due", "due_at"),
)


def _delivery(row: Any) -> Delivery:
    return Delivery(namespace=row.namespace, event_id=row.event_id, channel_id=row.channel_id, state=row.state,
                    reason=row.reason, tries=row.tries, attempts=jsonx.loads(row.attempts), due_at=utc(row.due_at),
                    updated_at=utc(row.updated_at) or datetime.min, version=row.version)


def _put(engine: sa.Engine, table: sa.Table, namespace: str, row: dict[str, Any], *, live: bool, what: str,
         locks: Iterable[str] = (), check: Callable[[], None] | None = None, expect_doc: str | None = None) -> None:
    """Insert or replace `row` by id; with `live`, only replace a row not deleted (else NotFound); with `expect_doc`,
    only one still stored as that JSON (else Conflict: another container wrote it since it was read). With `check`,
    the serialise() `locks` are taken (in one order, so two writers never wait on each other), then `check` runs (it
    raises to refuse) and the write follows in that transaction."""
    with engine.begin() as c:
        if check is not None:
            for name in sorted(set(locks)):  # features' ("entitlements.feature:...") before channels'
                serialise(c, name)
            check()
        if not live and expect_doc is None:
            save_by_id(c, table, row)
            return
        q = table.update().where(table.c.namespace == namespace, table.c.id == row["id"])
        if live:
            q = q.where(table.c.deleted.is_(False))
        if expect_doc is not None:
            q = q.where(table.c.doc == expect_doc)
        if c.execute(q.values(**row)).rowcount != 1:
            if expect_doc is not None:  # changed or deleted meanwhile: the caller reads it again
                raise Conflict(f"{what} {row['id']!r} changed meanwhile; reload it and try again")
            raise NotFound(f"{what} {row['id']!r} was deleted")


class SqlNotificationStore:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.reads = reads(engine)  # (sql.reads: one-statement reads in autocommit on PostgreSQL)

    def migrate(self) -> None:
        """The meta database to the schema head: one Alembic upgrade for every store's tables (billow.migrations)."""
        from billow.migrations import upgrade

        upgrade(self.engine)

    # -- channels and rules ----------------------------------------------------------------------------
    def put_channel(self, namespace: str, doc: dict[str, Any], *, live: bool = False,
                    check: Callable[[], None] | None = None, expect_doc: str | None = None) -> None:
        """Save a channel; with `live`, only replace one still live (else NotFound: deleted since it was read, as
        by another container's DELETE, which an update must not undo); with `expect_doc`, only one still stored as
        that JSON (else Conflict: another update or deletion wrote it since it was read). With `check` (deleting it:
        no live rule names it), the channel's uses are locked (channel_use_lock), the check runs (it raises to
        refuse) and the write follows in that transaction, so a rule written to name it at once is either seen by
        the check or sees the channel deleted."""
        _put(self.engine, channels, namespace, {"id": doc["id"], "namespace": namespace,
                                                "deleted": bool(doc.get("deletedAt")), "doc": jsonx.dumps(doc)},
             live=live, what="notification channel", locks=[channel_use_lock(namespace, doc["id"])], check=check,
             expect_doc=expect_doc)

    def get_channel(self, namespace: str, channel_id: str) -> dict[str, Any] | None:
        with self.reads.connect() as c:
            row = c.execute(sa.select(channels.c.doc).where(channels.c.namespace == namespace,
                                                            channels.c.id == channel_id)).first()
        return jsonx.loads(row.doc) if row else None

    def list_channels(self, namespace: str, ids: Iterable[str] | None = None) -> list[dict[str, Any]]:
        q = sa.select(channels.c.doc).where(channels.c.namespace == namespace)
        if ids is not None:
            q = q.where(channels.c.id.in_(list(ids)))
        with self.reads.connect() as c:
            return [jsonx.loads(r.doc) for r in c.execute(q.order_by(channels.c.id))]

    def put_rule(self, namespace: str, doc: dict[str, Any], *, live: bool = False,
                 check: Callable[[], None] | None = None, expect_doc: str | None = None) -> None:
        """Save a rule; with `live`, only replace one still live (else NotFound), with `expect_doc` only one still
        stored as that JSON (else Conflict), as put_channel. With `check` (the
        channels and features it names still live), the uses of those channels (channel_use_lock) and features
        (feature_use_lock, which a feature's archive takes) are locked, the check runs (it raises to refuse) and the
        write follows in that transaction, as put_channel's deletion."""
        deleted = bool(doc.get("deletedAt"))
        _put(self.engine, rules, namespace, {"id": doc["id"], "namespace": namespace, "type": doc["type"],
                                             "deleted": deleted, "active": not deleted and not doc.get("disabled"),
                                             "doc": jsonx.dumps(doc)}, live=live, what="notification rule",
             locks=[*(feature_use_lock(namespace, f["key"]) for f in doc.get("features") or []),
                    *(channel_use_lock(namespace, ch["id"]) for ch in doc.get("channels") or [])], check=check,
             expect_doc=expect_doc)

    def get_rule(self, namespace: str, rule_id: str) -> dict[str, Any] | None:
        with self.reads.connect() as c:
            row = c.execute(sa.select(rules.c.doc).where(rules.c.namespace == namespace, rules.c.id == rule_id)).first()
        return jsonx.loads(row.doc) if row else None

    def list_rules(self, namespace: str) -> list[dict[str, Any]]:
        with self.reads.connect() as c:
            return [jsonx.loads(r.doc) for r in c.execute(
                sa.select(rules.c.doc).where(rules.c.namespace == namespace).order_by(rules.c.id))]

    def active_rules(self, types: Iterable[str], namespace: str | None = None) -> list[tuple[str, dict[str, Any]]]:
        """(namespace, rule) of every enabled, undeleted rule of these types; across namespaces if none given."""
        q = sa.select(rules.c.namespace, rules.c.doc).where(rules.c.active.is_(True), rules.c.type.in_(list(types)))
        if namespace is not None:
            q = q.where(rules.c.namespace == namespace)
        with self.reads.connect() as c:
            return [(r.namespace, jsonx.loads(r.doc)) for r in c.execute(q.order_by(rules.c.namespace, rules.c.id))]

    # -- events ------------------------------------------------------------------------------------------
    def add_event(self, namespace: str, doc: dict[str, Any], *, dedup_key: str | None, channel_ids: list[str],
                  now: datetime, index: dict[str, str | None]) -> bool:
        """Store the event and a PENDING delivery per channel, due now. False (nothing stored) if an event
        with the same dedup key exists."""
        try:
            with self.engine.begin() as c:
                c.execute(events.insert().values(
                    id=doc["id"], namespace=namespace, type=doc["type"], rule_id=doc["rule"]["id"],
                    dedup_key=dedup_key, created_at=now, doc=jsonx.dumps(doc), **index))
                if channel_ids:
                    c.execute(deliveries.insert(), [
                        {"event_id": doc["id"], "channel_id": ch, "namespace": namespace, "state": "PENDING",
                         "reason": "", "tries": 0, "attempts": "[]", "due_at": now, "updated_at": now, "version": 0}
                        for ch in channel_ids])
        except IntegrityError:
            if dedup_key is None:
                raise
            return False
        return True

    def get_event(self, namespace: str, event_id: str) -> dict[str, Any] | None:
        with self.reads.connect() as c:
            row = c.execute(sa.select(events.c.doc).where(events.c.namespace == namespace,
                                                          events.c.id == event_id)).first()
        return jsonx.loads(row.doc) if row else None

    def list_events(self, namespace: str, *, start: datetime | None = None, end: datetime | None = None,
                    rule_ids: list[str] | None = None, subject_keys: list[str] | None = None,
                    features: list[str] | None = None, channel_ids: list[str] | None = None,
                    descending: bool = True, order_by: str = "createdAt") -> list[dict[str, Any]]:
        q = sa.select(events.c.doc).where(events.c.namespace == namespace)
        if start is not None:
            q = q.where(events.c.created_at >= start)
        if end is not None:
            q = q.where(events.c.created_at <= end)
        if rule_ids:
            q = q.where(events.c.rule_id.in_(rule_ids))
        if subject_keys:
            q = q.where(events.c.subject_key.in_(subject_keys))
        if features:
            q = q.where(sa.or_(events.c.feature_id.in_(features), events.c.feature_key.in_(features)))
        if channel_ids:
            q = q.where(events.c.id.in_(sa.select(deliveries.c.event_id).where(
                deliveries.c.namespace == namespace, deliveries.c.channel_id.in_(channel_ids))))
        cols = [events.c.created_at, events.c.id] if order_by == "createdAt" else [events.c.id]
        q = q.order_by(*(col.desc() if descending else col.asc() for col in cols))
        with self.reads.connect() as c:
            return [jsonx.loads(r.doc) for r in c.execute(q)]

    # -- deliveries --------------------------------------------------------------------------------------
    def deliveries_of(self, namespace: str, event_ids: list[str]) -> dict[str, list[Delivery]]:
        out: dict[str, list[Delivery]] = {e: [] for e in event_ids}
        if not event_ids:
            return out
        with self.reads.connect() as c:
            for row in c.execute(sa.select(deliveries).where(deliveries.c.namespace == namespace,
                                                             deliveries.c.event_id.in_(event_ids))
                                 .order_by(deliveries.c.event_id, deliveries.c.channel_id)):
                out[row.event_id].append(_delivery(row))
        return out

    def due(self, now: datetime, limit: int = 100) -> list[Delivery]:
        """Deliveries whose next attempt is due, or whose claim lapsed (a dispatcher died mid-send)."""
        with self.reads.connect() as c:
            return [_delivery(r) for r in c.execute(
                sa.select(deliveries).where(deliveries.c.due_at.is_not(None), deliveries.c.due_at <= now)
                .order_by(deliveries.c.due_at).limit(limit))]

    def next_due(self) -> datetime | None:
        with self.reads.connect() as c:
            return utc(c.execute(sa.select(sa.func.min(deliveries.c.due_at))).scalar())

    def claim(self, d: Delivery, *, now: datetime, lease_until: datetime) -> bool:
        """Take the delivery for one attempt if nobody changed it since it was read (the version guards)."""
        with self.engine.begin() as c:
            res = c.execute(deliveries.update().where(
                deliveries.c.event_id == d.event_id, deliveries.c.channel_id == d.channel_id,
                deliveries.c.version == d.version, deliveries.c.due_at.is_not(None), deliveries.c.due_at <= now,
            ).values(state="SENDING", due_at=lease_until, updated_at=now, version=d.version + 1))
            return res.rowcount == 1

    def finish(self, d: Delivery, *, state: str, reason: str, tries: int, attempt: dict[str, Any] | None,
               due_at: datetime | None, now: datetime) -> bool:
        """Record an attempt of a delivery this dispatcher claimed (`d` as claimed: version + 1)."""
        attempts = d.attempts + ([attempt] if attempt is not None else [])
        with self.engine.begin() as c:
            res = c.execute(deliveries.update().where(
                deliveries.c.event_id == d.event_id, deliveries.c.channel_id == d.channel_id,
                deliveries.c.version == d.version + 1,
            ).values(state=state, reason=reason, tries=tries, attempts=jsonx.dumps(attempts), due_at=due_at,
                     updated_at=now, version=d.version + 2))
            return res.rowcount == 1

    def resend(self, namespace: str, event_id: str, channel_ids: list[str] | None, now: datetime) -> int:
        """Queue the event again for these channels (all if None), except deliveries being sent right now."""
        q = deliveries.update().where(deliveries.c.namespace == namespace, deliveries.c.event_id == event_id,
                                      deliveries.c.state != "SENDING")
        if channel_ids is not None:
            q = q.where(deliveries.c.channel_id.in_(channel_ids))
        with self.engine.begin() as c:
            return int(c.execute(q.values(state="RESENDING", reason="resend requested", tries=0, due_at=now,
                                          updated_at=now, version=deliveries.c.version + 1)).rowcount)
