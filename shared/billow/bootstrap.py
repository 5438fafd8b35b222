"""The one place that chooses adapters, from a validated settings model.

Embedded default: chdb usage store + SQLite meta store + in-process bus, all under one data directory.
Lambda: settings from BILLOW_* environment variables (ClickHouse over HTTP, PostgreSQL via pg8000, MSK via
confluent-kafka, dead letters to SQS); credentials come from Secrets Manager ARNs, never from plain text."""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

from billow.ports import (
    BacktestJobStore,
    DeadLetters,
    EventBus,
    InvoicingApp,
    JobRunner,
    MetaStore,
    StripeAccount,
    UsageStore,
)
from billow.timeutil import utcnow

if TYPE_CHECKING:
    from billow.adapters.billing_apps import BillingApps
    from billow.adapters.sql_apps import SqlAppStore
    from billow.adapters.sql_billing import SqlBillingStore
    from billow.adapters.sql_catalog import SqlCatalogStore
    from billow.adapters.sql_entitlements import SqlEntitlementStore
    from billow.adapters.sql_keys import SqlKeyStore
    from billow.adapters.sql_llm_prices import SqlLlmPriceStore
    from billow.adapters.sql_notifications import SqlNotificationStore
    from billow.services.balances import BalanceCache

S = TypeVar("S")
_NAMESPACE_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_CHOICES: dict[str, tuple[str, ...]] = {
    "usage_store": ("chdb", "clickhouse", "memory"), "bus": ("inprocess", "kafka"), "kafka_auth": ("none", "iam"),
    "auth": ("off", "keys"), "job_runner": ("thread", "queue"),
}
_INT_RANGES: dict[str, tuple[int, int]] = {"kafka_partitions": (1, 1024), "kafka_retention_ms": (3_600_000, 1 << 48),
                                           "max_body_bytes": (1024, 1 << 31),
                                           "rate_limit_per_key": (0, 1_000_000), "billing_every_s": (0, 86_400)}


