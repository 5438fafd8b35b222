"""Billing profiles, customer overrides, invoices, billing marks and prepaid credit on SQLAlchemy Core (SQLite
embedded, PostgreSQL in AWS).

A billing mark records what has been billed for one subscription period and payment term (the billed total and
quantity per line key). A billing run writes its invoice and the marks it advanced in ONE transaction, and
a mark only moves from the revision the run read: when two runs overlap, the second one's transaction fails
on the mark (a unique key for a new mark, the revision for an existing one) and writes nothing, so no period
is ever billed twice."""

from __future__ import annotations

import decimal
from collections.abc import Callable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from billow import jsonx
from billow.adapters.sql import TS, among, app_use_lock, reads, save_by_id, serialise, upsert, utc
from billow.domain.billing import Mark
from billow.domain.invoices import CreditBack
from billow.errors import Conflict
from billow.exact import EXACT
from billow.ports import BillingCommit, InvoiceNumberTaken
from billow.timeutil import format_rfc3339

md = sa.MetaData()

profiles = sa.Table(
    "billing_profiles", md,
    sa.Column("namespace", sa.String(64), nullable=False),
    sa.Column("id", sa.String(26), primary_key=True),
    sa.Column("is_default", sa.Boolean, nullable=False),
    sa.Column("deleted", sa.Boolean, nullable=False),
    sa.Column("doc", sa.Text, nullable=False),
)

overrides = sa.Table(
    "billing_customer_overrides", md,
    sa.Column("namespace", sa.String(64), nullable=False),
    sa.Column("customer_id", sa.String(26), nullable=False),
    sa.Column("doc", sa.Text, nullable=False),
    sa.PrimaryKeyConstraint("namespace", "customer_id"),
)

