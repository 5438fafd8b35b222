"""Hostile bodies on the progressive billing routes and the catalog's entitlement templates (helper omclient13's
probe): a billing profile's or a customer override's `workflow` (whose `invoicing.progressiveBilling` decides
progressive billing), `POST /api/v1/billing/invoices/invoice` (`asOf`, `progressiveBillingOverride`) and an add-on's
or a plan's rate card `entitlementTemplate.issueAfterReset`. Every bad value is a 400 problem naming its field:
never a 500, never stored and shown back, never taken for a value left out."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.entitlements.conftest import Billow, harness
from tests.support.billing import PROFILE
from tests.support.catalog import setup


@pytest.fixture
def b(tmp_path: Path, namespace: str) -> Iterator[Billow]:
    with harness(tmp_path, namespace) as billow:
        setup(billow)
        yield billow


def _refused(b: Billow, method: str, path: str, raw: bytes, field: str) -> None:
    status, out = b.raw(method, path, raw)
    assert status == 400, (raw[:120], status, out)
    assert out["type"] and out["status"] == 400
    fields = [e["field"] for e in out["extensions"]["validationErrors"]]
    assert field in fields, (raw[:120], out)


# (workflow JSON, the field named): the collection and tax sections were stored as sent (an `interval` of 1 or
# 1e999999, `enabled: "yes"`); an alignment that is no object was a 500 (`str.get`).
BAD_WORKFLOWS = [
    ('{"collection": {"alignment": "anchored"}}', "workflow.collection.alignment"),
    ('{"collection": {"alignment": 1}}', "workflow.collection.alignment"),
    ('{"collection": {"alignment": true}}', "workflow.collection.alignment"),
    ('{"collection": {"alignment": {"type": "anchored"}}}', "workflow.collection.alignment.recurringPeriod"),
    ('{"collection": {"alignment": {"type": "anchored", "recurringPeriod": {"interval": "P1M", '
     '"anchor": "2026-02-30T00:00:00Z"}}}}', "workflow.collection.alignment.recurringPeriod.anchor"),
    ('{"collection": {"alignment": {"type": "anchored", "recurringPeriod": {"interval": "P1M", '
     '"anchor": "10000-01-01T00:00:00Z"}}}}', "workflow.collection.alignment.recurringPeriod.anchor"),
    ('{"collection": {"alignment": {"type": "anchored", "recurringPeriod": {"interval": 1e999999, '
     '"anchor": "2026-01-01T00:00:00Z"}}}}', "workflow.collection.alignment.recurringPeriod.interval"),
    ('{"collection": {"interval": 1e999999}}', "workflow.collection.interval"),
    ('{"collection": {"interval": 1}}', "workflow.collection.interval"),
    ('{"collection": {"interval": null}}', "workflow.collection.interval"),
    ('{"collection": {"interval": "hourly"}}', "workflow.collection.interval"),
    ('{"tax": {"enabled": "yes"}}', "workflow.tax.enabled"),
    ('{"tax": {"enforced": 1e-999999}}', "workflow.tax.enforced"),
    ('{"tax": {"enabled": null}}', "workflow.tax.enabled"),
    ('{"invoicing": {"progressiveBilling": "\\ud800"}}', "workflow.invoicing.progressiveBilling"),
    ('{"invoicing": {"progressiveBilling": null}}', "workflow.invoicing.progressiveBilling"),
    ('{"invoicing": {"subscriptionEndProrationMode": 1}}', "workflow.invoicing.subscriptionEndProrationMode"),
    ('{"invoicing": {"defaultTaxConfig": "inclusive"}}', "workflow.invoicing.defaultTaxConfig"),
    # defaultTaxConfig's settings (OpenMeter's TaxConfig) were stored and shown back as sent, whatever they held
    ('{"invoicing": {"defaultTaxConfig": {"behavior": 1e999999}}}', "workflow.invoicing.defaultTaxConfig.behavior"),
    ('{"invoicing": {"defaultTaxConfig": {"behavior": "both"}}}', "workflow.invoicing.defaultTaxConfig.behavior"),
    ('{"invoicing": {"defaultTaxConfig": {"behavior": null}}}', "workflow.invoicing.defaultTaxConfig.behavior"),
    ('{"invoicing": {"defaultTaxConfig": {"stripe": "txcd_10000000"}}}', "workflow.invoicing.defaultTaxConfig.stripe.code"),
    ('{"invoicing": {"defaultTaxConfig": {"stripe": {"code": ["txcd_10000000"]}}}}',
     "workflow.invoicing.defaultTaxConfig.stripe.code"),
    ('{"invoicing": {"defaultTaxConfig": {"customInvoicing": {"code": {"a": 1}}}}}',
     "workflow.invoicing.defaultTaxConfig.customInvoicing.code"),
    ('{"invoicing": {"defaultTaxConfig": {"taxCodeId": 7}}}', "workflow.invoicing.defaultTaxConfig.taxCodeId"),
    ('{"invoicing": {"defaultTaxConfig": {"taxCodeId": "' + "a" * 100_000 + '"}}}',
     "workflow.invoicing.defaultTaxConfig.taxCodeId"),
    ('{"invoicing": {"defaultTaxConfig": {"taxCodeId": "01ARZ3NDEKTSV4RRFFQ69G5FAV\\n"}}}',
     "workflow.invoicing.defaultTaxConfig.taxCodeId"),
    ('{"invoicing": {"defaultTaxConfig": {"zzz": ' + "[" * 500 + "]" * 500 + '}}}',
     "workflow.invoicing.defaultTaxConfig.zzz"),
]


@pytest.mark.parametrize(("workflow", "field"), BAD_WORKFLOWS)
def test_a_bad_workflow_is_a_400_naming_its_field(b: Billow, workflow: str, field: str) -> None:
    profile = b.ok("POST", "/api/v1/billing/profiles", PROFILE)
    customer = b.ok("GET", "/api/v1/customers/acme")
    body = '{"name": "P", "supplier": {"name": "S"}, "default": true, "workflow": ' + workflow + "}"
    _refused(b, "POST", "/api/v1/billing/profiles", body.encode(), field)
    _refused(b, "PUT", f"/api/v1/billing/profiles/{profile['id']}", body.encode(), field)
    _refused(b, "PUT", f"/api/v1/billing/customers/{customer['id']}", ('{"workflow": ' + workflow + "}").encode(), field)
    shown = b.ok("GET", f"/api/v1/billing/profiles/{profile['id']}")["workflow"]
    assert shown["collection"] == {"alignment": {"type": "subscription"}, "interval": "PT1H"}
    assert shown["tax"] == {"enabled": False, "enforced": False}


def test_a_default_tax_config_is_stored_as_checked(b: Billow) -> None:
    """OpenMeter's TaxConfig settings are kept; a field inside `stripe` or `customInvoicing` OpenMeter's does not have
    is dropped (it was stored and shown back on the profile, the override and the merged profile)."""
    sent = {"behavior": "exclusive", "stripe": {"code": "txcd_10000000", "zzz": "a" * 100_000},
            "customInvoicing": {"code": "VAT-19", "deep": [[[[]]]]}, "taxCodeId": "01ARZ3NDEKTSV4RRFFQ69G5FAV"}
    kept = {"behavior": "exclusive", "stripe": {"code": "txcd_10000000"}, "customInvoicing": {"code": "VAT-19"},
            "taxCodeId": "01ARZ3NDEKTSV4RRFFQ69G5FAV"}
    made = b.ok("POST", "/api/v1/billing/profiles", {**PROFILE, "workflow": {"invoicing": {"defaultTaxConfig": sent}}})
    assert made["workflow"]["invoicing"]["defaultTaxConfig"] == kept
    assert b.ok("GET", f"/api/v1/billing/profiles/{made['id']}")["workflow"]["invoicing"]["defaultTaxConfig"] == kept
    customer = b.ok("GET", "/api/v1/customers/acme")
    out = b.ok("PUT", f"/api/v1/billing/customers/{customer['id']}",
               {"workflow": {"invoicing": {"defaultTaxConfig": {**sent, "behavior": "inclusive"}}}})
    assert out["customerOverride"]["workflow"]["invoicing"]["defaultTaxConfig"] == {**kept, "behavior": "inclusive"}
    shown = b.ok("GET", f"/api/v1/billing/customers/{customer['id']}")
    assert shown["customerProfile"]["workflow"]["invoicing"]["defaultTaxConfig"] == {**kept, "behavior": "inclusive"}
    assert "zzz" not in json.dumps(shown) and "deep" not in json.dumps(shown)


def test_a_good_collection_and_tax_workflow_is_kept(b: Billow) -> None:
    workflow = {"collection": {"interval": "PT2H", "alignment": {"type": "anchored", "recurringPeriod": {
        "interval": "P1M", "anchor": "2026-01-01T00:00:00Z"}}}, "tax": {"enabled": True, "enforced": False},
        "invoicing": {"progressiveBilling": False}}
    made = b.ok("POST", "/api/v1/billing/profiles", {**PROFILE, "workflow": workflow})
    assert made["workflow"]["collection"] == workflow["collection"]
    assert made["workflow"]["tax"] == workflow["tax"]
    assert made["workflow"]["invoicing"]["progressiveBilling"] is False


def test_a_workflow_field_openmeter_does_not_have_is_ignored_not_stored(b: Billow) -> None:
    """OpenMeter's decoder ignores a field its workflow sections do not have; Billow stored it and showed it back on
    the profile and the override, whatever it held (a 100,000-character string, 1e999999, 500 nested arrays)."""
    tax = '{"zzz": "' + "a" * 100_000 + '", "big": 1e999999, "deep": ' + "[" * 500 + "]" * 500 + ', "enabled": true}'
    workflow = ('{"invoicing": {"progressiveBilling": false, "subscriptionEndProrationMode": "bill_full_period", '
                '"zzz": 1}, "tax": ' + tax + "}")
    body = '{"name": "P", "supplier": {"name": "S"}, "workflow": ' + workflow + "}"
    status, made = b.raw("POST", "/api/v1/billing/profiles", body.encode())
    assert status == 201, made
    assert made["workflow"]["invoicing"] == {"autoAdvance": True, "draftPeriod": "P0D", "dueAfter": "P30D",
                                             "progressiveBilling": False, "subscriptionEndProrationMode": "bill_full_period"}
    assert made["workflow"]["tax"] == {"enabled": True, "enforced": False}
    assert b.ok("GET", f"/api/v1/billing/profiles/{made['id']}")["workflow"] == made["workflow"]
    customer = b.ok("GET", "/api/v1/customers/acme")
    status, out = b.raw("PUT", f"/api/v1/billing/customers/{customer['id']}", ('{"workflow": ' + workflow + "}").encode())
    assert status == 200, out
    assert out["customerOverride"]["workflow"] == {"invoicing": {"progressiveBilling": False,
                                                                 "subscriptionEndProrationMode": "bill_full_period"},
                                                   "tax": {"enabled": True}}
    assert "zzz" not in json.dumps(b.ok("GET", f"/api/v1/billing/customers/{customer['id']}"))


# `asOf` was read with `if body.get("asOf")`: "", 0, false, [] and {} were taken for "now" and invoiced (201).
@pytest.mark.parametrize("as_of", ['""', "0", "false", "[]", "{}", '"2026-02-30T00:00:00Z"', '"0000-01-01T00:00:00Z"',
                                   '"10000-01-01T00:00:00Z"', "1e999999", '"\\ud800"'])
def test_invoice_now_refuses_an_as_of_that_is_no_date_time(b: Billow, as_of: str) -> None:
    b.ok("POST", "/api/v1/billing/profiles", PROFILE)
    b.ok("POST", "/api/v1/billing/customers/acme/invoices/pending-lines", {"currency": "USD", "lines": [{
        "type": "flat_fee", "name": "Fee", "period": {"from": "2025-12-01T00:00:00Z", "to": "2025-12-31T00:00:00Z"},
        "invoiceAt": "2025-12-31T00:00:00Z", "price": {"type": "flat", "amount": "5"}}]})
    customer = b.ok("GET", "/api/v1/customers/acme")
    body = '{"customerId": "' + customer["id"] + '", "asOf": ' + as_of + ', "progressiveBillingOverride": true}'
    _refused(b, "POST", "/api/v1/billing/invoices/invoice", body.encode(), "asOf")
    made = b.ok("GET", "/api/v1/billing/invoices")["items"]
    assert [i["status"] for i in made] == ["gathering"]  # the line still waits: nothing was invoiced


def _card(issue: str) -> str:
    return ('{"type": "usage_based", "key": "tokens", "name": "Tokens", "featureKey": "tokens", "billingCadence": "P1M",'
            ' "price": {"type": "unit", "amount": "1"}, "entitlementTemplate": {"type": "metered", "usagePeriod": "P1M",'
            ' "issueAfterReset": ' + issue + "}}")


# An entitlement refuses these as its issueAfterReset (at most 20 integer digits and 18 decimal places); a rate
# card's template stored them (1E+999999 shown back) for the subscription's entitlement to fail on later.
@pytest.mark.parametrize("issue", ["1e999999", "1e-999999", "100000000000000000000"])
def test_an_entitlement_templates_issue_after_reset_is_bounded_as_an_entitlements(b: Billow, issue: str) -> None:
    addon = '{"key": "a", "name": "A", "currency": "USD", "instanceType": "single", "rateCards": [' + _card(issue) + "]}"
    _refused(b, "POST", "/api/v1/addons", addon.encode(), "rateCards[0].entitlementTemplate.issueAfterReset")
    plan = ('{"key": "p", "name": "P", "currency": "USD", "billingCadence": "P1M", "phases": [{"key": "only", '
            '"name": "Only", "rateCards": [' + _card(issue) + "]}]}")
    _refused(b, "POST", "/api/v1/plans", plan.encode(), "phases[0].rateCards[0].entitlementTemplate.issueAfterReset")
    ok: Any = b.ok("POST", "/api/v1/addons", {"key": "b", "name": "B", "currency": "USD", "instanceType": "single",
                                               "rateCards": []})
    assert ok["key"] == "b"


# PUT replaces the profile (OpenMeter's BillingProfileReplaceUpdateWithWorkflow: name, supplier, workflow and default
# required): a body without them, or with them null, was answered 200 with the profile unchanged, as if replaced
# (`default` left out until 2026-12-08).
@pytest.mark.parametrize(("edit", "field"), [
    ({"name": None}, "name"), ({"name": ""}, "name"), ({"name": 1}, "name"), ({"supplier": None}, "supplier"),
    ({"supplier": "S"}, "supplier"), ({"workflow": None}, "workflow"), ({"workflow": []}, "workflow"),
    ({"default": "yes"}, "default"), ({"default": None}, "default"), ({"default": 1}, "default"),
    ({"description": 1e300}, "description"), ({"description": ["d"]}, "description"),
    ({"metadata": "m"}, "metadata"), ({"metadata": {"k": 1}}, "metadata")])
def test_a_profile_replaced_without_its_required_fields_is_a_400(b: Billow, edit: dict[str, Any], field: str) -> None:
    made = b.ok("POST", "/api/v1/billing/profiles", PROFILE)
    body = {"name": "Renamed", "supplier": PROFILE["supplier"], "workflow": made["workflow"], "default": True}
    _refused(b, "PUT", f"/api/v1/billing/profiles/{made['id']}", json.dumps({**body, **edit}).encode(), field)
    if field in body:  # left out
        left = {k: v for k, v in body.items() if k != field}
        _refused(b, "PUT", f"/api/v1/billing/profiles/{made['id']}", json.dumps(left).encode(), field)
    assert b.ok("GET", f"/api/v1/billing/profiles/{made['id']}")["name"] == made["name"]
    assert b.ok("PUT", f"/api/v1/billing/profiles/{made['id']}", body)["name"] == "Renamed"


def test_the_default_profile_replaced_with_default_false_is_a_400_and_stays_the_default(b: Billow) -> None:
    """OpenMeter's UpdateProfile refuses to unset the default profile (ErrDefaultProfileCannotBeUnset, a 400);
    Billow answered 200 and kept it the default. Another profile replaced with `default: false` stays a non-default
    one, with `default: true` it becomes the default."""
    first = b.ok("POST", "/api/v1/billing/profiles", PROFILE)
    other = b.ok("POST", "/api/v1/billing/profiles", {**PROFILE, "name": "Other", "default": False})
    assert first["default"] is True and other["default"] is False
    whole = {"name": "Renamed", "supplier": PROFILE["supplier"], "workflow": first["workflow"]}
    _refused(b, "PUT", f"/api/v1/billing/profiles/{first['id']}", json.dumps({**whole, "default": False}).encode(),
             "default")
    assert b.ok("GET", f"/api/v1/billing/profiles/{first['id']}")["name"] == "Default"
    assert b.ok("PUT", f"/api/v1/billing/profiles/{other['id']}", {**whole, "default": False})["default"] is False
    assert b.ok("PUT", f"/api/v1/billing/profiles/{other['id']}", {**whole, "default": True})["default"] is True
    assert b.ok("GET", f"/api/v1/billing/profiles/{first['id']}")["default"] is False


def test_a_profiles_description_and_metadata_are_typed_and_replaced(b: Billow) -> None:
    """They were stored as sent on create (`metadata: 1e999999` shown back as Infinity, and every later profile
    create was a 500: the provisioning check read it as an object) and ignored by PUT (answered 200 unchanged)."""
    for bad, field in (('"description": 7', "description"), ('"description": {"a": [1]}', "description"),
                       ('"metadata": 1e999999', "metadata"), ('"metadata": [1]', "metadata"),
                       ('"metadata": {"k": {"deep": 1}}', "metadata"), ('"default": "yes"', "default")):
        _refused(b, "POST", "/api/v1/billing/profiles", ('{"name": "P", "supplier": {"name": "S"}, ' + bad + "}").encode(),
                 field)
    made = b.ok("POST", "/api/v1/billing/profiles", {**PROFILE, "description": "d1", "metadata": {"a": "1"}})
    assert (made["description"], made["metadata"]) == ("d1", {"a": "1"})
    whole = {"name": "Default", "supplier": PROFILE["supplier"], "workflow": made["workflow"], "default": True}
    out = b.ok("PUT", f"/api/v1/billing/profiles/{made['id']}", {**whole, "description": "d2", "metadata": {"b": "2"}})
    assert (out["description"], out["metadata"]) == ("d2", {"b": "2"})
    shown = b.ok("GET", f"/api/v1/billing/profiles/{made['id']}")
    assert (shown["description"], shown["metadata"]) == ("d2", {"b": "2"})
    cleared = b.ok("PUT", f"/api/v1/billing/profiles/{made['id']}", whole)  # replaced: left out is none
    assert (cleared["description"], cleared["metadata"]) == (None, None)


# The supplier (OpenMeter's BillingParty, printed on every invoice) was stored as sent but for its name: any type in
# key, taxId.code and the addresses' fields (1e999999, [], {}), and any field BillingParty does not have.
@pytest.mark.parametrize(("supplier", "field"), [
    ('{"name": "S", "key": 1e999999}', "supplier.key"),
    ('{"name": "S", "taxId": "DE1"}', "supplier.taxId"),
    ('{"name": "S", "taxId": {"code": 1}}', "supplier.taxId.code"),
    ('{"name": "S", "addresses": ["Berlin"]}', "supplier.addresses[0]"),
    ('{"name": "S", "addresses": [{"country": "DE", "city": []}]}', "supplier.addresses[0].city"),
    ('{"name": "S", "addresses": [{"country": "DE", "line1": {"a": 1}}]}', "supplier.addresses[0].line1"),
])
def test_a_supplier_field_of_the_wrong_type_is_a_400(b: Billow, supplier: str, field: str) -> None:
    _refused(b, "POST", "/api/v1/billing/profiles", ('{"name": "P", "supplier": ' + supplier + "}").encode(), field)


def test_a_supplier_field_billing_party_does_not_have_is_ignored(b: Billow) -> None:
    supplier = {"name": "S", "key": "s", "taxId": {"code": "DE1"}, "zzz": "a" * 100_000,
                "addresses": [{"country": "DE", "city": "Berlin", "zzz": [[[]]]}]}
    made = b.ok("POST", "/api/v1/billing/profiles", {"name": "P", "supplier": supplier})
    assert made["supplier"] == {"name": "S", "key": "s", "taxId": {"code": "DE1"},
                                "addresses": [{"country": "DE", "city": "Berlin"}]}


def _taxed_card(tax: str) -> str:
    return ('{"type": "flat_fee", "key": "base", "name": "Base", "billingCadence": "P1M", "price": {"type": "flat", '
            '"amount": "1"}, "taxConfig": ' + tax + "}")


# A rate card's taxConfig (OpenMeter's TaxConfig) took any taxCodeId (7, a 100,000-character string, an object) and
# stored `stripe` and `customInvoicing` as sent, fields OpenMeter's do not have included.
@pytest.mark.parametrize(("tax", "field"), [
    ('{"taxCodeId": 7}', "taxConfig.taxCodeId"),
    ('{"taxCodeId": {"id": "01ARZ3NDEKTSV4RRFFQ69G5FAV"}}', "taxConfig.taxCodeId"),
    ('{"taxCodeId": "' + "a" * 100_000 + '"}', "taxConfig.taxCodeId"),
    ('{"taxCodeId": null}', "taxConfig.taxCodeId"),
    ('{"behavior": ["inclusive"]}', "taxConfig.behavior"),
    ('{"stripe": null}', "taxConfig.stripe"),
])
def test_a_rate_cards_bad_tax_config_is_a_400_naming_its_field(b: Billow, tax: str, field: str) -> None:
    addon = '{"key": "a", "name": "A", "currency": "USD", "instanceType": "single", "rateCards": [' + _taxed_card(tax) + "]}"
    _refused(b, "POST", "/api/v1/addons", addon.encode(), f"rateCards[0].{field}")
    plan = ('{"key": "p", "name": "P", "currency": "USD", "billingCadence": "P1M", "phases": [{"key": "only", '
            '"name": "Only", "rateCards": [' + _taxed_card(tax) + "]}]}")
    _refused(b, "POST", "/api/v1/plans", plan.encode(), f"phases[0].rateCards[0].{field}")


def test_a_rate_cards_tax_config_is_stored_as_checked(b: Billow) -> None:
    tax = ('{"behavior": "inclusive", "stripe": {"code": "txcd_10000000", "zzz": "' + "a" * 100_000 + '"}, '
           '"customInvoicing": {"code": "VAT", "deep": ' + "[" * 500 + "]" * 500 + '}, '
           '"taxCodeId": "01ARZ3NDEKTSV4RRFFQ69G5FAV"}')
    addon = '{"key": "a", "name": "A", "currency": "USD", "instanceType": "single", "rateCards": [' + _taxed_card(tax) + "]}"
    status, made = b.raw("POST", "/api/v1/addons", addon.encode())
    assert status == 201, made
    kept = {"behavior": "inclusive", "stripe": {"code": "txcd_10000000"}, "customInvoicing": {"code": "VAT"},
            "taxCodeId": "01ARZ3NDEKTSV4RRFFQ69G5FAV"}
    assert made["rateCards"][0]["taxConfig"] == kept
    assert b.ok("GET", f"/api/v1/addons/{made['id']}")["rateCards"][0]["taxConfig"] == kept


# A plan's alignment and proRatingConfig that were no object were taken for the field left out (the plan made, 201,
# with the defaults): alignment 1e999999, 7, "x" or []; proRatingConfig false, 0, "" or [].
@pytest.mark.parametrize(("extra", "field"), [
    ('"alignment": 1e999999', "alignment"), ('"alignment": 7', "alignment"), ('"alignment": "x"', "alignment"),
    ('"alignment": []', "alignment"), ('"alignment": false', "alignment"),
    ('"proRatingConfig": false', "proRatingConfig"), ('"proRatingConfig": 0', "proRatingConfig"),
    ('"proRatingConfig": ""', "proRatingConfig"), ('"proRatingConfig": []', "proRatingConfig"),
])
def test_a_plans_alignment_or_prorating_that_is_no_object_is_a_400(b: Billow, extra: str, field: str) -> None:
    plan = ('{"key": "p", "name": "P", "currency": "USD", "billingCadence": "P1M", ' + extra + ', "phases": [{"key": '
            '"only", "name": "Only", "rateCards": [' + _taxed_card('{"behavior": "inclusive"}') + "]}]}")
    _refused(b, "POST", "/api/v1/plans", plan.encode(), field)
    assert b.call("GET", "/api/v1/plans/p")[0] == 404


def test_a_profile_put_replaces_its_workflow_with_openmeters_defaults_for_what_it_leaves_out(b: Billow) -> None:
    """OpenMeter's PUT maps a workflow field left out to its default (fromAPIBillingWorkflow; the stored
    subscriptionEndProrationMode stays). Billow merged the body over the stored workflow: a PUT of `workflow: {}`
    kept autoAdvance false, dueAfter P14D and the defaultTaxConfig, answered as if replaced."""
    workflow = {"invoicing": {"autoAdvance": False, "dueAfter": "P14D", "progressiveBilling": False,
                              "subscriptionEndProrationMode": "bill_full_period",
                              "defaultTaxConfig": {"behavior": "inclusive"}},
                "payment": {"collectionMethod": "send_invoice"}, "tax": {"enabled": True, "enforced": True}}
    made = b.ok("POST", "/api/v1/billing/profiles", {**PROFILE, "workflow": workflow})
    assert made["workflow"]["invoicing"]["dueAfter"] == "P14D"
    whole = {"name": "Default", "supplier": PROFILE["supplier"], "default": True}
    assert b.ok("PUT", f"/api/v1/billing/profiles/{made['id']}", {**whole, "workflow": made["workflow"]})["workflow"] \
        == made["workflow"]  # the whole workflow sent back: unchanged
    out = b.ok("PUT", f"/api/v1/billing/profiles/{made['id']}", {**whole, "workflow": {}})
    assert out["workflow"]["invoicing"] == {"autoAdvance": True, "draftPeriod": "P0D", "dueAfter": "P30D",
                                            "progressiveBilling": True,
                                            "subscriptionEndProrationMode": "bill_full_period"}
    assert out["workflow"]["payment"] == {"collectionMethod": "charge_automatically"}
    assert out["workflow"]["tax"] == {"enabled": False, "enforced": False}
    assert b.ok("GET", f"/api/v1/billing/profiles/{made['id']}")["workflow"] == out["workflow"]