@dataclass(frozen=True, slots=True)
class Settings:
    """Validated settings (config file, CLI flags or BILLOW_* variables). A plain dataclass rather than a
    pydantic model: every Lambda handler imports this module, and pydantic alone costs ~0.4 s of cold start."""

    namespace: str = "default"  # with auth off; with API keys each request's namespace is its key's
    auth: str = "off"  # off (embedded first try, said loudly at start) | keys (API keys, Bearer)
    data_dir: str = ".billow"
    usage_store: str = "chdb"  # chdb | clickhouse | memory
    clickhouse_dsn: str | None = None  # e.g. https://user:pass@host:8443/billow
    meta_store_url: str | None = None  # default: sqlite in data_dir; postgresql+pg8000://... in AWS
    bus: str = "inprocess"  # inprocess | kafka
    kafka_bootstrap: str | None = None  # host:port[,host:port]; MSK Serverless IAM listener is port 9098
    kafka_auth: str = "none"  # none | iam
    kafka_partitions: int = 4
    # The topic's retention, set at deploy (functions/migrate): replays reach back only this far. Default 7 days.
    kafka_retention_ms: int = 7 * 24 * 3600 * 1000
    kafka_group: str = "billow-usage-sink"  # consumer group of the local MSK-trigger stand-in
    dlq_url: str | None = None  # SQS queue for records the usage sink cannot process
    clickhouse_secret_arn: str | None = None  # {"dsn": ...} or {"host", "port", "username", "password", "database"}
    db_secret_arn: str | None = None  # RDS-generated secret; db_host (RDS Proxy endpoint) overrides its host
    db_host: str | None = None
    # IAM auth (AWS): log in to db_host (RDS Proxy) as this role with a fresh IAM token per connection, over TLS
    # verified against db_ca_bundle (default: the system trust store), no password (billow.adapters.rds_iam).
    db_user: str | None = None
    db_name: str | None = None  # the database, pinned (the RDS secret names none: it would be "postgres")
    db_ca_bundle: str | None = None
    max_body_bytes: int = 16 * 1024 * 1024
    rate_limit_per_key: int = 200  # requests/s per API key in billow serve (burst: twice that); 0 = off
    # Billing: billow serve runs the billing run every this many seconds (0 = only on request); in AWS the
    # EventBridge schedule does. Invoice documents (HTML + PDF) go to this S3 bucket, else data_dir/documents.
    billing_every_s: int = 60
    documents_bucket: str | None = None
    # Stripe app: {"apiKey": "sk_...", "webhookSecret": "whsec_..."} from Secrets Manager in AWS; plain values
    # (and an API base such as a local stand-in) for billow serve and tests.
    stripe_secret_arn: str | None = None
    stripe_api_key: str | None = None
    stripe_webhook_secret: str | None = None
    stripe_api_base: str | None = None
    # Who runs a job the API accepted (a backtest): a thread of this process, or a worker reading the SQS job queue
    # job_queue_url (AWS: the billing_run function's queue). Default: thread, but queue in AWS Lambda, which freezes
    # a thread once the response is sent.
    job_runner: str | None = None
    job_queue_url: str | None = None
    meters: tuple[dict[str, Any], ...] = ()

    @classmethod
    def parse(cls, values: dict[str, Any]) -> Settings:
        """Build from loosely typed input (YAML, environment), naming every bad field in one ValueError."""
        known = {f.name: f for f in fields(cls)}
        errors: list[str] = [f"{k}: unknown setting" for k in values if k not in known]
        clean: dict[str, Any] = {}
        for name, value in values.items():
            if name not in known or value is None:
                continue
            default = known[name].default
            if name == "meters":
                if not isinstance(value, list) or not all(isinstance(m, dict) for m in value):
                    errors.append("meters: must be a list of meter definitions")
                else:
                    clean[name] = tuple(value)
            elif isinstance(default, int):
                try:
                    number = int(value)
                except (TypeError, ValueError):
                    errors.append(f"{name}: must be an integer, got {value!r}")
                    continue
                lo, hi = _INT_RANGES[name]
                if not lo <= number <= hi:
                    errors.append(f"{name}: must be between {lo} and {hi}")
                clean[name] = number
            elif not isinstance(value, str):
                errors.append(f"{name}: must be a string, got {type(value).__name__}")
            else:
                if name in _CHOICES and value not in _CHOICES[name]:
                    errors.append(f"{name}: must be one of {', '.join(_CHOICES[name])}, got {value!r}")
                clean[name] = value
        ns = clean.get("namespace", "default")
        if not _NAMESPACE_RE.match(ns):
            errors.append(f"namespace: {ns!r} must match {_NAMESPACE_RE.pattern}")
        if errors:
            raise ValueError("invalid settings: " + "; ".join(errors))
        return cls(**clean)

    @classmethod
    def from_env(cls) -> Settings:
        values: dict[str, Any] = {}
        for f in fields(cls):
            env = os.environ.get("BILLOW_" + f.name.upper())
            if env and f.name != "meters":
                values[f.name] = env
        return cls.parse(values).with_secrets()

    def with_secrets(self) -> Settings:
        """Resolve the Secrets Manager ARNs into connection strings (once per cold start)."""
        need_ch = bool(self.clickhouse_secret_arn and not self.clickhouse_dsn)
        need_db = bool(self.db_secret_arn and not self.meta_store_url and not self.db_user)  # IAM: no password
        need_stripe = bool(self.stripe_secret_arn and not self.stripe_api_key)
        if not (need_ch or need_db or need_stripe):
            return self  # nothing to resolve: boto3 is never imported
        from urllib.parse import quote

        from billow.adapters.aws import secret_json

        update: dict[str, Any] = {}
        if need_ch:
            assert self.clickhouse_secret_arn is not None
            ch = secret_json(self.clickhouse_secret_arn)
            update["clickhouse_dsn"] = ch.get("dsn") or (
                f"https://{quote(str(ch['username']), safe='')}:{quote(str(ch['password']), safe='')}"
                f"@{ch['host']}:{ch.get('port', 8443)}/{ch.get('database', 'default')}")
        if need_db:
            assert self.db_secret_arn is not None
            db = secret_json(self.db_secret_arn)
            update["meta_store_url"] = (
                f"postgresql+pg8000://{quote(str(db['username']), safe='')}:{quote(str(db['password']), safe='')}"
                f"@{self.db_host or db['host']}:{db.get('port', 5432)}/{self.db_name or db.get('dbname', 'postgres')}")
        if need_stripe:
            assert self.stripe_secret_arn is not None
            st = secret_json(self.stripe_secret_arn)
            update["stripe_api_key"], update["stripe_webhook_secret"] = st.get("apiKey"), st.get("webhookSecret")
        return replace(self, **update)

    def kafka_config(self) -> dict[str, Any]:
        if not self.kafka_bootstrap:
            raise ValueError("bus=kafka needs kafka_bootstrap (host:port)")
        from billow.adapters.kafka import client_config

        return client_config(self.kafka_bootstrap, self.kafka_auth, os.environ.get("AWS_REGION"))


