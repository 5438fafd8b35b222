"""Ports: what the services need from the outside world. Adapters implement them; bootstrap picks them."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

from billow.domain.backtest_jobs import Job as BacktestJob
from billow.domain.billing import Mark
from billow.domain.documents import View
from billow.domain.events import CloudEvent
from billow.domain.invoices import CreditBack
from billow.domain.lineage import LineEvent, UsageDigest
from billow.domain.meters import Meter
from billow.domain.usage import AggRow, GroupFilter, MeterValue, RatedSums, Rating, StoredEvent, UsageQuery


class Clock(Protocol):
    def now(self) -> datetime: ...


class UsageStore(Protocol):
    """Raw events and per-meter values (ClickHouse in production, chdb embedded, a dict twin in unit tests)."""

    def migrate(self) -> None: ...

    def present_keys(self, namespace: str, keys: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        """(source, id) pairs whose raw event is stored: fully ingested."""
        ...

    def written_keys(self, namespace: str, keys: Sequence[tuple[str, str]]) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
        """(stored, begun): the pairs whose raw event is stored (fully ingested), and those of which a write began
        without storing the raw event (its values may be stored: check `valued_keys`). The others were never
        written. Its cost per key does not grow with the store."""
        ...

    def valued_keys(self, namespace: str, meter_ids: Sequence[str], start: datetime | None, end: datetime | None,
                    keys: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        """(source, id) pairs that already have meter values between start and end, inclusive (a half-done earlier
        write); either bound None: no bound on that side."""
        ...

    def write(self, namespace: str, values: Sequence[MeterValue], events: Sequence[StoredEvent]) -> None:
        """Write values first, raw events second: a stored raw event means its values are stored too. The sink hands
        over its columns (domain.usage.ValueColumns / EventColumns: sequences of MeterValue / StoredEvent that an
        adapter may read column by column instead)."""
        ...

    def repair(self, namespace: str, keys: Sequence[tuple[str, str]]) -> None:
        """Make the pre-aggregates (rollups) of these events' values whole again: they were found valued without
        their raw event, so the write that stored them died, maybe before its rollups. Idempotent."""
        ...

    def aggregate(self, query: UsageQuery) -> list[AggRow]: ...

    def aggregate_each(self, query: UsageQuery, filter_sets: Sequence[list[list[GroupFilter]]]) -> list[list[AggRow]]:
        """`aggregate(query)` with its filters replaced by each of `filter_sets` in turn (one list of rows per set, in
        their order; `query.filters` is not used), in one pass over the meter's values: the billing run's usage of the
        many features that filter one meter (one per model, say) over one span."""
        ...

    def bounded_usage(self, namespace: str, meter_id: str, aggregation: str, subjects: Sequence[str],
                      filters: list[list[GroupFilter]], bounds: Sequence[datetime]) -> list[Decimal]:
        """SUM or COUNT (`aggregation`) of the meter's values of `subjects` that match `filters`, in each
        [bounds[i], bounds[i+1]) (ascending, to the millisecond; inner bounds are whole minutes): len(bounds) - 1
        exact values, 0 where there is none. An entitlement check's one usage read (issue 17 item 5)."""
        ...

    def window_ends(self, starts: Sequence[datetime], size: str, tz: str) -> dict[datetime, datetime]:
        """The end of each window of `size` (HOUR, DAY or MONTH) in `tz` starting at `starts` (as `aggregate`
        returned them): the next window's start by the store's own calendar. Its time-zone data may be another
        version than Python's (chdb's differs on Vancouver from late 2026), and a window's end computed by Python
        from the store's start then overlapped the next window by an hour; chdb's hour after a half-hour DST change
        (Lord Howe) can be half an hour long."""
        ...

    def window_starts(self, start: datetime, end: datetime, size: str, tz: str) -> list[datetime]:
        """The starts of the windows of `size` (HOUR, DAY or MONTH) in `tz` that hold an instant of [start, end), ascending,
        by the store's own calendar (where `aggregate` and `window_ends` put them; the first may be before
        `start`). For a windowed entitlement history, whose days Python's time-zone data drew an hour off the
        meter query's (Vancouver from November 2026). The caller keeps the range to a bounded number of windows."""
        ...

    def sum_meters(self, query: UsageQuery, meter_ids: Sequence[str]) -> list[tuple[Any, ...]]:
        """The SUM of each of `meter_ids` side by side in one pass, grouped as `aggregate` groups `query` (whose
        meter_id and aggregation are not used): one row per group any of the meters has values in, (window start
        or None, subject or None, customer id or None, group values as a tuple of strings ("" when absent), then
        each meter's sum in the order of meter_ids, 0 where it has none), in the order of those columns."""
        ...

    def rated_sums(self, query: UsageQuery, meter_ids: Sequence[str], rating: Rating) -> RatedSums:
        """The rows sum_meters would return, priced and added up as `rating` says (domain.usage.rate_rows is
        the reference): the rated rows added up per line in the store, the others as they are; `rating.rates`
        is called once per distinct (window, first `by` group values)."""
        ...

    def scan_events(self, namespace: str, event_type: str, after: tuple[str, str] | None, limit: int) -> list[CloudEvent]:
        """Raw events of one type in (source, id) order, for backfilling a new meter."""
        ...

    def list_events(self, namespace: str, *, subjects: Sequence[str] | None, start: datetime | None,
                    end: datetime | None, event_id: str | None, limit: int) -> list[StoredEvent]: ...

    def count_events(self, namespace: str, start: datetime) -> dict[str, int]:
        """Stored events per subject whose time is at or after `start` (OpenMeter's debug metrics)."""
        ...

    def subjects(self, namespace: str, meter_id: str, start: datetime | None, end: datetime | None) -> list[str]: ...

    def ping(self) -> None: ...

    def close(self) -> None: ...

    def line_events(self, namespace: str, meter_id: str, subjects: Sequence[str], start: datetime, end: datetime,
                    filters: list[list[GroupFilter]], after: tuple[str, str] | None, limit: int | None) -> list[LineEvent]:
        """The meter values behind a usage line (issue 21 lineage): `meter_id`'s values of `subjects` with time in
        [start, end) passing `filters`, in (source, id) order after the cursor `after`, at most `limit`, each with
        its event's ingest time."""
        ...

    def line_digests(self, namespace: str, meter_id: str, start: datetime, end: datetime,
                     filters: list[list[GroupFilter]], groups: dict[str, str]) -> dict[str, UsageDigest]:
        """Per group (`groups`: subject -> group, e.g. the customer): count, exact sum and key hash
        (billow.domain.lineage.key_hash) of `meter_id`'s values in [start, end) passing `filters`; groups with no
        value are left out."""
        ...

    def line_digests_each(self, namespace: str, meter_id: str, start: datetime, end: datetime,
                          filter_sets: Sequence[list[list[GroupFilter]]],
                          groups: dict[str, str]) -> list[dict[str, UsageDigest]]:
        """`line_digests` once per filter set (one dict per set, in their order), in one pass over the values."""
        ...