invoices = sa.Table(
    "invoices", md,
    sa.Column("namespace", sa.String(64), nullable=False),
    sa.Column("id", sa.String(26), primary_key=True),
    sa.Column("customer_id", sa.String(26), nullable=False),
    sa.Column("number", sa.String(64), nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("doc", sa.Text, nullable=False),
    sa.UniqueConstraint("namespace", "number", name="invoices_number"),
    sa.Index("invoices_customer", "namespace", "customer_id"),
)

marks = marks_t = sa.Table(
    "billing_marks", md,
    sa.Column("namespace", sa.String(64), nullable=False),
    sa.Column("subscription_id", sa.String(26), nullable=False),
    sa.Column("period_start", TS, nullable=False),
    sa.Column("term", sa.String(16), nullable=False),
    sa.Column("rev", sa.Integer, nullable=False),
    sa.Column("billed_at", TS, nullable=False),
    sa.Column("doc", sa.Text, nullable=False),
    sa.PrimaryKeyConstraint("namespace", "subscription_id", "period_start", "term"),
)

DELETED = "deleted"  # the status column of a deleted draft (its document stays a draft with deletedAt)

credits = sa.Table(
    "billing_credits", md,
    sa.Column("namespace", sa.String(64), nullable=False),
    sa.Column("id", sa.String(26), primary_key=True),
    sa.Column("customer_id", sa.String(26), nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("amount", sa.String(64), nullable=False),  # exact decimal text; negative when used
    sa.Column("doc", sa.Text, nullable=False),
    sa.Index("billing_credits_customer", "namespace", "customer_id", "currency"),
)


class SqlBillingStore:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.reads = reads(engine)  # (sql.reads: one-statement reads in autocommit on PostgreSQL)

    def migrate(self) -> None:
        """The meta database to the schema head: one Alembic upgrade for every store's tables (billow.migrations)."""
        from billow.migrations import upgrade

        upgrade(self.engine)

    # -- profiles and overrides ------------------------------------------------------------------------------
    def put_profile(self, namespace: str, doc: dict[str, Any], *, expect_doc: str | None = None,
                    check: Callable[[], None] | None = None) -> None:
        """Save a profile; a default one unmarks the namespace's other defaults in the same transaction, one such
        write per namespace at a time (two at once would each miss the other's new default and both stay). With
        `expect_doc`, only if it is still stored as that JSON (else Conflict: another writer changed it since it was
        read, as an edit, a delete or another profile made the default). With `check` (the apps it names still
        installed), the uses of those apps are locked (app_use_lock, in one order), the check runs (it raises to
        refuse) and the write follows in that transaction, so an app uninstalled at once either sees this profile or
        is seen by the check."""
        row = {"id": doc["id"], "namespace": namespace, "is_default": bool(doc.get("default")),
               "deleted": doc.get("deletedAt") is not None, "doc": jsonx.dumps(doc)}
        with self.engine.begin() as c:
            if check is not None:
                for app_id in sorted({a["id"] for a in (doc.get("apps") or {}).values()
                                      if isinstance(a, dict) and a.get("id")}):
                    serialise(c, app_use_lock(namespace, app_id))
                check()
            default = doc.get("default") and not doc.get("deletedAt")
            if default:
                serialise(c, f"billing_profiles.default:{namespace}")
            if expect_doc is None:
                save_by_id(c, profiles, row)
            elif c.execute(profiles.update().where(profiles.c.namespace == namespace, profiles.c.id == doc["id"],
                                                   profiles.c.doc == expect_doc).values(**row)).rowcount != 1:
                raise Conflict(f"billing profile {doc['id']} changed meanwhile; reload it and try again")
            if default:
                for other_row in c.execute(sa.select(profiles.c.id, profiles.c.doc).where(
                        profiles.c.namespace == namespace, profiles.c.is_default.is_(True), profiles.c.id != doc["id"])):
                    other = {**jsonx.loads(other_row.doc), "default": False}
                    c.execute(profiles.update().where(profiles.c.id == other_row.id).values(
                        is_default=False, doc=jsonx.dumps(other)))

    def get_profile(self, namespace: str, id_: str) -> dict[str, Any] | None:
        with self.reads.connect() as c:
            row = c.execute(sa.select(profiles.c.doc).where(profiles.c.namespace == namespace, profiles.c.id == id_)).first()
        return jsonx.loads(row.doc) if row else None

    def list_profiles(self, namespace: str, include_deleted: bool = False) -> list[dict[str, Any]]:
        q = sa.select(profiles.c.doc).where(profiles.c.namespace == namespace)
        if not include_deleted:
            q = q.where(profiles.c.deleted.is_(False))
        with self.reads.connect() as c:
            return [jsonx.loads(r.doc) for r in c.execute(q.order_by(profiles.c.id))]

    def put_override(self, namespace: str, customer_id: str, doc: dict[str, Any] | None) -> None:
        """Replace the customer's override (None deletes it): one upsert, as two containers writing at once would
        both find nothing to delete and the later insert fail on the primary key."""
        with self.engine.begin() as c:
            if doc is None:
                c.execute(overrides.delete().where(overrides.c.namespace == namespace,
                                                   overrides.c.customer_id == customer_id))
            else:
                upsert(c, overrides, dict(namespace=namespace, customer_id=customer_id, doc=jsonx.dumps(doc)))

    def get_override(self, namespace: str, customer_id: str) -> dict[str, Any] | None:
        q = sa.select(overrides.c.doc).where(overrides.c.namespace == namespace, overrides.c.customer_id == customer_id)
        with self.reads.connect() as c:
            row = c.execute(q).first()
        return jsonx.loads(row.doc) if row else None

    # -- invoices ----------------------------------------------------------------------------------------------
    def put_invoice(self, namespace: str, doc: dict[str, Any], *, expect_status: str | None = None,
                    credit: CreditBack | None = None, expect_doc: str | None = None) -> None:
        """Save an invoice; with `expect_status`, only if it is still in that status (else Conflict: another
        actor moved it first), and with `expect_doc` only if its stored JSON is still that (else Conflict: another
        writer changed it since it was read, as two containers adding pending lines to one gathering invoice do).
        A new invoice whose number was taken meanwhile (two containers making one customer's gathering invoice) is
        Conflict. With `credit` (a negative invoice issued), the same transaction adds it to the
        customer's prepaid balance unless an entry of its id is there already: the guarded move lets one issuing
        through, the entry id (derived from the invoice's) keeps any other from adding it again."""
        if (credit is not None or expect_doc is not None) and expect_status is None:
            raise ValueError("a credit or an expected document is written only with a guarded status move "
                             "(expect_status)")
        row = {"id": doc["id"], "namespace": namespace, "customer_id": doc["customer"]["id"], "number": doc["number"],
               "status": doc["status"], "doc": jsonx.dumps(doc)}
        if expect_status is None:
            try:
                with self.engine.begin() as c:
                    save_by_id(c, invoices, row)
            except IntegrityError:
                raise Conflict(f"invoice number {doc['number']} was taken meanwhile; reload and try again") from None
            return
        with self.engine.begin() as c:
            q = invoices.update().where(invoices.c.id == doc["id"], invoices.c.status == expect_status)
            if expect_doc is not None:
                q = q.where(invoices.c.doc == expect_doc)
            done = c.execute(q.values(**row)).rowcount
            if done != 1:
                raise Conflict(f"invoice {doc['number']} changed meanwhile; reload it and try again")
            if credit is not None and c.execute(sa.select(credits.c.id).where(credits.c.id == credit.entry_id)).first() is None:
                _credit_entry(c, namespace, credit.entry_id, doc["customer"]["id"], doc["currency"], credit.amount,
                              credit.doc)

    def get_invoice(self, namespace: str, id_: str) -> dict[str, Any] | None:
        q = sa.select(invoices.c.doc).where(invoices.c.namespace == namespace, invoices.c.id == id_)
        with self.reads.connect() as c:
            row = c.execute(q).first()
        return jsonx.loads(row.doc) if row else None

    def list_invoices(self, namespace: str, *, customer_ids: Sequence[str] | None = None,
                      statuses: Sequence[str] | None = None) -> list[dict[str, Any]]:
        q = sa.select(invoices.c.doc).where(invoices.c.namespace == namespace)
        if customer_ids:
            q = q.where(among(invoices.c.customer_id, customer_ids, self.engine))
        if statuses:
            q = q.where(invoices.c.status.in_(list(statuses)))
        with self.reads.connect() as c:
            return [jsonx.loads(r.doc) for r in c.execute(q.order_by(invoices.c.id))]

    # -- billing marks -------------------------------------------------------------------------------------
    def marks_for(self, namespace: str, subscription_ids: Sequence[str] | None = None) -> dict[tuple[str, datetime, str], Mark]:
        q = sa.select(marks).where(marks.c.namespace == namespace)
        if subscription_ids is not None:
            q = q.where(among(marks.c.subscription_id, subscription_ids, self.engine))
        out: dict[tuple[str, datetime, str], Mark] = {}
        with self.reads.connect() as c:
            for r in c.execute(q):
                start = utc(r.period_start)
                assert start is not None
                out[(r.subscription_id, start, r.term)] = Mark.stored(r.subscription_id, start, r.term, r.rev,
                                                                       jsonx.loads(r.doc), utc(r.billed_at))
        return out

    def commit_billing(self, namespace: str, items: Sequence[BillingCommit], now: datetime) -> None:
        """One transaction for many customers: each item's marks move from the revisions read to the new billed
        state, and its invoice (and the prepaid credit it used or gives back) is written; any lost race raises Conflict and
        nothing of the whole batch is written."""
        try:
            with self.engine.begin() as c:
                for invoice, advanced, credit_used, gathering in items:
                    self._commit_one(c, namespace, invoice, advanced, now, credit_used)
                    for doc, before in gathering:  # the pending lines taken leave their holder, unless a
                        # concurrent run took them first (the holder changed): then this batch writes nothing
                        if c.execute(invoices.update().where(invoices.c.id == doc["id"], invoices.c.doc == before)
                                     .values(doc=jsonx.dumps(doc))).rowcount != 1:
                            raise Conflict(f"the pending lines of {doc['number']} were invoiced meanwhile")
        except IntegrityError as exc:
            if _number_taken(exc):  # a concurrent run's, or numbered wrongly: the run tells which (billing_run._commit)
                raise InvoiceNumberTaken("an invoice number of this batch is another invoice's (invoices_number); "
                                         "nothing was written") from exc
            raise Conflict("another billing run billed the same period meanwhile; nothing was written") from None

    def _commit_one(self, c: sa.Connection, namespace: str, invoice: dict[str, Any] | None, advanced: list[Mark],
                    now: datetime, credit_used: tuple[str, Decimal] | CreditBack | None) -> None:
        for m in advanced:
            values = {"rev": m.rev + 1, "billed_at": now, "doc": jsonx.dumps(m.doc())}
            if m.rev == 0:
                c.execute(marks.insert().values(namespace=namespace, subscription_id=m.subscription_id,
                                                period_start=m.period_start, term=m.term, **values))
            elif c.execute(marks.update().where(
                    marks.c.namespace == namespace, marks.c.subscription_id == m.subscription_id,
                    marks.c.period_start == m.period_start, marks.c.term == m.term, marks.c.rev == m.rev)
                    .values(**values)).rowcount != 1:
                raise Conflict(f"subscription {m.subscription_id} was billed by another run meanwhile")
        if invoice is not None:
            c.execute(invoices.insert().values(
                id=invoice["id"], namespace=namespace, customer_id=invoice["customer"]["id"],
                number=invoice["number"], status=invoice["status"], doc=jsonx.dumps(invoice)))
            if isinstance(credit_used, CreditBack):  # a negative invoice issued here: what it owes the customer
                _credit_entry(c, namespace, credit_used.entry_id, invoice["customer"]["id"], invoice["currency"],
                              credit_used.amount, credit_used.doc)
            elif credit_used is not None:
                entry_id, amount = credit_used
                _credit_entry(c, namespace, entry_id, invoice["customer"]["id"], invoice["currency"], -amount,
                              {"invoiceId": invoice["id"], "invoiceNumber": invoice["number"],
                               "description": f"applied to {invoice['number']}", "createdAt": format_rfc3339(now)})

    def delete_draft(self, namespace: str, doc: dict[str, Any], *, expect_status: str, marks: Sequence[Mark],
                     holder: tuple[dict[str, Any], str | None] | None, credit_entry_id: str) -> Decimal:
        """See ports.BillingStore.delete_draft. The invoice's row keeps its number (numbers are never reused) and
        takes the status `deleted`, which no reader lists and no guarded move (`expect_status`) starts from."""
        try:
            return self._delete_draft(namespace, doc, expect_status, marks, holder, credit_entry_id)
        except IntegrityError:  # a holder made meanwhile took the gathering number
            raise Conflict(f"the pending lines of customer {doc['customer']['id']} changed meanwhile; try again") from None

    def _delete_draft(self, namespace: str, doc: dict[str, Any], expect_status: str, marks: Sequence[Mark],
                      holder: tuple[dict[str, Any], str | None] | None, credit_entry_id: str) -> Decimal:
        customer_id = doc["customer"]["id"]
        with self.engine.begin() as c:
            if c.execute(invoices.update().where(invoices.c.namespace == namespace, invoices.c.id == doc["id"],
                                                 invoices.c.status == expect_status)
                         .values(status=DELETED, doc=jsonx.dumps(doc))).rowcount != 1:
                raise Conflict(f"invoice {doc['number']} changed meanwhile; reload it and try again")
            for m in marks:
                where = (marks_t.c.namespace == namespace, marks_t.c.subscription_id == m.subscription_id,
                         marks_t.c.period_start == m.period_start, marks_t.c.term == m.term, marks_t.c.rev == m.rev)
                q = marks_t.delete().where(*where) if m.empty else \
                    marks_t.update().where(*where).values(rev=m.rev + 1, doc=jsonx.dumps(m.doc()))
                if c.execute(q).rowcount != 1:
                    raise Conflict(f"subscription {m.subscription_id} was billed by a run meanwhile; try again")
            with decimal.localcontext(EXACT):
                used = sum((Decimal(r.amount) for r in c.execute(sa.select(credits.c.amount, credits.c.doc).where(
                    credits.c.namespace == namespace, credits.c.customer_id == customer_id,
                    credits.c.currency == doc["currency"])) if jsonx.loads(r.doc).get("invoiceId") == doc["id"]),
                    Decimal(0))
            if used:
                _credit_entry(c, namespace, credit_entry_id, customer_id, doc["currency"], -used,
                              {"invoiceId": doc["id"], "invoiceNumber": doc["number"],
                               "description": f"returned: {doc['number']} deleted", "createdAt": doc.get("deletedAt")})
            if holder is not None:
                new, before = holder
                if before is None:
                    c.execute(invoices.insert().values(id=new["id"], namespace=namespace, customer_id=customer_id,
                                                       number=new["number"], status=new["status"],
                                                       doc=jsonx.dumps(new)))
                elif c.execute(invoices.update().where(invoices.c.id == new["id"], invoices.c.doc == before)
                               .values(doc=jsonx.dumps(new))).rowcount != 1:
                    raise Conflict(f"the pending lines of {new['number']} changed meanwhile; try again")
        return -used

    def invoice_counts(self, namespace: str) -> dict[str, int]:
        q = sa.select(invoices.c.customer_id, sa.func.count()).where(invoices.c.namespace == namespace) \
            .group_by(invoices.c.customer_id)
        with self.reads.connect() as c:
            return {r[0]: int(r[1]) for r in c.execute(q)}

    def list_overrides(self, namespace: str) -> dict[str, dict[str, Any]]:
        q = sa.select(overrides.c.customer_id, overrides.c.doc).where(overrides.c.namespace == namespace)
        with self.reads.connect() as c:
            return {r.customer_id: jsonx.loads(r.doc) for r in c.execute(q)}

    # -- prepaid credit ------------------------------------------------------------------------------------
    def add_credit(self, namespace: str, entry_id: str, customer_id: str, currency: str, amount: Decimal,
                   doc: dict[str, Any]) -> None:
        with self.engine.begin() as c:
            _credit_entry(c, namespace, entry_id, customer_id, currency, amount, doc)

    def credit_balances(self, namespace: str) -> dict[tuple[str, str], Decimal]:
        """Every customer's prepaid balance per currency (only those with any credit entries)."""
        q = sa.select(credits.c.customer_id, credits.c.currency, credits.c.amount).where(credits.c.namespace == namespace)
        out: dict[tuple[str, str], Decimal] = {}
        with self.reads.connect() as c, decimal.localcontext(EXACT):
            for r in c.execute(q):
                out[(r.customer_id, r.currency)] = out.get((r.customer_id, r.currency), Decimal(0)) + Decimal(r.amount)
        return out

    def credit_balance(self, namespace: str, customer_id: str, currency: str) -> Decimal:
        q = sa.select(credits.c.amount).where(credits.c.namespace == namespace, credits.c.customer_id == customer_id,
                                              credits.c.currency == currency)
        with self.reads.connect() as c, decimal.localcontext(EXACT):
            return sum((Decimal(r.amount) for r in c.execute(q)), Decimal(0))

    def credit_entries(self, namespace: str, customer_id: str, currency: str) -> list[dict[str, Any]]:
        q = sa.select(credits.c.id, credits.c.amount, credits.c.doc).where(
            credits.c.namespace == namespace, credits.c.customer_id == customer_id, credits.c.currency == currency)
        with self.reads.connect() as c:
            return [{**jsonx.loads(r.doc), "id": r.id, "amount": r.amount, "currency": currency}
                    for r in c.execute(q.order_by(credits.c.id))]


def _credit_entry(c: sa.Connection, namespace: str, entry_id: str, customer_id: str, currency: str, amount: Decimal,
                  doc: dict[str, Any]) -> None:
    """One prepaid-credit ledger entry (amount < 0: used), its exact amount as plain decimal text."""
    c.execute(credits.insert().values(namespace=namespace, id=entry_id, customer_id=customer_id, currency=currency,
                                      amount=format(amount, "f"), doc=jsonx.dumps(doc)))


def _number_taken(exc: IntegrityError) -> bool:
    """Whether a failed write broke the unique invoice number (PostgreSQL names the constraint, SQLite the columns)."""
    text = str(exc.orig)
    return "invoices_number" in text or "invoices.number" in text