class SystemClock:
    def now(self) -> datetime:
        return utcnow()


class LazyUsageStore:
    """A usage store opened (and migrated) by the first call that needs it."""

    def __init__(self, factory: Callable[[], UsageStore]) -> None:
        self._factory = factory
        self._store: UsageStore | None = None
        self._lock = threading.Lock()

    def _real(self) -> UsageStore:
        if self._store is None:
            with self._lock:
                if self._store is None:
                    self._store = self._factory()
        return self._store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real(), name)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


class Counters:
    """Process-wide event counters (ingested, stored, duplicates, dead-lettered, unmatched)."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] = self._counts.get(name, 0) + n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


class FileDeadLetters:
    """Embedded dead-letter destination: one JSON line per record, with the reason (SQS in AWS)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.count = 0
        self._lock = threading.Lock()

    def __call__(self, items: list[dict[str, Any]]) -> None:
        from billow import jsonx

        with self._lock:
            self.count += len(items)
            if self.path is not None:
                with self.path.open("a", encoding="utf-8") as fh:
                    for item in items:
                        fh.write(jsonx.dumps(item) + "\n")


@dataclass
class Container:
    settings: Settings
    meta: MetaStore
    usage: UsageStore
    clock: SystemClock
    dead_letters: DeadLetters
    entitlements: SqlEntitlementStore
    keys: SqlKeyStore
    bus: EventBus | None = None
    # Set where this process hosts its own usage sink (the in-process bus): see services.balances.BalanceCache.
    balance_cache: BalanceCache | None = None
    metrics: Counters = field(default_factory=Counters)
    _sink_lock: threading.RLock = field(default_factory=threading.RLock)
    _stores: dict[type, Any] = field(default_factory=dict)
    _stores_lock: threading.Lock = field(default_factory=threading.Lock)
    # Whether a store's first use may migrate the schema (billow.migrations); never in Lambda (see build).
    migrate_stores: bool = True
    _job_runner: JobRunner | None = None

    def store(self, cls: type[S]) -> S:
        """The process's one `cls(engine)` on the meta store's database (an SQL store of one bounded context:
        catalog, subscriptions, notifications, portal tokens, ...), the schema migrated on first use (a no-op once
        at head) unless this container must not run DDL."""
        found = self._stores.get(cls)
        if found is None:
            with self._stores_lock:
                found = self._stores.get(cls)
                if found is None:
                    found = cls(self.meta.engine)  # type: ignore[attr-defined,call-arg]
                    if self.migrate_stores:
                        found.migrate()  # type: ignore[attr-defined]
                    self._stores[cls] = found
        return cast(S, found)

    # The bounded contexts' stores, imported on first use (the API function's cold import stays free of
    # SQLAlchemy: its first request pays for it once).
    def catalog_store(self) -> SqlCatalogStore:
        from billow.adapters.sql_catalog import SqlCatalogStore

        return self.store(SqlCatalogStore)

    def billing_store(self) -> SqlBillingStore:
        from billow.adapters.sql_billing import SqlBillingStore

        return self.store(SqlBillingStore)

    def notification_store(self) -> SqlNotificationStore:
        from billow.adapters.sql_notifications import SqlNotificationStore

        return self.store(SqlNotificationStore)

    def backtest_jobs(self) -> BacktestJobStore:
        from billow.adapters.sql_backtests import SqlBacktestJobStore

        return self.store(SqlBacktestJobStore)

    def job_runner(self) -> JobRunner:
        """Who runs the jobs the API accepts (settings.job_runner): a thread of this process, which runs
        services.jobs.run_job on this container, or one message per job on the SQS job queue (job_queue_url), whose
        worker (functions/billing_run) runs it. In Lambda only the queue: a thread freezes with the response."""
        if self._job_runner is None:
            with self._stores_lock:
                if self._job_runner is None:
                    self._job_runner = self._make_job_runner()
        return self._job_runner

    def _make_job_runner(self) -> JobRunner:
        in_lambda = bool(os.environ.get("AWS_LAMBDA_FUNCTION_NAME"))
        kind = self.settings.job_runner or ("queue" if in_lambda else "thread")
        if kind == "queue":
            if not self.settings.job_queue_url:
                raise ValueError("job_runner=queue needs job_queue_url (BILLOW_JOB_QUEUE_URL: the SQS job queue)")
            from billow.adapters.job_runners import SqsJobRunner

            return SqsJobRunner(self.settings.job_queue_url)
        if in_lambda:
            raise ValueError("job_runner=thread cannot run in AWS Lambda (the function is frozen once it answers): "
                             "set BILLOW_JOB_QUEUE_URL, or ask with ?wait=true")
        from billow.adapters.job_runners import ThreadJobRunner
        from billow.services import jobs

        def work(kind: str, namespace: str, id_: str) -> None:
            try:
                jobs.run_job(self, kind, namespace, id_)
            except Exception:  # the job is failed in the store (or reads so once stale); nothing waits on this thread
                import logging

                logging.getLogger("billow.jobs").exception("job %s %s failed", kind, id_)

        return ThreadJobRunner(work)

    def llm_price_store(self) -> SqlLlmPriceStore:
        from billow.adapters.sql_llm_prices import SqlLlmPriceStore

        return self.store(SqlLlmPriceStore)

    def billing_apps(self) -> BillingApps:
        """The invoicing apps (sandbox, custom invoicing, Stripe: picked here from the settings) with documents
        (the document store and the fpdf2 renderer) and notifications, for the current namespace."""
        from billow.adapters.billing_apps import (
            BillingApps,
            CustomInvoicing,
            SandboxInvoicing,
            StripeInvoicing,
        )
        from billow.adapters.documents import document_store
        from billow.adapters.rendering import InvoiceRenderer

        s = self.settings
        invoicing: dict[str, InvoicingApp] = {"sandbox": SandboxInvoicing(), "custom_invoicing": CustomInvoicing(),
                     "stripe": StripeInvoicing(s.stripe_api_key, s.stripe_api_base)}
        namespace = self.namespace

        def installed(app_id: str) -> InvoicingApp | None:  # an app of the namespace by id (issue 16)
            apps = self.app_store()
            doc = apps.get_app(namespace, app_id)
            if doc is None:
                return None
            if doc["type"] == "stripe":
                from billow.services.apps import StripeCustomerData

                return StripeInvoicing(apps.app_secrets(namespace, app_id).get("apiKey"), s.stripe_api_base,
                                       StripeCustomerData(namespace, app_id, apps))
            if doc["type"] == "custom_invoicing":
                return CustomInvoicing(issuing_hook=bool(doc.get("enableIssuingSyncHook")),
                                       draft_hook=bool(doc.get("enableDraftSyncHook")))
            return invoicing.get(doc["type"])

        return BillingApps(namespace, invoicing=invoicing, billing=self.billing_store(),
                           notifications=self.notification_store(), documents=lambda: document_store(s),
                           renderer=InvoiceRenderer(), clock=self.clock, installed=installed)

    def app_store(self) -> SqlAppStore:
        from billow.adapters.sql_apps import SqlAppStore

        return self.store(SqlAppStore)

    def stripe_account(self, api_key: str) -> StripeAccount:
        """Stripe opened with an app's API key (at settings.stripe_api_base when set: a local stand-in)."""
        from billow.adapters.stripe_app import StripeApp

        return StripeApp(api_key, self.settings.stripe_api_base)

    @property
    def namespace(self) -> str:
        """The namespace of the request being served (from its API key), else the configured one."""
        return _request_namespace.get() or self.settings.namespace

    @contextlib.contextmanager
    def acting_for(self, namespace: str | None) -> Iterator[None]:
        token = _request_namespace.set(namespace)
        try:
            yield
        finally:
            _request_namespace.reset(token)

    @contextlib.contextmanager
    def sink_lock(self) -> Iterator[None]:
        """Serialises sink writes and meter backfills in one process (one partition consumer at a time)."""
        with self._sink_lock:
            yield

    def close(self) -> None:
        if self.bus is not None:
            self.bus.close()
        self.usage.close()
        self.meta.close()


