"""Invoice numbers are unique per namespace, so each customer's must be its own: found from outside
(tests/e2e/test_billing_outside.py), customers whose keys shared their first 12 letters and digits (organization_1,
organization_2; acme-io, acme.io) got the same numbers, and the second was never invoiced."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from billow.ids import new_id
from billow.services.invoices import invoice_number, invoice_prefix

KEYS = st.text(alphabet="aAbB01-_.é ", min_size=0, max_size=16)  # collisions of every lossy kind: case, marks, length


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.none(), KEYS), min_size=2, max_size=12, unique=True))
def test_no_two_customers_share_an_invoice_number(keys: list[str | None]) -> None:
    customers = [{"id": new_id(), "key": k} for k in keys]
    numbers = [invoice_number(c, n) for c in customers for n in (1, 2, 10_000)]
    assert len(set(numbers)) == len(numbers)
    assert len({f"{invoice_prefix(c)}-GATHERING-USD" for c in customers}) == len(customers)
    assert all(len(f"{invoice_prefix(c)}-GATHERING-USD") <= 64 for c in customers)  # the number column's width


def test_simple_keys_keep_their_numbers() -> None:
    assert invoice_number({"id": new_id(), "key": "acme"}, 1) == "ACME-0001"
    assert invoice_number({"id": new_id(), "key": "c1"}, 12) == "C1-0012"
    cid = new_id()
    assert invoice_number({"id": cid, "key": "organization_1"}, 1) == f"ORGANIZATION-{cid}-0001"
    assert invoice_number({"id": cid, "key": "ACME"}, 1) == f"ACME-{cid}-0001"  # not acme's
    assert invoice_number({"id": cid}, 1) == f"INV-{cid}-0001"
