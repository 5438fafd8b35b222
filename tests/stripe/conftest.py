"""The Stripe app against the local Stripe stand-in (tests/stripe_standin), and signed webhooks."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from billow.adapters.stripe_app import StripeApp
from billow.bootstrap import Settings, build, install
from functions.usage_sink.handler import lambda_handler as sink
from tests.stripe_standin.server import StandIn

if TYPE_CHECKING:
    from tests.entitlements.conftest import Billow

# The invoice of the brief: graduated tiers (one with a discount), a flat fee, and 5.00 of prepaid credit.
INVOICE: dict[str, Any] = {
    "id": "01JINV0000000000000000000A", "number": "ACME-0001", "type": "standard", "currency": "USD",
    "status": "issuing",
    "customer": {"id": "01JCUS0000000000000000000A", "key": "acme", "name": "Acme Inc", "primaryEmail": "ap@acme.test"},
    "period": {"from": "2026-04-01T00:00:00Z", "to": "2026-05-01T00:00:00Z"}, "dueAt": "2026-05-31T00:00:00Z",
    "lines": [
        {"id": "01JLIN0000000000000000000A", "name": "Tokens", "type": "usage_based", "featureKey": "tokens",
         "period": {"from": "2026-04-01T00:00:00Z", "to": "2026-05-01T00:00:00Z"}, "quantity": "1500",
         "children": [
             {"id": "01JLIN0000000000000000000B", "name": "Tokens: usage in tier 1", "quantity": "1000",
              "perUnitAmount": "0.01", "category": "regular",
              "totals": {"amount": "10.00", "discountsTotal": "0", "total": "10.00"}},
             {"id": "01JLIN0000000000000000000C", "name": "Tokens: usage in tier 2", "quantity": "500",
              "perUnitAmount": "0.005", "category": "regular",
              "totals": {"amount": "2.50", "discountsTotal": "0.25", "total": "2.25"}}],
         "totals": {"amount": "12.50", "discountsTotal": "0.25", "creditsTotal": "0", "taxesTotal": "0",
                    "total": "12.25"}},
        {"id": "01JLIN0000000000000000000D", "name": "Base fee", "type": "flat_fee", "quantity": "1", "children": [],
         "totals": {"amount": "49.99", "discountsTotal": "0", "total": "49.99"}}],
    "totals": {"amount": "62.49", "chargesTotal": "0", "discountsTotal": "0.25", "creditsTotal": "5.00",
               "taxesTotal": "0", "taxesInclusiveTotal": "0", "taxesExclusiveTotal": "0", "total": "57.24"},
}


def invoice(**changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(INVOICE)
    doc.update(changes)
    return doc


@pytest.fixture
def standin() -> Iterator[StandIn]:
    s = StandIn().start()
    yield s
    s.stop()


@pytest.fixture
def app(standin: StandIn) -> StripeApp:
    return StripeApp(standin.api_key, standin.url, timeout=5)


@contextmanager
def billow_on_standin(data_dir: Path, standin: StandIn, at: str, secret: str) -> Iterator[Billow]:
    """A Billow (memory usage, SQLite meta, namespace `stripe`, the clock frozen at `at`) whose Stripe app talks to
    `standin` and whose webhook handler checks `secret`, installed while the block runs."""
    from tests.entitlements.conftest import METERS, Billow, Clock

    clock = Clock(at)
    c = build(Settings.parse(dict(usage_store="memory", data_dir=str(data_dir), namespace="stripe", meters=METERS,
                                  stripe_api_key=standin.api_key, stripe_api_base=standin.url,
                                  stripe_webhook_secret=secret)), deliver=lambda ev: sink(ev, None))
    c.clock = clock
    install(c)
    try:
        yield Billow(c, clock)
    finally:
        install(None)
        c.close()
