"""The billing store (ports.BillingStore, adapters/sql_billing.py) against SQLite (embedded) and a real PostgreSQL
(pg8000): profiles (one default per namespace), customer overrides, invoices (a guarded status move), billing
marks (a mark moves only from the revision read; of two concurrent commits of one mark exactly one wins and the
loser writes nothing), prepaid credit, and pending lines taken once."""

from __future__ import annotations

import threading
import uuid
from dataclasses import replace
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest

from billow import jsonx
from billow.adapters.sql_billing import SqlBillingStore
from billow.domain.billing import Mark
from billow.errors import Conflict
from billow.ids import new_id
from billow.ports import BillingCommit, BillingStore
from tests.conftest import t

NOW = t("2026-04-01T00:00:00Z")
PERIOD = t("2026-04-01T00:00:00Z")


@pytest.fixture
def store(meta_store: Any) -> SqlBillingStore:
    s = SqlBillingStore(meta_store.engine)
    s.migrate()
    return s


def ns() -> str:
    return "n" + uuid.uuid4().hex[:10]


def invoice(customer_id: str, number: str, status: str = "draft", **extra: Any) -> dict[str, Any]:
    return {"id": new_id(), "number": number, "status": status, "currency": "USD", "customer": {"id": customer_id},
            "lines": [], "totals": {"total": "49.99"}, **extra}


def mark(sub_id: str, rev: int, total: str, start: datetime = PERIOD) -> Mark:
    return Mark(sub_id, start, "in_advance", rev, {"flat": {"total": total, "quantity": "1", "amount": total,
                                                            "discounts": "0"}})


def test_the_sql_store_is_a_billing_store(store: SqlBillingStore) -> None:
    typed: BillingStore = store  # mypy checks the adapter against the port
    assert typed is store


def test_profiles_one_default_per_namespace(store: SqlBillingStore) -> None:
    n, other = ns(), ns()
    a: dict[str, Any] = {"id": new_id(), "name": "A", "default": True}
    b: dict[str, Any] = {"id": new_id(), "name": "B", "default": True}
    store.put_profile(n, a)
    store.put_profile(other, {"id": new_id(), "name": "X", "default": True})
    store.put_profile(n, b)  # the new default takes over; the other namespace's default stays
    assert {p["name"]: p["default"] for p in store.list_profiles(n)} == {"A": False, "B": True}
    assert store.get_profile(n, a["id"])["default"] is False  # type: ignore[index]
    assert [p["default"] for p in store.list_profiles(other)] == [True]
    store.put_profile(n, {**a, "deletedAt": "2026-04-02T00:00:00Z"})
    assert [p["name"] for p in store.list_profiles(n)] == ["B"]
    assert sorted(p["name"] for p in store.list_profiles(n, include_deleted=True)) == ["A", "B"]
    assert store.get_profile(other, a["id"]) is None and store.get_profile(n, "nope") is None


def test_overrides_replace_and_delete(store: SqlBillingStore) -> None:
    n = ns()
    store.put_override(n, "c1", {"profileId": "p1"})
    store.put_override(n, "c1", {"profileId": "p2"})
    store.put_override(n, "c2", {"profileId": "p1"})
    assert store.get_override(n, "c1") == {"profileId": "p2"}
    assert store.list_overrides(n) == {"c1": {"profileId": "p2"}, "c2": {"profileId": "p1"}}
    store.put_override(n, "c1", None)
    assert store.get_override(n, "c1") is None and list(store.list_overrides(n)) == ["c2"]
    assert store.list_overrides(ns()) == {}


