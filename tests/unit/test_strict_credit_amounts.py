"""Issue 15 item 11: prepaid credit amounts read numbers as billow.exact.parse_decimal does (no "1_000", no "١٢",
and a huge exponent is a 400, not a decimal.Overflow 500), through the api handler."""

from __future__ import annotations

from typing import Any

import pytest

from functions.api.handler import lambda_handler as api
from tests.unit.test_strict_input import call, container

__all__ = ["container"]  # the fixture, shared with test_strict_input


@pytest.mark.parametrize("raw", [b'{"currency":"USD","amount":"1_000"}', b'{"currency":"USD","amount":"\\u0661\\u0662"}',
                                 b'{"currency":"USD","amount":1e999999999}', b'{"currency":"USD","amount":"1e+999999999999999999"}'])
def test_prepaid_credit_amounts_take_the_same_numbers(container: Any, raw: bytes) -> None:
    status, customer = call(api, "POST", "/api/v1/customers", {"name": "c", "usageAttribution": {"subjectKeys": ["c"]}})
    assert status == 201 and customer is not None
    assert call(api, "POST", f"/api/v1/billing/customers/{customer['id']}/credits", {"currency": "USD", "amount": "10"})[0] == 201
    status, problem = call(api, "POST", f"/api/v1/billing/customers/{customer['id']}/credits", raw=raw)
    assert status == 400 and problem is not None
    assert problem["validationErrors"][0]["field"] == "amount"