class MetaStore(Protocol):
    """Meters, subjects, customers (SQLite embedded, PostgreSQL in production)."""

    def migrate(self) -> None: ...

    def put_receipt(self, namespace: str, doc: dict[str, Any], at: datetime) -> None:
        """Keep an ingestion receipt (billow.domain.receipts) under its id."""
        ...

    def get_receipt(self, namespace: str, receipt_id: str) -> dict[str, Any] | None: ...

    def put_meter(self, namespace: str, meter: Meter, managed: bool = False) -> None: ...

    def update_meter(self, namespace: str, meter: Meter, *, expect: Meter | None = None) -> None:
        """Save a meter's changes; with `expect` (as read), only if it is still live and so (else Conflict)."""
        ...

    def get_meter(self, namespace: str, id_or_slug: str, include_deleted: bool = False) -> Meter | None: ...

    def list_meters(self, namespace: str, include_deleted: bool = False) -> list[Meter]: ...

    def delete_meter(self, namespace: str, meter_id: str, at: datetime, *,
                     check: Callable[[], None] | None = None) -> None:
        """`check`: run under the lock of the meter's uses, before the write (it raises to refuse)."""

    def meter_lock(self, namespace: str, meter_id: str) -> AbstractContextManager[None]:
        """Across processes: held while checking which events have a value of the meter and writing the rest."""
        ...

    def upsert_subject(self, namespace: str, subject: dict[str, Any], now: datetime) -> dict[str, Any]: ...

    def list_subjects(self, namespace: str) -> list[dict[str, Any]]: ...

    def get_subject(self, namespace: str, id_or_key: str) -> dict[str, Any] | None: ...

    def delete_subject(self, namespace: str, subject_id: str, at: datetime) -> None: ...

    def put_customer(self, namespace: str, customer: dict[str, Any], *, live: bool = False,
                     check: Callable[[], None] | None = None,
                     taking: Callable[[list[str]], None] | None = None) -> None:
        """Insert or replace a customer; with `live`, only replace one still live (else NotFound). `check`: run
        under the lock of the customer's subscriptions, before the write (it raises to refuse). `taking`: run
        with the subject keys the write gives the customer that it did not have (when there are any), under that
        lock and those subjects' (which writes through them take), before the write (it raises to refuse)."""

    def get_customer(self, namespace: str, id_or_key: str, include_deleted: bool = False) -> dict[str, Any] | None: ...

    def list_customers(self, namespace: str, include_deleted: bool = False) -> list[dict[str, Any]]: ...

    def customers_for_subjects(self, namespace: str, subjects: Iterable[str]) -> dict[str, str]: ...

    customers_generation: int  # bumped by every customer write of this process
    subjects_generation: int  # bumped by every subject write of this process

    def fellow_subjects(self, namespace: str, subjects: Iterable[str]) -> list[str]:
        """Every subject key of the customers that own any of `subjects` (one query)."""
        ...

    def ping(self) -> None: ...

    def close(self) -> None: ...