def test_invoices_filters_counts_and_guarded_status(store: SqlBillingStore) -> None:
    n = ns()
    i1, i2, i3 = invoice("c1", "C1-0001"), invoice("c1", "C1-0002", "issued"), invoice("c2", "C2-0001", "paid")
    for i in (i1, i2, i3):
        store.put_invoice(n, i)
    assert [i["id"] for i in store.list_invoices(n)] == sorted([i1["id"], i2["id"], i3["id"]])
    assert [i["number"] for i in store.list_invoices(n, customer_ids=["c1"], statuses=["issued"])] == ["C1-0002"]
    assert sorted(i["number"] for i in store.list_invoices(n, statuses=["draft", "paid"])) == ["C1-0001", "C2-0001"]
    assert store.invoice_counts(n) == {"c1": 2, "c2": 1} and store.invoice_counts(ns()) == {}
    store.put_invoice(n, {**i1, "status": "issuing"}, expect_status="draft")
    with pytest.raises(Conflict):  # someone else moved it from draft first
        store.put_invoice(n, {**i1, "status": "voided"}, expect_status="draft")
    got = store.get_invoice(n, i1["id"])
    assert got is not None and got["status"] == "issuing" and got["totals"] == {"total": "49.99"}
    assert store.get_invoice(ns(), i1["id"]) is None


def test_marks_move_only_from_the_revision_read(store: SqlBillingStore) -> None:
    n, sub = ns(), new_id()
    inv = invoice("c1", "C1-0001")
    store.commit_billing(n, [(inv, [mark(sub, 0, "49.99")], None, [])], NOW)
    read = store.marks_for(n)[(sub, PERIOD, "in_advance")]
    assert (read.rev, read.billed["flat"]["total"], read.billed_at) == (1, "49.99", NOW)
    with pytest.raises(Conflict):  # a new mark where one exists: another run billed it
        store.commit_billing(n, [(invoice("c1", "C1-0002"), [mark(sub, 0, "49.99")], None, [])], NOW)
    with pytest.raises(Conflict):  # a stale revision
        store.commit_billing(n, [(invoice("c1", "C1-0003"), [mark(sub, 5, "60")], None, [])], NOW)
    assert [i["number"] for i in store.list_invoices(n)] == ["C1-0001"]  # the losers wrote nothing
    later = t("2026-04-02T00:00:00Z")
    store.commit_billing(n, [(invoice("c1", "C1-0004"), [mark(sub, 1, "60")], None, [])], later)
    moved = store.marks_for(n, [sub])[(sub, PERIOD, "in_advance")]
    assert (moved.rev, moved.billed["flat"]["total"], moved.billed_at) == (2, "60", later)
    assert store.marks_for(n, [new_id()]) == {} and store.marks_for(ns()) == {}
    # More ids than a PostgreSQL statement takes parameters (65,535): one array parameter there.
    many = [new_id() for _ in range(70_000)]
    assert list(store.marks_for(n, [*many, sub])) == [(sub, PERIOD, "in_advance")]
    assert [i["number"] for i in store.list_invoices(n, customer_ids=[*many, "c1"], statuses=["draft"])] == [
        "C1-0001", "C1-0004"]


def test_a_lost_race_in_a_batch_writes_nothing_of_the_batch(store: SqlBillingStore) -> None:
    n, s1, s2 = ns(), new_id(), new_id()
    store.add_credit(n, new_id(), "c2", "USD", Decimal("10"), {"description": "prepaid"})
    store.commit_billing(n, [(None, [mark(s1, 0, "1")], None, [])], NOW)  # marks only: no invoice
    batch: list[BillingCommit] = [(invoice("c2", "C2-0001"), [mark(s2, 0, "5")], (new_id(), Decimal("5")), []),
                                  (invoice("c1", "C1-0001"), [mark(s1, 0, "1")], None, [])]
    with pytest.raises(Conflict):
        store.commit_billing(n, batch, NOW)
    assert store.list_invoices(n) == [] and set(store.marks_for(n)) == {(s1, PERIOD, "in_advance")}
    assert store.credit_balance(n, "c2", "USD") == Decimal("10")


