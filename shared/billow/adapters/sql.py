"""MetaStore on SQLAlchemy Core: SQLite (embedded default) and PostgreSQL through pg8000 (Aurora in AWS).
One set of statements serves both; the adapter contract tests run against each."""

from __future__ import annotations

import hashlib
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.elements import BindParameter, ColumnElement

from billow import jsonx
from billow.adapters.sql_receipts import ingest_receipts
from billow.domain.ingest_policy import from_json as policy_from_json
from billow.domain.meters import Meter
from billow.errors import Conflict, NotFound
from billow.ids import new_id
from billow.timeutil import parse_rfc3339

md = sa.MetaData()
TS = sa.DateTime(timezone=True)

meters = sa.Table(
    "meters", md,
    sa.Column("namespace", sa.String(64), nullable=False),
    sa.Column("id", sa.String(26), primary_key=True),
    sa.Column("slug", sa.String(64), nullable=False),
    sa.Column("name", sa.String(256), nullable=False),
    sa.Column("description", sa.Text),
    sa.Column("aggregation", sa.String(16), nullable=False),
    sa.Column("event_type", sa.Text, nullable=False),
    sa.Column("event_from", TS),
    sa.Column("value_property", sa.Text),
    sa.Column("group_by", sa.Text, nullable=False),
    sa.Column("metadata", sa.Text),
    sa.Column("managed", sa.Boolean, nullable=False, default=False),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("updated_at", TS, nullable=False),
    sa.Column("deleted_at", TS),
    sa.Column("ingestion_policy", sa.Text),  # Billow's ingestionPolicy as JSON; NULL: the defaults (rev 0004)
    sa.Index("meters_live_slug", "namespace", "slug", unique=True,
             sqlite_where=sa.text("deleted_at IS NULL"), postgresql_where=sa.text("deleted_at IS NULL")),
)

subjects = sa.Table(
    "subjects", md,
    sa.Column("namespace", sa.String(64), nullable=False),
    sa.Column("id", sa.String(26), primary_key=True),
    sa.Column("key", sa.Text, nullable=False),
    sa.Column("display_name", sa.Text),
    sa.Column("metadata", sa.Text),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("updated_at", TS, nullable=False),
    sa.Column("deleted_at", TS),
    sa.Index("subjects_live_key", "namespace", "key", unique=True,
             sqlite_where=sa.text("deleted_at IS NULL"), postgresql_where=sa.text("deleted_at IS NULL")),
)

customers = sa.Table(
    "customers", md,
    sa.Column("namespace", sa.String(64), nullable=False),
    sa.Column("id", sa.String(26), primary_key=True),
    sa.Column("key", sa.String(256)),
    sa.Column("doc", sa.Text, nullable=False),  # the Customer resource as served (JSON)
    sa.Column("created_at", TS, nullable=False),
    sa.Column("deleted_at", TS),
    sa.Index("customers_live_key", "namespace", "key", unique=True,
             sqlite_where=sa.text("deleted_at IS NULL AND key IS NOT NULL"),
             postgresql_where=sa.text("deleted_at IS NULL AND key IS NOT NULL")),
)

customer_subjects = sa.Table(
    "customer_subjects", md,
    sa.Column("namespace", sa.String(64), nullable=False),
    sa.Column("subject_key", sa.Text, nullable=False),
    sa.Column("customer_id", sa.String(26), nullable=False),
    sa.PrimaryKeyConstraint("namespace", "subject_key"),
    sa.Index("customer_subjects_customer", "namespace", "customer_id"),  # migration 0002
)


class _Among(ColumnElement[bool]):
    """`column IN (the list bound as one parameter)`, see `among`."""

    inherit_cache = True
    type = sa.Boolean()

    def __init__(self, column: ColumnElement[Any], param: BindParameter[Any]) -> None:
        self.column, self.param = column, param

    def self_group(self, against: Any = None) -> ColumnElement[Any]:
        return self  # a comparison already: no "= 1" where SQLite has no boolean type

    @property
    def _from_objects(self) -> list[Any]:
        return self.column._from_objects  # noqa: SLF001 (SQLAlchemy's protocol for a column expression)

    _traverse_internals = [("column", sa.sql.visitors.InternalTraversal.dp_clauseelement),
                           ("param", sa.sql.visitors.InternalTraversal.dp_clauseelement)]


class _JsonList(sa.types.TypeDecorator[list[Any]]):
    """A list bound as one JSON array parameter (SQLite reads it back with `json_each`)."""

    impl = sa.Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> str:
        return jsonx.dumps(list(value))


def _json_each(column: ColumnElement[Any], param: BindParameter[Any]) -> ColumnElement[bool]:
    """SQLite: `column IN (SELECT value FROM json_each(:p))`, the list one JSON parameter. SQLite's limit on a
    statement's parameters is a build option (32,766 by default, 250,000 in the build here): a parameter per value
    failed past it. The planner still looks each value up in `column`'s index."""
    each = sa.func.json_each(param).table_valued("value")
    return column.in_(sa.select(each.c.value).scalar_subquery())