class EventBus(Protocol):
    """Kafka in production (MSK), an in-process bus embedded. publish() returns once the bus has the records."""

    def publish(self, namespace: str, records: Sequence[tuple[bytes, bytes]]) -> None: ...

    def close(self) -> None: ...


class DeadLetters(Protocol):
    """Where the usage sink reports records it cannot process (SQS in AWS, a JSON-lines file embedded)."""

    count: int

    def __call__(self, items: list[dict[str, Any]]) -> None: ...


# -- billing ----------------------------------------------------------------------------------------------------
# One customer's share of a billing run's transaction: its new invoice (None: marks only), the billing marks it
# advanced, the prepaid credit it used ((entry id, amount)) or gives back (CreditBack: a negative invoice issued in the
# transaction) and the pending-line holders without the lines it took (each as (new document, the JSON it was read
# as): written only if unchanged meanwhile).
BillingCommit = tuple[dict[str, Any] | None, list[Mark], tuple[str, Decimal] | CreditBack | None,
                      list[tuple[dict[str, Any], str]]]


class InvoiceNumberTaken(RuntimeError):
    """A billing commit wrote an invoice number another invoice has (BillingStore.commit_billing); nothing written.
    Numbers are unique to their customer, so the other is the same customer's: made meanwhile by a concurrent run
    (its count moved since it was read), or, if not, numbered wrongly."""


