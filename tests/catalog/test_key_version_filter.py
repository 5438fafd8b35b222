"""Issue 16: OpenMeter's `keyVersion` deepObject filter on the plan and add-on lists (`keyVersion[KEY]=VERSION`,
repeatable). Billow ignored it: a client asking for one version got every plan, and a malformed filter (`keyVersion[]`,
a version that is no positive integer) was answered 200. Plans match any of id, key, keyVersion and currency (OpenMeter
ORs them); add-ons must match every filter given."""

from __future__ import annotations

from typing import Any

import pytest

from tests.catalog.conftest import Billow
from tests.support.catalog import plan_body, setup


def _keys(b: Billow, path: str, target: str) -> list[tuple[str, int]]:
    status, out = b.call("GET", path + target)
    assert status == 200, out
    return sorted((i["key"], i["version"]) for i in out["items"])


@pytest.mark.parametrize("billow", ["memory"], indirect=True)
def test_plans_filtered_by_key_and_version(billow: Billow) -> None:
    b = billow
    setup(b)
    for key in ("alpha", "beta"):
        b.ok("POST", f"/api/v1/plans/{b.ok('POST', '/api/v1/plans', plan_body(key, '10'))['id']}/publish")
    b.ok("POST", "/api/v1/plans", plan_body("alpha", "20"))  # alpha version 2, a draft
    assert _keys(b, "/api/v1/plans", "?keyVersion[alpha]=2") == [("alpha", 2)]
    assert _keys(b, "/api/v1/plans", "?keyVersion[alpha]=1&keyVersion[alpha]=2") == [("alpha", 1), ("alpha", 2)]
    assert _keys(b, "/api/v1/plans", "?keyVersion[alpha]=1&keyVersion[beta]=1") == [("alpha", 1), ("beta", 1)]
    assert _keys(b, "/api/v1/plans", "?keyVersion[alpha]=2&key=beta") == [("alpha", 2), ("beta", 1)]  # OR, as OpenMeter
    assert _keys(b, "/api/v1/plans", "?keyVersion[gamma]=1") == []


@pytest.mark.parametrize("billow", ["memory"], indirect=True)
def test_addons_filtered_by_key_and_version(billow: Billow) -> None:
    b = billow
    setup(b)
    body: dict[str, Any] = {"name": "x", "currency": "USD", "instanceType": "single", "rateCards": [
        {"type": "flat_fee", "key": "seat", "name": "Seat", "billingCadence": "P1M",
         "price": {"type": "flat", "amount": "5", "paymentTerm": "in_advance"}}]}
    for key in ("one", "two"):
        b.ok("POST", f"/api/v1/addons/{b.ok('POST', '/api/v1/addons', {**body, 'key': key})['id']}/publish")
    assert _keys(b, "/api/v1/addons", "?keyVersion[one]=1") == [("one", 1)]
    assert _keys(b, "/api/v1/addons", "?keyVersion[one]=1&key=two") == []  # add-ons: every filter must match


@pytest.mark.parametrize("billow", ["memory"], indirect=True)
@pytest.mark.parametrize("query,field", [("keyVersion[]=null", "keyVersion[]"), ("keyVersion[alpha]=x", "keyVersion[alpha]"),
                                         ("keyVersion[alpha]=0", "keyVersion[alpha]"), ("keyVersion=1", "keyVersion"),
                                         ("keyVersion[alpha]=1e3", "keyVersion[alpha]")])
@pytest.mark.parametrize("path", ["/api/v1/plans", "/api/v1/addons"])
def test_a_malformed_key_version_filter_is_a_400_naming_it(billow: Billow, path: str, query: str, field: str) -> None:
    status, out = billow.call("GET", f"{path}?{query}")
    assert status == 400, out
    assert [e["field"] for e in out["extensions"]["validationErrors"]] == [field], out