def _race(store: SqlBillingStore, n: str, sub: str, rev: int) -> list[str]:
    """Two runs that read the same mark revision commit it at once: what each of them got."""
    go = threading.Barrier(2)
    outcomes: list[str] = []

    def commit(number: str) -> None:
        go.wait()
        try:
            store.commit_billing(n, [(invoice("c1", number), [mark(sub, rev, "49.99")], None, [])], NOW)
            outcomes.append("won")
        except Conflict:
            outcomes.append("lost")

    threads = [threading.Thread(target=commit, args=(f"C1-000{i}",)) for i in (1, 2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return outcomes


@pytest.mark.parametrize("rev", [0, 1])
def test_two_concurrent_commits_of_one_mark_one_wins(store: SqlBillingStore, rev: int) -> None:
    for _ in range(5):
        n, sub = ns(), new_id()
        if rev:
            store.commit_billing(n, [(None, [mark(sub, 0, "1")], None, [])], NOW)
        assert sorted(_race(store, n, sub, rev)) == ["lost", "won"]
        assert len(store.list_invoices(n)) == 1
        assert store.marks_for(n)[(sub, PERIOD, "in_advance")].rev == rev + 1


def test_pending_lines_are_taken_once(store: SqlBillingStore) -> None:
    n = ns()
    holder = invoice("c1", "C1-0001", "gathering", lines=[{"id": "l1"}, {"id": "l2"}])
    store.put_invoice(n, holder)
    before = store.list_invoices(n, statuses=["gathering"])[0]
    raw = jsonx.dumps(before)  # as the run keeps it: the holder, read back and written out, is what is stored
    emptied = {**before, "lines": []}
    store.commit_billing(n, [(invoice("c1", "C1-0002", lines=[{"id": "l1"}, {"id": "l2"}]), [], None,
                              [(emptied, raw)])], NOW)
    with pytest.raises(Conflict):  # a second run that read the same holder takes nothing
        store.commit_billing(n, [(invoice("c1", "C1-0003", lines=[{"id": "l1"}, {"id": "l2"}]), [], None,
                                  [(emptied, raw)])], NOW)
    assert sorted(i["number"] for i in store.list_invoices(n)) == ["C1-0001", "C1-0002"]
    assert store.get_invoice(n, holder["id"])["lines"] == []  # type: ignore[index]


def test_prepaid_credit_is_exact_per_customer_and_currency(store: SqlBillingStore) -> None:
    n = ns()
    store.add_credit(n, new_id(), "c1", "USD", Decimal("0.1"), {})
    store.add_credit(n, new_id(), "c1", "USD", Decimal("0.2"), {})
    store.add_credit(n, new_id(), "c1", "EUR", Decimal("5"), {})
    store.commit_billing(n, [(invoice("c1", "C1-0001"), [], (new_id(), Decimal("0.25")), [])], NOW)
    assert store.credit_balance(n, "c1", "USD") == Decimal("0.05")
    assert store.credit_balances(n) == {("c1", "USD"): Decimal("0.05"), ("c1", "EUR"): Decimal("5")}
    assert store.credit_balance(n, "c2", "USD") == 0 and store.credit_balances(ns()) == {}


def test_a_taken_invoice_number_is_a_failure_not_a_lost_race(store: SqlBillingStore) -> None:
    """Found from outside (tests/e2e/test_billing_outside.py): an invoice number another customer's invoice holds was
    reported as Conflict, which the billing run takes for a concurrent run that billed the customer, so it skipped
    the customer on every run, never invoiced. It is an error the run records as the customer's failure."""
    n = ns()
    store.commit_billing(n, [(invoice("c1", "ORG-0001"), [mark(new_id(), 0, "1")], None, [])], NOW)
    with pytest.raises(RuntimeError, match="invoices_number") as caught:
        store.commit_billing(n, [(invoice("c2", "ORG-0001"), [mark(new_id(), 0, "2")], None, [])], NOW)
    assert not isinstance(caught.value, Conflict)
    assert [i["customer"]["id"] for i in store.list_invoices(n)] == ["c1"]  # nothing of the failed commit written
    sub = new_id()  # a lost race on a mark is still the Conflict the run skips on
    store.commit_billing(n, [(invoice("c3", "C3-0001"), [mark(sub, 0, "1")], None, [])], NOW)
    with pytest.raises(Conflict):
        store.commit_billing(n, [(invoice("c3", "C3-0002"), [mark(sub, 0, "1")], None, [])], NOW)


def test_a_deleted_draft_gives_back_its_marks_credit_and_lines(store: SqlBillingStore) -> None:
    """delete_draft, in one transaction: the draft is kept deleted (no status lists it, no guarded move starts from
    it), each mark loses the draft's part (an empty one goes), the credit it used comes back once, its one-off lines
    go back to the holder; a lost race on any of it writes nothing."""
    n, s1, s2 = ns(), new_id(), new_id()
    store.add_credit(n, new_id(), "c1", "USD", Decimal("10"), {"description": "prepaid"})
    store.commit_billing(n, [(None, [mark(s2, 0, "5")], None, [])], NOW)  # s2 was billed 5 before the draft
    draft = invoice("c1", "C1-0001", lines=[{"id": "l1"}])
    first = mark(s1, 0, "49.99")
    marks = [replace(first, invoices={draft["id"]: first.billed}),
             replace(mark(s2, 1, "7"), invoices={draft["id"]: {"flat": {"total": "2", "quantity": "0", "amount": "2",
                                                                         "discounts": "0"}}})]
    store.commit_billing(n, [(draft, marks, (new_id(), Decimal("4")), [])], NOW)
    holder = invoice("c1", "C1-GATHERING-USD", "gathering", lines=[{"id": "l0"}])
    store.put_invoice(n, holder)
    read = store.marks_for(n)
    assert read[(s1, PERIOD, "in_advance")].invoices == {draft["id"]: first.billed}
    back = [m.without(draft["id"]) for m in read.values()]
    assert [m.empty for m in back] == [False, True] or [m.empty for m in back] == [True, False]
    raw = jsonx.dumps(store.get_invoice(n, holder["id"]))
    gathered = {**holder, "lines": [{"id": "l0"}, {"id": "l1"}]}
    deleted = {**draft, "deletedAt": "2026-04-01T01:00:00Z"}
    stale = [replace(m, rev=m.rev + 1) for m in back]
    with pytest.raises(Conflict):  # a run moved a mark meanwhile: nothing is written
        store.delete_draft(n, deleted, expect_status="draft", marks=stale, holder=(gathered, raw), credit_entry_id=new_id())
    with pytest.raises(Conflict):  # the holder changed meanwhile
        store.delete_draft(n, deleted, expect_status="draft", marks=back, holder=(gathered, raw + " "),
                           credit_entry_id=new_id())
    assert [i["id"] for i in store.list_invoices(n, statuses=["draft"])] == [draft["id"]]
    assert store.credit_balance(n, "c1", "USD") == Decimal("6") and len(store.marks_for(n)) == 2
    returned = store.delete_draft(n, deleted, expect_status="draft", marks=back, holder=(gathered, raw),
                                  credit_entry_id=new_id())
    assert returned == Decimal("4") and store.credit_balance(n, "c1", "USD") == Decimal("10")
    assert store.list_invoices(n, statuses=["draft"]) == [] and store.get_invoice(n, draft["id"])["deletedAt"]  # type: ignore[index]
    left = store.marks_for(n)
    assert set(left) == {(s2, PERIOD, "in_advance")}  # s1's mark held the draft's part alone: gone
    assert (left[(s2, PERIOD, "in_advance")].rev, left[(s2, PERIOD, "in_advance")].billed["flat"]["total"],
            left[(s2, PERIOD, "in_advance")].reopened, left[(s2, PERIOD, "in_advance")].invoices) == (3, "5", True, {})
    assert store.get_invoice(n, holder["id"])["lines"] == [{"id": "l0"}, {"id": "l1"}]  # type: ignore[index]
    with pytest.raises(Conflict):  # deleted once: a second delete (or an issuing that read it as a draft) fails
        store.delete_draft(n, deleted, expect_status="draft", marks=[], holder=None, credit_entry_id=new_id())
    with pytest.raises(Conflict):
        store.put_invoice(n, {**draft, "status": "issuing"}, expect_status="draft")
    assert store.credit_balance(n, "c1", "USD") == Decimal("10")  # returned once
    assert store.invoice_counts(n) == {"c1": 2}  # its number stays taken
    new_holder = invoice("c2", "C2-GATHERING-USD", "gathering", lines=[{"id": "l9"}])
    draft2 = invoice("c2", "C2-0001")
    store.put_invoice(n, draft2)
    assert store.delete_draft(n, {**draft2, "deletedAt": "x"}, expect_status="draft", marks=[],
                              holder=(new_holder, None), credit_entry_id=new_id()) == 0
    assert [g["lines"] for g in store.list_invoices(n, customer_ids=["c2"], statuses=["gathering"])] == [[{"id": "l9"}]]


def test_a_negative_invoice_gives_its_credit_back_with_its_status_move_once(store: SqlBillingStore) -> None:
    """put_invoice with `credit` (a negative invoice issued): in one transaction the guarded status move and the
    entry added to the prepaid balance; a lost race writes neither; the same entry (its id derived from the
    invoice's) is never added twice, whatever moves the invoice again."""
    from billow.domain.invoices import CreditBack

    n = ns()
    store.add_credit(n, new_id(), "c1", "USD", Decimal("0.10"), {"description": "prepaid"})
    inv = invoice("c1", "C1-0003", "issuing", totals={"total": "-3.00"})
    store.put_invoice(n, inv)
    back = CreditBack(new_id(), Decimal("3.00"), {"invoiceId": inv["id"], "description": "owed back by C1-0003"})
    with pytest.raises(Conflict):  # another actor moved it first: nothing is given back
        store.put_invoice(n, {**inv, "status": "paid"}, expect_status="draft", credit=back)
    assert store.credit_balance(n, "c1", "USD") == Decimal("0.10")
    assert store.get_invoice(n, inv["id"])["status"] == "issuing"  # type: ignore[index]
    store.put_invoice(n, {**inv, "status": "paid"}, expect_status="issuing", credit=back)
    assert store.credit_balance(n, "c1", "USD") == Decimal("3.10")
    assert store.credit_balances(n) == {("c1", "USD"): Decimal("3.10")}
    with pytest.raises(Conflict):  # issued once: a second issuing that read it as issuing fails, writes nothing
        store.put_invoice(n, {**inv, "status": "paid"}, expect_status="issuing", credit=back)
    store.put_invoice(n, {**inv, "status": "paid", "note": "x"}, expect_status="paid", credit=back)  # the same entry
    assert store.credit_balance(n, "c1", "USD") == Decimal("3.10")  # given back once
    entries = store.credit_entries(n, "c1", "USD")
    assert [(e["id"], e["amount"], e.get("invoiceId")) for e in entries if e["id"] == back.entry_id] == \
        [(back.entry_id, "3.00", inv["id"])]
    assert sorted(e["amount"] for e in entries) == ["0.10", "3.00"]
    assert store.credit_entries(n, "c2", "USD") == [] and store.credit_entries(ns(), "c1", "USD") == []
    with pytest.raises(ValueError):  # a credit goes only with a guarded move
        store.put_invoice(n, inv, credit=back)
    # A negative invoice the run issues itself (sandbox): given back in the run's transaction, or not at all.
    sub = new_id()
    neg = invoice("c1", "C1-0004", "paid", totals={"total": "-1.25"})
    neg_back = CreditBack(new_id(), Decimal("1.25"), {"invoiceId": neg["id"], "description": "owed back by C1-0004"})
    store.commit_billing(n, [(None, [mark(sub, 0, "5")], None, [])], NOW)
    with pytest.raises(Conflict):  # a lost race on its mark: neither the invoice nor the credit
        store.commit_billing(n, [(neg, [mark(sub, 0, "3.75")], neg_back, [])], NOW)
    assert store.credit_balance(n, "c1", "USD") == Decimal("3.10") and store.get_invoice(n, neg["id"]) is None
    store.commit_billing(n, [(neg, [mark(sub, 1, "3.75")], neg_back, [])], NOW)
    assert store.credit_balance(n, "c1", "USD") == Decimal("4.35")
    assert [e["amount"] for e in store.credit_entries(n, "c1", "USD") if e.get("invoiceId") == neg["id"]] == ["1.25"]