@compiles(_Among)
def _among_in(element: _Among, compiler: Any, **kw: Any) -> str:
    # (a named parameter: its value comes with each execution, so a cached statement binds the new one)
    param = sa.bindparam(element.param.key, type_=_JsonList())
    return compiler.process(_json_each(element.column, param), **kw)


@compiles(_Among, "postgresql")
def _among_any(element: _Among, compiler: Any, **kw: Any) -> str:
    return f"{compiler.process(element.column, **kw)} = ANY({compiler.process(element.param, **kw)})"


def among(column: Any, values: str | Iterable[Any], engine: sa.Engine | None = None) -> ColumnElement[bool]:
    """`column` is one of `values`: the name of a list parameter given when the statement runs (a statement built
    once, for any dialect), or a list (for the dialect of `engine`). On PostgreSQL the list is one array parameter
    (`= ANY(:p)`): its protocol takes at most 65,535 parameters a statement, and a customer's subjects can be
    more. On SQLite a short list binds a parameter per value (an expanding IN), a long one is one JSON array
    (`_json_each`): SQLite's own limit is a build option, 32,766 by default."""
    if isinstance(values, str):
        return _Among(column, sa.bindparam(values, type_=postgresql.ARRAY(column.type)))
    assert engine is not None, "a list needs the engine's dialect"
    if engine.dialect.name == "postgresql":
        return column == sa.any_(sa.bindparam(None, list(values), type_=postgresql.ARRAY(column.type)))
    values = list(values)
    if len(values) <= _SQLITE_IN_MAX:
        return column.in_(values)
    return _json_each(column, sa.bindparam(None, values, type_=_JsonList()))


# The longest list SQLite gets as a parameter per value: well under its default limit (32,766).
_SQLITE_IN_MAX = 10_000


def _insert_subjects(c: Any, namespace: str, customer_id: str, keys: list[str]) -> None:
    """The customer's subject rows. PostgreSQL: one statement over the keys as one array (pg8000 sends an
    executemany as a statement per row: 70,000 subjects took 40 s); SQLite: an executemany, in process."""
    if c.dialect.name == "postgresql":
        c.execute(customer_subjects.insert().from_select(
            ["namespace", "subject_key", "customer_id"],
            sa.select(sa.literal(namespace, sa.String), sa.func.unnest(sa.bindparam("keys", keys, type_=postgresql.ARRAY(sa.Text))),
                      sa.literal(customer_id, sa.String))))
    else:
        c.execute(customer_subjects.insert(), [
            {"namespace": namespace, "subject_key": k, "customer_id": customer_id} for k in keys])


def save_by_id(c: Any, table: sa.Table, row: dict[str, Any], *, keep: tuple[str, ...] = ()) -> None:
    """Insert `row`, or update the row with its id (leaving the columns in `keep` as stored)."""
    if c.execute(sa.select(table.c.id).where(table.c.id == row["id"])).first():
        c.execute(table.update().where(table.c.id == row["id"]).values(
            **{k: v for k, v in row.items() if k not in keep}))
    else:
        c.execute(table.insert().values(**row))


def insert_new(c: Any, table: sa.Table, row: dict[str, Any]) -> None:
    """Insert `row` unless a row with its primary key is there: INSERT ... ON CONFLICT DO NOTHING (PostgreSQL and
    SQLite), one statement, where a look then an insert lets two writers both find none and the later insert fail."""
    dialect = postgresql if c.dialect.name == "postgresql" else sqlite
    c.execute(dialect.insert(table).values(**row).on_conflict_do_nothing())


def upsert(c: Any, table: sa.Table, row: dict[str, Any]) -> None:
    """Insert `row`, or give the row with its primary key `row`'s other columns: INSERT ... ON CONFLICT DO UPDATE
    (PostgreSQL and SQLite), one statement, where a delete (or a look) then an insert lets two writers both find
    none and the later insert fail."""
    dialect = postgresql if c.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(table).values(**row)
    keys = [col.name for col in table.primary_key.columns]
    c.execute(stmt.on_conflict_do_update(index_elements=keys,
                                         set_={k: stmt.excluded[k] for k in row if k not in keys}))


def serialise(c: Any, name: str) -> None:
    """Hold the lock `name` until this transaction ends, so that transactions taking it run one after another:
    for a write that reads rows, then writes what they imply, where the rows another writer adds meanwhile are
    not there to lock (PostgreSQL: a transaction-scoped advisory lock on a 64-bit key from the name).

    SQLite: the database's write lock, taken now (BEGIN IMMEDIATE, waiting up to the busy timeout), the one lock
    it has. Its Python driver begins a transaction only at the first INSERT/UPDATE/DELETE, so without it the reads
    before that ran unlocked beside the other threads of `billow serve` (two subscriptions for one customer), and
    a read whose snapshot another thread's commit made stale could not become a write (`database is locked` at
    once). Called first in its transaction; one that already wrote holds the write lock already."""
    serialise_all(c, [name])