class BillingStore(Protocol):
    """Billing profiles, customer overrides, invoices (OpenMeter's JSON), billing marks and prepaid credit: the
    billing run's unit of work (SQLite embedded, PostgreSQL in production: adapters/sql_billing.py)."""

    def put_profile(self, namespace: str, doc: dict[str, Any], *, expect_doc: str | None = None,
                    check: Callable[[], None] | None = None) -> None:
        """Save a profile; one marked default makes every other profile of the namespace not default. With
        `expect_doc`, only if it is still stored as that JSON (else Conflict). With `check`, it runs (and raises to
        refuse) where the write is made, one at a time with the uninstall of each app the profile names."""
        ...

    def get_profile(self, namespace: str, id_: str) -> dict[str, Any] | None: ...

    def list_profiles(self, namespace: str, include_deleted: bool = False) -> list[dict[str, Any]]: ...

    def put_override(self, namespace: str, customer_id: str, doc: dict[str, Any] | None) -> None:
        """Replace the customer's override (None deletes it)."""
        ...

    def get_override(self, namespace: str, customer_id: str) -> dict[str, Any] | None: ...

    def list_overrides(self, namespace: str) -> dict[str, dict[str, Any]]: ...

    def put_invoice(self, namespace: str, doc: dict[str, Any], *, expect_status: str | None = None,
                    credit: CreditBack | None = None, expect_doc: str | None = None) -> None:
        """Save an invoice; with `expect_status`, only if it is still in that status (else Conflict), and with
        `expect_doc` too only if it is still stored as that JSON (what it was read as: nobody changed it since). A new
        invoice whose number another took meanwhile is Conflict. With `credit`
        (a negative invoice issued: what it gives back; needs `expect_status`) ONE transaction also adds the credit to
        the customer's prepaid balance, once: an entry with its id already there is not added again, and a lost
        race writes neither."""
        ...

    def get_invoice(self, namespace: str, id_: str) -> dict[str, Any] | None: ...

    def list_invoices(self, namespace: str, *, customer_ids: Sequence[str] | None = None,
                      statuses: Sequence[str] | None = None) -> list[dict[str, Any]]: ...

    def invoice_counts(self, namespace: str) -> dict[str, int]:
        """Invoices per customer id (the next invoice number)."""
        ...

    def marks_for(self, namespace: str,
                  subscription_ids: Sequence[str] | None = None) -> dict[tuple[str, datetime, str], Mark]:
        """The billing marks, by (subscription id, period start, term)."""
        ...

    def commit_billing(self, namespace: str, items: Sequence[BillingCommit], now: datetime) -> None:
        """ONE transaction for all items: each mark moves from the revision read (a new one is inserted), each
        invoice and the credit it used or gives back are written, each holder only if unchanged. Any lost race (a mark moved,
        a holder changed: another run got there first) raises Conflict and nothing of the batch is written; an invoice
        number already taken raises InvoiceNumberTaken."""
        ...

    def delete_draft(self, namespace: str, doc: dict[str, Any], *, expect_status: str, marks: Sequence[Mark],
                     holder: tuple[dict[str, Any], str | None] | None, credit_entry_id: str) -> Decimal:
        """ONE transaction: the draft `doc` (deletedAt set) is kept deleted, only if still in `expect_status` (never
        listed by status again, never issued); each mark moves from the revision read to what it is without the
        draft's part (Mark.without; an empty one is deleted); the prepaid credit the draft used comes back (an entry
        `credit_entry_id`; the amount returned); the pending-line holder (new document, the JSON it was read as, None:
        a new holder) gets the draft's one-off lines back. Any lost race raises Conflict and nothing is written."""
        ...

    def add_credit(self, namespace: str, entry_id: str, customer_id: str, currency: str, amount: Decimal,
                   doc: dict[str, Any]) -> None: ...

    def credit_balances(self, namespace: str) -> dict[tuple[str, str], Decimal]:
        """Every customer's prepaid balance by (customer id, currency)."""
        ...

    def credit_balance(self, namespace: str, customer_id: str, currency: str) -> Decimal: ...

    def credit_entries(self, namespace: str, customer_id: str, currency: str) -> list[dict[str, Any]]:
        """The prepaid balance's ledger by entry id: each entry's `id`, signed `amount` (exact text: > 0 added,
        < 0 used) and what it records (`invoiceId` of the invoice that used it or gave it back, `description`)."""
        ...