def engine_queries(cpus: int | None = None) -> int:
    """How many usage queries the embedded engine (chdb) runs at once; the others wait their turn. One fewer than the
    CPUs this process may use, at least one. A query is mostly the engine's native work (a small meter query ~9 ms of
    CPU, the GIL released), which the OS shares out per thread with the one thread at a time that runs Python (the
    HTTP event loop, entitlement checks, ingest's parsing): with up to four at once on two CPUs, cached checks beside
    queries kept 21-35 % of their rate (bench.serve_concurrency, mixq). A ClickHouse
    server runs its queries elsewhere: no limit there but the pool's size."""
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus - 1)


def build(settings: Settings, deliver: Callable[[dict[str, Any]], Any] | None = None, *,
          migrate: bool | None = None) -> Container:
    """`migrate`: bring the meta database (Alembic) and the usage store to their schema heads while opening them.
    Default: everywhere but in Lambda, where the deploy's `migrate` function does it once and a cold start only
    checks the schema revisions (a SELECT each), failing with what to run if they are behind: no DDL ever runs
    on a request path."""
    if migrate is None:
        migrate = not os.environ.get("AWS_LAMBDA_FUNCTION_NAME")
    data = Path(settings.data_dir)
    if settings.usage_store == "chdb" or not settings.meta_store_url:
        data.mkdir(parents=True, exist_ok=True)
    usage: UsageStore
    if settings.usage_store == "memory":
        from billow.adapters.memory import InMemoryUsageStore

        usage = InMemoryUsageStore()
    else:
        dsn = settings.clickhouse_dsn if settings.usage_store == "clickhouse" else f"chdb://{(data / 'usage').resolve()}"

        def open_usage() -> UsageStore:
            from billow.adapters.clickhouse import ClickHouseUsageStore, connect

            if not dsn:
                raise ValueError("usage_store=clickhouse needs clickhouse_dsn (or clickhouse_secret_arn)")

            # Embedded, this process alone writes the chdb path: it journals the write in progress, and opening
            # the store repairs the rollups of a write a crash tore.
            # Reads run side by side on a few more clients of the engine (one at a time per client); not in Lambda,
            # which serves one request at a time and would only pay for a second connection. The embedded engine
            # runs in this process, beside its Python: it runs one query fewer than the CPUs at once (engine_queries).
            embedded = settings.usage_store == "chdb"
            store = ClickHouseUsageStore(connect(dsn), (data / "usage-journal") if embedded else None,
                                         reader=None if os.environ.get("AWS_LAMBDA_FUNCTION_NAME") else lambda: connect(dsn),
                                         queries=engine_queries() if embedded else None)
            if migrate:
                store.migrate()
            elif pending := store.pending_migrations():
                from billow.migrations import MIGRATE_HINT, SchemaNotCurrent

                raise SchemaNotCurrent(f"the usage store lacks migrations {pending}: {MIGRATE_HINT}")
            return store

        # Opened on first use: ingest and the authorizer never touch usage, so they neither wait for nor depend
        # on ClickHouse.
        usage = cast(UsageStore, LazyUsageStore(open_usage))
    from billow import migrations
    from billow.adapters.sql import SqlMetaStore
    from billow.adapters.sql_entitlements import SqlEntitlementStore
    from billow.adapters.sql_keys import SqlKeyStore

    meta = SqlMetaStore(migrations.meta_url(settings), **migrations.meta_engine_options(settings))
    if migrate:
        meta.migrate()  # every store's tables: one Alembic upgrade
    else:
        migrations.check(meta.engine)
    entitlements = SqlEntitlementStore(meta.engine)
    keys = SqlKeyStore(meta.engine)
    dl: DeadLetters
    if settings.dlq_url:
        from billow.adapters.aws import SqsDeadLetters

        dl = SqsDeadLetters(settings.dlq_url)
    else:
        dl = FileDeadLetters(data / "dead-letters.jsonl" if data.exists() else None)
    c = Container(settings=settings, meta=meta, usage=usage, clock=SystemClock(), dead_letters=dl,
                  entitlements=entitlements, keys=keys, migrate_stores=migrate)
    if settings.bus == "kafka":
        from billow.adapters.kafka import KafkaBus

        c.bus = KafkaBus(settings.kafka_config(), partitions=settings.kafka_partitions,
                         namespaces={settings.namespace})  # the one topic this deployment's sink consumes
    elif deliver is not None:
        from billow.adapters.inprocess_bus import InProcessBus

        c.bus = InProcessBus(deliver, c.sink_lock)
        from billow.services.balances import BalanceCache

        c.balance_cache = BalanceCache(lambda: c.clock.now())  # c.clock: tests set their own after build
    if settings.meters:
        from billow.services.meters import sync_config_meters

        sync_config_meters(settings.namespace, list(settings.meters), meta=meta, usage=usage, now=c.clock.now(),
                           sink_lock=c.sink_lock)
    return c


_current: Container | None = None
_request_namespace: contextvars.ContextVar[str | None] = contextvars.ContextVar("billow_namespace", default=None)
_current_lock = threading.Lock()


def install(c: Container | None) -> None:
    """Make `c` the process-wide container the handlers use (the local host calls this before serving)."""
    global _current
    _current = c


def container() -> Container:
    """The process-wide container; in Lambda it is built once per cold start from the environment."""
    global _current
    if _current is None:
        with _current_lock:
            if _current is None:
                _current = build(Settings.from_env())
    return _current