def _lock_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


_LOCK_ALL = sa.text("SELECT pg_advisory_xact_lock(k) FROM unnest(:keys) WITH ORDINALITY AS t(k, i) ORDER BY i"
                    ).bindparams(sa.bindparam("keys", type_=postgresql.ARRAY(sa.BigInteger)))


def serialise_all(c: Any, names: Iterable[str]) -> None:
    """serialise() each of `names`, in one statement and in one order (of their PostgreSQL keys) whoever takes
    them: two writers taking overlapping sets never wait on each other in a circle. Taking none is a no-op."""
    keys = sorted({_lock_key(name) for name in names})
    if not keys:
        return
    if c.dialect.name == "postgresql":
        if len(keys) == 1:
            c.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": keys[0]})
        else:
            c.execute(_LOCK_ALL, {"keys": keys})
    elif c.dialect.name == "sqlite" and not c.connection.driver_connection.in_transaction:
        c.exec_driver_sql("BEGIN IMMEDIATE")


def customer_lock(namespace: str, customer_id: str) -> str:
    """The serialise() name of a customer's subscriptions: held by adding a subscription (one per customer at a time,
    only for a live customer) and by deleting the customer (only without a running subscription)."""
    return f"subscriptions.customer:{namespace}:{customer_id}"


def subject_lock(namespace: str, key: str) -> str:
    """The serialise() name of a subject known through /subjects alone (no customer owns it): held by a write through
    the subject (an entitlement, a grant, an override, a reset: only while the subject is known) and by deleting the
    subject. A customer's subject is the customer's: its writes take customer_lock instead."""
    return f"subjects.party:{namespace}:{key}"


def meter_use_lock(namespace: str, slug: str) -> str:
    """The serialise() name of a meter's uses: held by making a feature on the meter (only on a live meter) and by
    deleting the meter (only when nothing uses it)."""
    return f"meters.use:{namespace}:{slug}"


def feature_use_lock(namespace: str, key: str) -> str:
    """The serialise() name of a feature's new entitlements: held by writing a new entitlement of the feature (one
    live entitlement per billable party, only on a live feature) and by archiving the feature."""
    return f"entitlements.feature:{namespace}:{key}"


def entitlement_lock(namespace: str, entitlement_id: str) -> str:
    """The serialise() name of an entitlement's new grants: held by writing a grant of it (only on a live
    entitlement) and by ending it (a deletion, an override)."""
    return f"entitlements.grants:{namespace}:{entitlement_id}"


def version_lock(namespace: str, kind: str, key: str) -> str:
    """The serialise() name of a plan's or add-on's key: held by every change of its versions (create, next, update,
    publish, archive, delete), which reads the key's versions and writes in that transaction."""
    return f"catalog.key:{namespace}:{kind}:{key}"


def addon_use_lock(namespace: str, addon_id: str) -> str:
    """The serialise() name of an add-on version's uses: held by adding it to a subscription (only while it is
    active) and by every guarded write of the version (its archive among them)."""
    return f"catalog.addon.use:{namespace}:{addon_id}"


def app_use_lock(namespace: str, app_id: str) -> str:
    """The serialise() name of an installed app's uses: held by writing a billing profile that names the app (only an
    installed app) and by uninstalling the app (only when no profile uses it)."""
    return f"apps.use:{namespace}:{app_id}"


def channel_use_lock(namespace: str, channel_id: str) -> str:
    """The serialise() name of a notification channel's uses: held by writing a rule that names the channel (only a
    live channel) and by deleting the channel (only when no live rule names it)."""
    return f"notifications.channel:{namespace}:{channel_id}"


def utc(t: datetime | None) -> datetime | None:
    if t is None:
        return None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def to_datetime(value: Any) -> datetime | None:
    return parse_rfc3339(value, "timestamp") if isinstance(value, str) else value


def _meter(row: Any) -> Meter:
    return Meter(
        id=row.id, slug=row.slug, aggregation=row.aggregation, event_type=row.event_type, name=row.name,
        description=row.description, value_property=row.value_property, group_by=jsonx.loads(row.group_by),
        event_from=utc(row.event_from), created_at=utc(row.created_at) or datetime.now(UTC),
        updated_at=utc(row.updated_at) or datetime.now(UTC),
        metadata=jsonx.loads(row.metadata) if row.metadata else None, deleted_at=utc(row.deleted_at),
        policy=policy_from_json(jsonx.loads(row.ingestion_policy) if row.ingestion_policy else None),
    )