class SubscriptionStore(Protocol):
    """Subscriptions (OpenMeter's JSON) as the billing run reads them (adapters/sql_catalog.py; the subscription
    use-cases need the catalog too: services.subscriptions.SubscriptionStore)."""

    def put_subscription(self, namespace: str, doc: dict[str, Any], *, expect_doc: str | None = None,
                         check: Callable[[list[dict[str, Any]]], None] | None = None,
                         addon_id: str | None = None) -> None:
        """Save a subscription; with `expect_doc`, only if it is still stored as that JSON (else Conflict); with
        `check`, it runs (and raises to refuse) on the customer's subscriptions as they are where the write is made,
        one at a time with add_subscription's (and, with `addon_id`, with that add-on version's archive)."""
        ...

    def get_subscription(self, namespace: str, id_: str) -> dict[str, Any] | None: ...

    def list_subscriptions(self, namespace: str, customer_id: str | None = None, *,
                           customer_ids: Sequence[str] | None = None) -> list[dict[str, Any]]: ...


class InvoicingApp(Protocol):
    """The app that issues an invoice outside Billow (a profile's `apps.invoicing`): sandbox, custom invoicing
    or Stripe (adapters/billing_apps.py, adapters/stripe_app.py; bootstrap picks the one a profile names)."""

    def issue(self, invoice: dict[str, Any]) -> dict[str, Any] | None:
        """Issue the invoice: the external ids to record on it (`externalIds`; {} when there are none), or None
        when the app confirms later (custom invoicing: POST .../issuing/synchronized). Raises when it failed: the
        invoice stays issuing, failed, and can be retried."""
        ...

    def void(self, invoice: dict[str, Any]) -> None:
        """Void the invoice the app issued (called only when it holds an external invoicing id)."""
        ...

    # Whether the app itself keeps what a negative invoice (a correction that lowered an invoiced period) owes the
    # customer. Stripe does (True): it books a negative invoice to the customer's Stripe balance and applies it to the
    # next Stripe invoice, so Billow adds nothing to the prepaid balance (that would give it back twice). Every other
    # app (False): Billow adds it to the customer's prepaid balance when the invoice is issued (Invoice.credit_back).
    keeps_customer_credit: bool


class DocumentRenderer(Protocol):
    """Draws the view of an invoice (billow.domain.documents.View) as its two documents: adapters/rendering.py's
    InvoiceRenderer (HTML page; PDF with fpdf2, DejaVu Sans embedded), picked by bootstrap. Deterministic: the
    same view gives the same bytes."""

    def html(self, view: View) -> bytes:
        """A self-contained printable HTML page, UTF-8."""
        ...

    def pdf(self, view: View) -> bytes: ...


class BillingApps(Protocol):
    """What happens outside Billow when an invoice moves: its invoicing app, its documents and the invoice
    notifications (adapters/billing_apps.py, built per namespace by bootstrap)."""

    def invoicing(self, app: str) -> InvoicingApp:
        """The invoicing app a billing profile names: an installed app's id, or a type name (APP_TYPES)."""
        ...

    def issued(self, invoice: dict[str, Any]) -> None:
        """A newly issued invoice: the notification rules hear of it."""
        ...

    def updated(self, invoice: dict[str, Any]) -> None:
        """Its status changed (paid, voided, overdue, ...): the notification rules hear of it."""
        ...


