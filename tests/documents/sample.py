"""The invoice the documents tests render: OpenMeter's `Invoice` shape, as the billing run writes it."""

from __future__ import annotations

import copy
from typing import Any

_INVOICE: dict[str, Any] = {
    "id": "01JTESTINVOICE0000000000001", "number": "ACME-0001", "type": "standard", "currency": "USD",
    "status": "issued", "issuedAt": "2026-05-01T00:05:00Z", "dueAt": "2026-05-31T00:05:00Z",
    "createdAt": "2026-05-01T00:00:00Z", "updatedAt": "2026-05-01T00:05:00Z",
    "supplier": {"name": "Billow Inc.", "taxId": {"code": "DE123456789"},
                 "addresses": [{"country": "DE", "postalCode": "10115", "city": "Berlin", "line1": "Invalidenstr. 1"}]},
    "customer": {"id": "01JTESTCUSTOMER00000000001", "key": "acme", "name": "Acme Inc",
                 "billingAddress": {"country": "US", "city": "Austin", "line1": "1 Main St"},
                 "usageAttribution": {"subjectKeys": ["acme"]}},
    "period": {"from": "2026-04-01T00:00:00Z", "to": "2026-05-01T00:00:00Z"},
    "lines": [
        {"id": "01JTESTLINE000000000000001", "name": "Tokens", "type": "usage_based", "featureKey": "tokens",
         "period": {"from": "2026-04-01T00:00:00Z", "to": "2026-05-01T00:00:00Z"}, "quantity": "1500",
         "subscription": {"id": "01JTESTSUBSCRIPTION0000001"},
         "children": [
             {"id": "01JTESTCHILD00000000000001", "name": "Tokens: usage in tier 1", "quantity": "1000",
              "perUnitAmount": "0.01", "category": "regular",
              "totals": {"amount": "10.00", "discountsTotal": "0", "total": "10.00"}},
             {"id": "01JTESTCHILD00000000000002", "name": "Tokens: usage in tier 2", "quantity": "500",
              "perUnitAmount": "0.005", "category": "regular",
              "totals": {"amount": "2.50", "discountsTotal": "0.25", "total": "2.25"}}],
         "totals": {"amount": "12.50", "discountsTotal": "0.25", "creditsTotal": "0", "taxesTotal": "0",
                    "total": "12.25"}},
        {"id": "01JTESTLINE000000000000002", "name": "Base fee", "type": "flat_fee", "quantity": "1",
         "perUnitAmount": "49.99", "children": [],
         "totals": {"amount": "49.99", "discountsTotal": "0", "total": "49.99"}}],
    "totals": {"amount": "62.49", "chargesTotal": "0", "discountsTotal": "0.25", "creditsTotal": "5.00",
               "taxesTotal": "0", "taxesInclusiveTotal": "0", "taxesExclusiveTotal": "0", "total": "57.24"},
}


def invoice(**changes: Any) -> dict[str, Any]:
    """A fresh copy of the sample invoice with top-level fields replaced."""
    return {**copy.deepcopy(_INVOICE), **changes}