def _subject(row: Any) -> dict[str, Any]:
    return {"id": row.id, "key": row.key, "displayName": row.display_name,
            "metadata": jsonx.loads(row.metadata) if row.metadata else None,
            "createdAt": utc(row.created_at), "updatedAt": utc(row.updated_at), "deletedAt": utc(row.deleted_at)}


# A pooled PostgreSQL connection not used for this long is checked (one round trip) before it is handed out again.
PING_AFTER_IDLE_S = 5.0


def fewer_round_trips(engine: sa.Engine) -> None:
    """Fewer network round trips per store call on PostgreSQL through pg8000 (issue 17: on Aurora each one is ~0.3-1 ms,
    and an uncached entitlement check made 7 store calls of 8 round trips each, 56 in all).

    pg8000 sends a statement with parameters as Parse, Describe and Bind/Execute, three round trips, and it ends a
    transaction the same way: COMMIT, and the ROLLBACK that returns every connection to the pool, three round trips
    each. They go here as simple queries, one round trip each, with the same effect (a failing COMMIT raises as
    before; a connection outside a transaction needs no ROLLBACK, as pg8000 itself decides).
    SQLAlchemy's pre-ping checked every connection at every checkout (BEGIN and ';': two round trips). A connection
    used within PING_AFTER_IDLE_S is handed out as it is; one idle longer (a Lambda container thawed, a quiet
    process) is checked with ';' alone, one round trip, and a dead one replaced before use, as before. One that dies
    within those seconds (a fail-over under load) fails its next statement, and SQLAlchemy then drops every
    connection of the pool opened before it: a request, not each connection, meets it."""
    dialect = engine.dialect
    if getattr(dialect, "billow_fewer_round_trips", False):
        return
    dialect.billow_fewer_round_trips = True  # type: ignore[attr-defined]

    def do_commit(dbapi_connection: Any) -> None:
        dbapi_connection.execute_simple("COMMIT")

    def do_rollback(dbapi_connection: Any) -> None:
        if dbapi_connection._in_transaction:  # (pg8000's own test in its rollback(): the server's last status)
            dbapi_connection.execute_simple("ROLLBACK")

    dialect.do_commit = do_commit  # type: ignore[method-assign]
    dialect.do_rollback = do_rollback  # type: ignore[method-assign]
    # A read on `reads(engine)` runs with pg8000's autocommit on: no BEGIN, no ROLLBACK. Handing the connection back,
    # SQLAlchemy sets it to the default level again, which pg8000's dialect does with BEGIN, SET SESSION
    # CHARACTERISTICS and COMMIT (three round trips) though only the autocommit flag changed: here it flips the flag
    # alone, unless this connection's session level was set to another (nothing in Billow does; then as before).
    set_level = dialect.set_isolation_level
    session_level_set: weakref.WeakSet[Any] = weakref.WeakSet()

    def set_isolation_level(dbapi_connection: Any, level: Any) -> None:
        if level == "AUTOCOMMIT" or (level == dialect.default_isolation_level
                                     and dbapi_connection not in session_level_set):
            dbapi_connection.autocommit = level == "AUTOCOMMIT"
            return
        set_level(dbapi_connection, level)
        if level == dialect.default_isolation_level:
            session_level_set.discard(dbapi_connection)
        else:
            session_level_set.add(dbapi_connection)

    dialect.set_isolation_level = set_isolation_level  # type: ignore[method-assign]

    @sa.event.listens_for(engine, "connect")
    def _fresh(dbapi_connection: Any, record: Any) -> None:
        record.info["billow_used_at"] = time.monotonic()

    @sa.event.listens_for(engine, "checkout")
    def _ping_if_idle(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        if time.monotonic() - record.info.get("billow_used_at", float("-inf")) <= PING_AFTER_IDLE_S:
            return
        try:
            dbapi_connection.execute_simple(";")
        except Exception as exc:  # noqa: BLE001 (whatever broke it, the pool replaces the connection)
            raise sa.exc.DisconnectionError(str(exc)) from exc

    @sa.event.listens_for(engine, "checkin")
    def _used(dbapi_connection: Any, record: Any) -> None:
        record.info["billow_used_at"] = time.monotonic()


def reads(engine: sa.Engine) -> sa.Engine:
    """The engine for one-statement reads: on PostgreSQL through pg8000, in autocommit (a statement alone sees the
    same as in a READ COMMITTED transaction, without the BEGIN and ROLLBACK round trips; fewer_round_trips); the
    engine itself elsewhere. Never for writes, nor for reads that must see one state across statements."""
    if engine.dialect.driver == "pg8000":
        fewer_round_trips(engine)  # (once an engine; else handing a connection back would cost three round trips)
        return engine.execution_options(isolation_level="AUTOCOMMIT")
    return engine


class SqlMetaStore:
    def __init__(self, url: str, **engine_kwargs: Any) -> None:
        self.url = url
        if url.startswith("sqlite"):
            engine_kwargs.setdefault("connect_args", {"check_same_thread": False})
        pg8000 = sa.engine.make_url(url).get_driver_name() == "pg8000"
        # (another server driver: SQLAlchemy's own check of every checkout)
        self.engine = sa.create_engine(url, future=True, pool_pre_ping=not (pg8000 or url.startswith("sqlite")),
                                       **engine_kwargs)
        self.reads = reads(self.engine)  # (on pg8000 it installs fewer_round_trips on the engine too)
        if url.startswith("sqlite"):
            @sa.event.listens_for(self.engine, "connect")
            def _pragmas(dbapi_conn: Any, _: Any) -> None:
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=FULL")
                cur.close()
        # namespace -> (the live meters' (id, updated_at) pairs, the meters): see list_meters
        self._cache: dict[str, tuple[frozenset[tuple[str, datetime | None]], list[Meter]]] = {}
        # Counts this process's customer writes: subjects of a customer remembered at an older count are stale.
        self.customers_generation = 0
        self.subjects_generation = 0  # the same for subject writes (a balance cache remembers subject keys)

    def _tx(self) -> Any:
        return self.engine.begin()

    def migrate(self) -> None:
        """The meta database to the schema head: one Alembic upgrade for every store's tables (billow.migrations)."""
        from billow.migrations import upgrade

        upgrade(self.engine)

    def ping(self) -> None:
        with self.reads.connect() as c:
            c.execute(sa.text("SELECT 1"))

    def close(self) -> None:
        self.engine.dispose()

    # -- meters -----------------------------------------------------------------------------------
    def _meter_row(self, namespace: str, m: Meter) -> dict[str, Any]:
        return dict(namespace=namespace, id=m.id, slug=m.slug, name=m.name, description=m.description,
                    aggregation=m.aggregation, event_type=m.event_type, event_from=m.event_from,
                    value_property=m.value_property, group_by=jsonx.dumps(m.group_by),
                    metadata=jsonx.dumps(m.metadata) if m.metadata is not None else None,
                    created_at=m.created_at, updated_at=m.updated_at, deleted_at=m.deleted_at,
                    ingestion_policy=None if m.policy.is_default else jsonx.dumps(m.policy.to_json()))

    def put_meter(self, namespace: str, meter: Meter, managed: bool = False) -> None:
        try:
            with self._tx() as c:
                c.execute(meters.insert().values(**self._meter_row(namespace, meter), managed=managed))
        except IntegrityError:
            raise Conflict(f"a meter with slug {meter.slug!r} already exists") from None
        self._cache.pop(namespace, None)

    _EDITABLE = ("name", "description", "metadata", "group_by", "ingestion_policy", "updated_at")

    def update_meter(self, namespace: str, meter: Meter, *, expect: Meter | None = None) -> None:
        """Save a meter's changes; with `expect` (the meter as it was read), only if it is still live and stored so,
        else Conflict: another writer changed or deleted it since (two edits of one meter at once)."""
        row = self._meter_row(namespace, meter)
        q = meters.update().where(meters.c.namespace == namespace, meters.c.id == meter.id)
        if expect is not None:
            was = self._meter_row(namespace, expect)
            q = q.where(meters.c.deleted_at.is_(None),
                        *[meters.c[k].is_not_distinct_from(was[k]) for k in self._EDITABLE])
        with self._tx() as c:
            done = c.execute(q.values(**row)).rowcount
        self._cache.pop(namespace, None)
        if expect is not None and done != 1:
            raise Conflict(f"meter {meter.slug!r} changed or was deleted meanwhile; reload it and try again")

    def is_managed(self, namespace: str, meter_id: str) -> bool:
        with self.reads.connect() as c:
            return bool(c.execute(sa.select(meters.c.managed).where(
                meters.c.namespace == namespace, meters.c.id == meter_id)).scalar())

    # a live meter first, then the latest deleted one (only those with include_deleted); built once, as _FELLOWS
    _METER = sa.select(meters).where(meters.c.namespace == sa.bindparam("ns"),
                                     sa.or_(meters.c.id == sa.bindparam("k"), meters.c.slug == sa.bindparam("k"))
                                     ).order_by(meters.c.deleted_at.is_(None).desc(), meters.c.created_at.desc()).limit(1)
    _METERS = {False: _METER.where(meters.c.deleted_at.is_(None)), True: _METER}

    def get_meter(self, namespace: str, id_or_slug: str, include_deleted: bool = False) -> Meter | None:
        with self.reads.connect() as c:
            row = c.execute(self._METERS[include_deleted], {"ns": namespace, "k": id_or_slug}).first()
        return _meter(row) if row else None

    def list_meters(self, namespace: str, include_deleted: bool = False) -> list[Meter]:
        """The namespace's meters, never staler than this call: other processes (a warm Lambda container
        beside the api container that created, changed or deleted a meter) share the database, so each call
        first reads the live meters' (id, updated_at) pairs (one indexed query) and re-reads and re-parses
        the full list only when those changed. A create or delete changes the ids, an update its
        updated_at."""
        q = sa.select(meters).where(meters.c.namespace == namespace)
        if not include_deleted:
            q = q.where(meters.c.deleted_at.is_(None))
        with self.reads.connect() as c:
            if not include_deleted and (cached := self._cache.get(namespace)) is not None:
                version = frozenset((r.id, utc(r.updated_at)) for r in c.execute(
                    sa.select(meters.c.id, meters.c.updated_at).where(meters.c.namespace == namespace,
                                                                      meters.c.deleted_at.is_(None))))
                if version == cached[0]:
                    return cached[1]
            out = [_meter(r) for r in c.execute(q.order_by(meters.c.created_at, meters.c.id))]
        if not include_deleted:
            self._cache[namespace] = (frozenset((m.id, m.updated_at) for m in out), out)
        return out

    @contextmanager
    def meter_lock(self, namespace: str, meter_id: str) -> Iterator[None]:
        """Held by whoever checks which events already have a value of this meter and then writes the
        missing ones (the api's backfill, a sink re-valuing events that arrived while the meter was being
        created), so two processes never both add a value for one event. PostgreSQL: a row lock on the
        meter (SELECT ... FOR UPDATE); SQLite: the database's write lock (a no-op UPDATE)."""
        with self._tx() as c:
            if self.engine.dialect.name == "sqlite":
                c.execute(meters.update().where(meters.c.namespace == namespace, meters.c.id == meter_id)
                          .values(updated_at=meters.c.updated_at))
            else:
                c.execute(sa.select(meters.c.id).where(meters.c.namespace == namespace, meters.c.id == meter_id)
                          .with_for_update())
            yield

    def delete_meter(self, namespace: str, meter_id: str, at: datetime, *,
                     check: Callable[[], None] | None = None) -> None:
        """With `check` (nothing uses the meter), the meter's uses are locked (meter_use_lock), the check runs (it
        raises to refuse) and the deletion follows in that transaction, so a feature made on the meter at once is
        either seen by the check or sees the meter deleted. A meter deleted meanwhile (another deletion at once) is
        NotFound, as it is to a deletion that comes after: one deletion answers 204."""
        slug = None
        if check is not None:
            found = self.get_meter(namespace, meter_id, include_deleted=True)
            slug = found.slug if found is not None else meter_id
        with self._tx() as c:
            if slug is not None and check is not None:
                serialise(c, meter_use_lock(namespace, slug))
                check()
            done = c.execute(meters.update().where(meters.c.namespace == namespace, meters.c.id == meter_id,
                                                   meters.c.deleted_at.is_(None))
                             .values(deleted_at=at, updated_at=at)).rowcount
        self._cache.pop(namespace, None)
        if done != 1:
            raise NotFound(f"meter {slug or meter_id!r} not found")

    # -- subjects ---------------------------------------------------------------------------------
    def upsert_subject(self, namespace: str, subject: dict[str, Any], now: datetime) -> dict[str, Any]:
        key = subject["key"]
        values = {"display_name": subject.get("displayName"),
                  "metadata": jsonx.dumps(subject["metadata"]) if subject.get("metadata") is not None else None,
                  "updated_at": now}
        for attempt in (1, 2):
            try:
                with self._tx() as c:
                    row = c.execute(sa.select(subjects).where(subjects.c.namespace == namespace, subjects.c.key == key,
                                                              subjects.c.deleted_at.is_(None))).first()
                    if row is None:
                        sid = new_id()
                        c.execute(subjects.insert().values(namespace=namespace, id=sid, key=key, created_at=now,
                                                           **values))
                    else:
                        sid = row.id
                        c.execute(subjects.update().where(subjects.c.id == sid).values(**values))
                    out = _subject(c.execute(sa.select(subjects).where(subjects.c.id == sid)).one())
                break
            except IntegrityError:
                # Another writer (a container beside this one) inserted the key since the look: its row is
                # committed now, and the second attempt updates it (an upsert, not a conflict).
                if attempt == 2:
                    raise
        self.subjects_generation += 1
        return out

    def list_subjects(self, namespace: str) -> list[dict[str, Any]]:
        """By key in code point order, sorted here: an ORDER BY would follow the database's collation (en_US on RDS:
        `a` before `B`), so SQLite and PostgreSQL would list the same subjects in different orders."""
        with self.reads.connect() as c:
            rows = c.execute(sa.select(subjects).where(subjects.c.namespace == namespace, subjects.c.deleted_at.is_(None)))
            return sorted((_subject(r) for r in rows), key=lambda s: s["key"])

    _SUBJECT = sa.select(subjects).where(  # built once, as _FELLOWS
        subjects.c.namespace == sa.bindparam("ns"), subjects.c.deleted_at.is_(None),
        sa.or_(subjects.c.id == sa.bindparam("k"), subjects.c.key == sa.bindparam("k"))).limit(1)

    def get_subject(self, namespace: str, id_or_key: str) -> dict[str, Any] | None:
        with self.reads.connect() as c:
            row = c.execute(self._SUBJECT, {"ns": namespace, "k": id_or_key}).first()
            return _subject(row) if row else None

    def delete_subject(self, namespace: str, subject_id: str, at: datetime) -> None:
        """Only a live subject: one deleted meanwhile (another deletion at once) is NotFound, as to a later one. Under
        the subject's lock (subject_lock), which a write through it takes: an entitlement, grant or reset made through
        it at once is there when the deletion answers, or sees the subject deleted."""
        with self.reads.connect() as c:
            key = c.execute(sa.select(subjects.c.key).where(subjects.c.namespace == namespace,
                                                            subjects.c.id == subject_id)).scalar()
        with self._tx() as c:
            if key is not None:
                serialise(c, subject_lock(namespace, key))
            done = c.execute(subjects.update().where(subjects.c.namespace == namespace, subjects.c.id == subject_id,
                                                     subjects.c.deleted_at.is_(None))
                             .values(deleted_at=at, updated_at=at)).rowcount
        self.subjects_generation += 1
        if done != 1:
            raise NotFound(f"subject {subject_id!r} not found")

    # -- customers --------------------------------------------------------------------------------
    def put_customer(self, namespace: str, customer: dict[str, Any], *, live: bool = False,
                     check: Callable[[], None] | None = None,
                     taking: Callable[[list[str]], None] | None = None) -> None:
        """Insert or replace a customer; its usage-attribution subjects must not belong to another customer. With
        `live`, only replace a customer still live (else NotFound: deleted since it was read, as by another
        container's DELETE, which an update must not undo). With `check` (deleting it: no running subscription), the
        customer's subscriptions are locked (customer_lock), the check runs (it raises to refuse) and the write
        follows in that transaction, so a subscription added at once is either seen by the check or sees the
        customer deleted. Every write of the customer takes that lock, a deletion without a check and an update
        (`live`: which may give up or take subject keys) among them: an entitlement, grant or reset written at once
        through the customer or one of its subjects, which takes it and checks the customer (its subjects) under it,
        is there when the deletion or update answers, or sees it. An update's updatedAt is never earlier than the
        stored one it replaces (then the stored one's, set on `customer` too).
        With `taking` (a create or an update, not a deletion), the subject keys the write gives the customer that
        it did not have are read under that lock, their subjects' locks taken (subject_lock, which a write through a
        subject no customer owns takes) and `taking(those keys)` run (it raises to refuse) before the write, when
        there are any: an entitlement made at once through such a subject is seen by it, or sees the subject
        taken."""
        keys = list(customer.get("usageAttribution", {}).get("subjectKeys", []))
        deleted = to_datetime(customer.get("deletedAt"))
        row = dict(namespace=namespace, id=customer["id"], key=customer.get("key"), doc=jsonx.dumps(customer),
                   created_at=to_datetime(customer["createdAt"]), deleted_at=deleted)
        try:
            with self._tx() as c:
                serialise(c, customer_lock(namespace, customer["id"]))  # every write: a deletion without a check too
                if check is not None:
                    check()
                if taking is not None and deleted is None and keys:
                    had = set(c.execute(sa.select(customer_subjects.c.subject_key).where(
                        customer_subjects.c.namespace == namespace,
                        customer_subjects.c.customer_id == customer["id"])).scalars())
                    if taken := [k for k in keys if k not in had]:
                        serialise_all(c, (subject_lock(namespace, k) for k in taken))
                        taking(taken)
                if deleted is not None and c.execute(customers.update().where(
                        customers.c.namespace == namespace, customers.c.id == customer["id"],
                        customers.c.deleted_at.is_(None)).values(deleted_at=deleted)).rowcount != 1:
                    # deleted meanwhile (another deletion at once): as to a later deletion, 404
                    raise NotFound(f"customer {customer.get('key') or customer['id']!r} not found")
                if live and (stamp := self._later_stamp(c, namespace, customer)) is not None:
                    customer["updatedAt"] = stamp
                    row["doc"] = jsonx.dumps(customer)
                if not live:
                    save_by_id(c, customers, row)
                elif c.execute(customers.update().where(customers.c.namespace == namespace,
                                                        customers.c.id == customer["id"],
                                                        customers.c.deleted_at.is_(None)).values(**row)).rowcount != 1:
                    raise NotFound(f"customer {customer['id']} not found (deleted meanwhile)")
                c.execute(customer_subjects.delete().where(customer_subjects.c.namespace == namespace,
                                                           customer_subjects.c.customer_id == customer["id"]))
                if keys and deleted is None:
                    _insert_subjects(c, namespace, customer["id"], keys)
        except IntegrityError:
            raise Conflict("customer key or a usageAttribution subject key is already used by another customer") from None
        finally:
            self.customers_generation += 1

    @staticmethod
    def _later_stamp(c: Any, namespace: str, customer: dict[str, Any]) -> str | None:
        """The stored customer's updatedAt when it is later than `customer`'s (read under the customer's lock): an
        update that read the customer before another update at once wrote it, on a clock behind, is stamped no
        earlier than the update it replaces (last writer wins; updatedAt never moves back)."""
        stored = c.execute(sa.select(customers.c.doc).where(customers.c.namespace == namespace,
                                                            customers.c.id == customer["id"])).scalar()
        was = jsonx.loads(stored).get("updatedAt") if stored else None
        if not was or not customer.get("updatedAt"):
            return None
        return was if parse_rfc3339(was, "updatedAt") > parse_rfc3339(customer["updatedAt"], "updatedAt") else None

    def get_customer(self, namespace: str, id_or_key: str, include_deleted: bool = False) -> dict[str, Any] | None:
        q = sa.select(customers.c.doc).where(customers.c.namespace == namespace,
                                             sa.or_(customers.c.id == id_or_key, customers.c.key == id_or_key))
        if not include_deleted:
            q = q.where(customers.c.deleted_at.is_(None))
        with self.reads.connect() as c:
            row = c.execute(q).first()
        return jsonx.loads(row.doc) if row else None

    def list_customers(self, namespace: str, include_deleted: bool = False) -> list[dict[str, Any]]:
        q = sa.select(customers.c.doc).where(customers.c.namespace == namespace)
        if not include_deleted:
            q = q.where(customers.c.deleted_at.is_(None))
        with self.reads.connect() as c:
            return [jsonx.loads(r.doc) for r in c.execute(q.order_by(customers.c.created_at, customers.c.id))]

    def live_meters_of(self, aggregation: str) -> list[tuple[str, str]]:
        """(namespace, meter id) of every live meter with this aggregation, in every namespace (migrations)."""
        q = sa.select(meters.c.namespace, meters.c.id).where(meters.c.aggregation == aggregation,
                                                              meters.c.deleted_at.is_(None))
        with self.reads.connect() as c:
            return [(r.namespace, r.id) for r in c.execute(q.order_by(meters.c.namespace, meters.c.created_at))]

    def customers_for_subjects(self, namespace: str, subject_keys: Iterable[str]) -> dict[str, str]:
        keys = list(subject_keys)
        q = sa.select(customer_subjects.c.subject_key, customer_subjects.c.customer_id).where(
            customer_subjects.c.namespace == namespace)
        if keys:
            q = q.where(among(customer_subjects.c.subject_key, keys, self.engine))
        with self.reads.connect() as c:
            return {r.subject_key: r.customer_id for r in c.execute(q)}

    _mine, _fellow = customer_subjects.alias("mine"), customer_subjects.alias("fellow")
    # The subjects of the customers owning `keys`, each once: a semi-join (IN), not a join, which gave a row per
    # (subject asked, fellow) pair, n * n for a customer's n subjects asked together (10,000: 200 s a check).
    _FELLOWS = sa.select(_fellow.c.subject_key).where(
        _fellow.c.namespace == sa.bindparam("ns"),
        _fellow.c.customer_id.in_(sa.select(_mine.c.customer_id).where(
            _mine.c.namespace == sa.bindparam("ns"), among(_mine.c.subject_key, "keys")))
    ).order_by(_fellow.c.subject_key)  # built once: a statement made per call costs more than the query

    def fellow_subjects(self, namespace: str, subjects: Iterable[str]) -> list[str]:
        keys = list(subjects)
        if not keys:
            return []
        with self.reads.connect() as c:
            return list(dict.fromkeys(c.execute(self._FELLOWS, {"ns": namespace, "keys": keys}).scalars()))

    def subjects_of_customers(self, namespace: str, customer_ids: Iterable[str]) -> dict[str, str]:
        q = sa.select(customer_subjects.c.subject_key, customer_subjects.c.customer_id).where(
            customer_subjects.c.namespace == namespace, among(customer_subjects.c.customer_id, customer_ids, self.engine))
        with self.reads.connect() as c:
            return {r.subject_key: r.customer_id for r in c.execute(q)}

    # -- ingestion receipts (issue 21) -------------------------------------------------------------
    def put_receipt(self, namespace: str, doc: dict[str, Any], at: datetime) -> None:
        with self._tx() as c:
            c.execute(ingest_receipts.insert().values(namespace=namespace, id=doc["id"], created_at=at,
                                                      doc=jsonx.dumps(doc)))

    def get_receipt(self, namespace: str, receipt_id: str) -> dict[str, Any] | None:
        with self.reads.connect() as c:
            row = c.execute(sa.select(ingest_receipts.c.doc).where(ingest_receipts.c.namespace == namespace,
                                                                   ingest_receipts.c.id == receipt_id)).first()
        return jsonx.loads(row.doc) if row else None