# -- pricing lab jobs -----------------------------------------------------------------------------------------------
class BacktestJobStore(Protocol):
    """Backtest jobs, readable from every process (adapters/sql_backtests.SqlBacktestJobStore on the meta store;
    adapters/memory_backtests.InMemoryBacktestJobStore, the unit tests' twin). Writes that move a job are
    compare-and-set on its status, so two workers, or a worker and a reader that found it stale, never both win."""

    def add(self, job: BacktestJob) -> None:
        """Keep a new job (its id is new)."""
        ...

    def get(self, namespace: str, id_: str, *, rows: bool = True) -> BacktestJob | None:
        """The job as stored (with its spec and, once succeeded, its rows); None if the namespace has no such job.
        `rows=False` leaves the result rows out (a progress read: 10,000 rows are ~2 MB of JSON)."""
        ...

    def claim(self, namespace: str, id_: str, now: datetime, alive_since: datetime) -> BacktestJob | None:
        """queued -> running, if it is queued and was last written after `alive_since` (else None: another worker
        has it, it is done, or it is stale); the job as claimed."""
        ...

    def report(self, namespace: str, id_: str, success: int, failed: int, at: datetime) -> None:
        """A running job's progress (written at a bounded rate by its worker)."""
        ...

    def finish(self, job: BacktestJob, *, expect: Sequence[str] = ("running",),
               last_written_by: datetime | None = None) -> bool:
        """Write the job's final state (status, progress, completedAt, error, failures, rows) if its stored status
        is in `expect` (and, with `last_written_by`, it was last written at or before then); whether it did."""
        ...

    def forget(self, namespace: str, completed_before: datetime) -> int:
        """Drop the namespace's finished jobs completed before then; how many."""
        ...


class JobRunner(Protocol):
    """Who runs an accepted job: a thread of this process (`billow serve`; adapters/job_runners.ThreadJobRunner)
    or a worker reading a queue (AWS: the billing_run function's SQS job queue; adapters/job_runners.SqsJobRunner).
    Bootstrap picks it (settings.job_runner)."""

    def submit(self, kind: str, namespace: str, id_: str) -> None:
        """Hand the job over; returns once the runner has it (a thread started, a message sent). Raises if it
        could not be handed over."""
        ...


# -- apps ---------------------------------------------------------------------------------------------------------
class AppStore(Protocol):
    """Installed apps (OpenMeter's App JSON, ULIDs unique across namespaces; secrets kept apart) and customer app
    data (adapters/sql_apps.py)."""

    def add_app(self, namespace: str, doc: dict[str, Any], secrets: dict[str, Any] | None = None, *,
                singleton: str | None = None) -> dict[str, Any]:
        """Insert a new app; with `singleton` at most one per namespace (the existing one is returned)."""
        ...

    def put_app(self, namespace: str, doc: dict[str, Any], secrets: dict[str, Any] | None = None, *,
                live: bool = False, check: Callable[[], None] | None = None, expect_doc: str | None = None) -> None:
        """Update an app; with `live` only one still installed (else NotFound); with `expect_doc` only one still
        stored as that JSON (else Conflict); with `check`, it runs (and raises to refuse) where the write is made,
        one at a time with the writes of the profiles that name the app."""
        ...

    def get_app(self, namespace: str, id_: str) -> dict[str, Any] | None: ...

    def app_secrets(self, namespace: str, id_: str) -> dict[str, Any]: ...

    def namespace_of_app(self, id_: str) -> str | None: ...

    def list_apps(self, namespace: str, include_deleted: bool = False) -> list[dict[str, Any]]: ...

    def put_customer_app(self, namespace: str, customer_id: str, app_id: str, doc: dict[str, Any] | None) -> None: ...

    def customer_apps(self, namespace: str, customer_id: str) -> dict[str, dict[str, Any]]: ...

    def app_in_customer_data(self, namespace: str, app_id: str) -> bool: ...


class StripeAccount(Protocol):
    """One Stripe account, opened with an app's API key (adapters/stripe_app.StripeApp)."""

    def account(self) -> dict[str, Any]:
        """{id, livemode}; a key Stripe refuses is a ValidationFailed naming apiKey."""
        ...

    def create_webhook_endpoint(self, url: str, app_id: str) -> dict[str, Any]:
        """{id, secret}"""
        ...

    def ensure_customer(self, customer: dict[str, Any], existing_id: str | None = None) -> str: ...

    def customer_exists(self, stripe_customer_id: str) -> bool: ...

    def delete_webhook_endpoint(self, endpoint_id: str) -> None: ...

    def portal_session(self, stripe_customer_id: str, *, configuration: str | None = None,
                       locale: str | None = None, return_url: str | None = None) -> dict[str, Any]: ...

    def checkout_session(self, params: dict[str, Any]) -> dict[str, Any]: ...
