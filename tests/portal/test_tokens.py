"""Portal tokens and the portal API through the AWS path (authorizer -> API handler), with a clock the test moves:
create, list, expiry, invalidation, tampering, allowed meters, the subject forced on every query, and the wall
between portal tokens and API keys."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from billow.ids import is_ulid
from billow.timeutil import format_rfc3339
from tests.portal.conftest import Deployment


def _customers(d: Deployment) -> tuple[dict[str, Any], dict[str, Any]]:
    a = d.admin("POST", "/api/v1/customers", {"name": "Acme Inc", "key": "acme_inc",
                                              "usageAttribution": {"subjectKeys": ["acme"]}})
    b = d.admin("POST", "/api/v1/customers", {"name": "Globex", "key": "globex_inc",
                                              "usageAttribution": {"subjectKeys": ["globex"]}})
    return a, b


def _usage(d: Deployment) -> None:
    admin = d.keys["admin"]
    for subject, tokens, at, model in (("acme", "0.1", "2026-03-09T10:00:00Z", "gpt"),
                                       ("acme", "0.2", "2026-03-09T11:00:00Z", "o3"),
                                       ("acme", 5, "2026-03-10T09:00:00Z", "gpt"),
                                       ("globex", 1000, "2026-03-09T10:00:00Z", "gpt"),
                                       ("globex", 7, "2026-03-10T09:00:00Z", "o3")):
        d.gw.usage(admin, subject, tokens, at, model)


def values(body: dict[str, Any]) -> list[Decimal]:
    return [Decimal(str(r["value"])) for r in body["data"]]


def test_create_shows_the_token_once_and_stores_only_its_hash(aws: Deployment) -> None:
    made = aws.token("acme")
    assert set(made) == {"id", "subject", "expiresAt", "expired", "createdAt", "token"}
    assert is_ulid(made["id"]) and made["subject"] == "acme" and made["expired"] is False
    # OpenMeter's default lifetime: one hour.
    assert made["createdAt"] == "2026-03-10T12:00:00Z" and made["expiresAt"] == "2026-03-10T13:00:00Z"
    prefix, token_id, secret = made["token"].split("_", 2)
    assert (prefix, token_id) == ("bp", made["id"]) and len(secret) == 43
    with aws.c.meta.engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(sa.text("SELECT * FROM portal_tokens"))]
    assert len(rows) == 1 and rows[0]["token_hash"] == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in repr(rows)
    listed = aws.admin("GET", "/api/v1/portal/tokens")
    assert [t["id"] for t in listed] == [made["id"]] and "token" not in listed[0]


def test_list_is_newest_first_limited_and_per_namespace(aws: Deployment) -> None:
    ids = []
    for i in range(3):
        ids.append(aws.token(f"s{i}")["id"])
        aws.clock.t += timedelta(seconds=1)
    assert [t["id"] for t in aws.admin("GET", "/api/v1/portal/tokens")] == ids[::-1]
    assert [t["id"] for t in aws.admin("GET", "/api/v1/portal/tokens", query={"limit": 2})] == ids[:0:-1]
    for bad in ("0", "101", "x"):
        status, prob = aws.gw.call("GET", "/api/v1/portal/tokens", aws.keys["admin"], query={"limit": bad})
        assert status == 400 and prob["validationErrors"][0]["field"] == "limit"
    assert aws.admin("GET", "/api/v1/portal/tokens", key="other") == []


def test_token_admin_needs_an_admin_key(aws: Deployment) -> None:
    assert aws.gw.call("POST", "/api/v1/portal/tokens", None, {"subject": "acme"})[0] == 401
    for method, path, body in (("POST", "/api/v1/portal/tokens", {"subject": "acme"}),
                               ("GET", "/api/v1/portal/tokens", None),
                               ("POST", "/api/v1/portal/tokens/invalidate", {"subject": "acme"})):
        status, prob = aws.gw.call(method, path, aws.keys["read"], body)
        assert status == 403 and "admin" in prob["detail"], (method, path, prob)


def test_expiry_default_chosen_and_bounded(aws: Deployment) -> None:
    made = aws.token("acme")
    assert aws.portal("/api/v1/portal/me", made["token"])[0] == 200
    aws.clock.t += timedelta(minutes=59, seconds=59)
    assert aws.portal("/api/v1/portal/me", made["token"])[0] == 200
    aws.clock.t += timedelta(seconds=1)
    assert aws.portal("/api/v1/portal/me", made["token"])[0] == 401  # the authorizer refuses it
    assert aws.admin("GET", "/api/v1/portal/tokens")[0]["expired"] is True

    week = format_rfc3339(aws.clock.now() + timedelta(days=7))
    longer = aws.token("acme", expiresAt=week)
    assert longer["expiresAt"] == week
    aws.clock.t += timedelta(days=6)
    assert aws.portal("/api/v1/portal/me", longer["token"])[0] == 200
    for bad in (format_rfc3339(aws.clock.now() + timedelta(days=30, seconds=1)),
                format_rfc3339(aws.clock.now() - timedelta(seconds=1)), "tomorrow", 12):
        status, prob = aws.gw.call("POST", "/api/v1/portal/tokens", aws.keys["admin"], {"subject": "acme",
                                                                                      "expiresAt": bad})
        assert status == 400 and prob["validationErrors"][0]["field"] == "expiresAt", (bad, prob)


def test_bad_create_requests_name_the_field(aws: Deployment) -> None:
    for body, field in (({}, "subject"), ({"subject": ""}, "subject"), ({"subject": 5}, "subject"),
                        ({"subject": "x" * 257}, "subject"), ([], "body"),
                        ({"subject": "acme", "allowedMeterSlugs": "tokens"}, "allowedMeterSlugs"),
                        ({"subject": "acme", "allowedMeterSlugs": ["nope"]}, "allowedMeterSlugs"),
                        ({"subject": "acme", "allowedMeterSlugs": ["Tokens"]}, "allowedMeterSlugs")):
        status, prob = aws.gw.call("POST", "/api/v1/portal/tokens", aws.keys["admin"], body)
        assert status == 400 and prob["validationErrors"][0]["field"] == field, (body, prob)


def test_a_null_field_is_a_400_naming_it_and_changes_nothing(aws: Deployment) -> None:
    """OpenMeter's PortalToken.allowedMeterSlugs and the invalidation's id and subject are not nullable. A null was
    taken for the field left out: a token for every meter made, or the subject's tokens invalidated by a request that
    also named a token id null. Found by re-sending the schema fuzz's accepted bodies with each field null."""
    made = aws.token("acme")
    before = aws.admin("GET", "/api/v1/portal/tokens")
    status, prob = aws.gw.call("POST", "/api/v1/portal/tokens", aws.keys["admin"],
                               {"subject": "acme", "allowedMeterSlugs": None})
    assert status == 400 and prob["validationErrors"][0]["field"] == "allowedMeterSlugs", prob
    for body, field in (({"subject": "acme", "id": None}, "id"), ({"id": made["id"], "subject": None}, "subject")):
        status, prob = aws.gw.call("POST", "/api/v1/portal/tokens/invalidate", aws.keys["admin"], body)
        assert status == 400 and prob["validationErrors"][0]["field"] == field, (body, prob)
    assert aws.admin("GET", "/api/v1/portal/tokens") == before
    assert aws.portal("/api/v1/portal/me", made["token"])[0] == 200


def test_invalidate_by_id_and_by_subject(aws: Deployment) -> None:
    one, two, other = aws.token("acme"), aws.token("acme"), aws.token("globex")
    rival = aws.token("acme", key="other")
    aws.admin("POST", "/api/v1/portal/tokens/invalidate", {"id": one["id"]})
    status, prob = aws.portal("/api/v1/portal/me", one["token"])
    assert status == 401
    assert aws.portal("/api/v1/portal/me", two["token"])[0] == 200
    aws.admin("POST", "/api/v1/portal/tokens/invalidate", {"subject": "acme"})
    assert aws.portal("/api/v1/portal/me", two["token"])[0] == 401
    assert aws.portal("/api/v1/portal/me", other["token"])[0] == 200  # another subject
    assert aws.portal("/api/v1/portal/me", rival["token"])[0] == 200  # the same subject in another namespace
    listed = {t["id"]: t for t in aws.admin("GET", "/api/v1/portal/tokens")}
    assert listed[one["id"]]["expired"] and listed[one["id"]]["invalidatedAt"] == "2026-03-10T12:00:00Z"
    assert not listed[other["id"]]["expired"]
    # Another namespace's token id is unknown here, and stays valid.
    status, _ = aws.gw.call("POST", "/api/v1/portal/tokens/invalidate", aws.keys["admin"], {"id": rival["id"]})
    assert status == 404 and aws.portal("/api/v1/portal/me", rival["token"])[0] == 200
    for body in ({}, {"id": ""}, {"subject": 3}, "acme"):
        assert aws.gw.call("POST", "/api/v1/portal/tokens/invalidate", aws.keys["admin"], body)[0] == 400


def test_invalidation_beats_a_cached_authorizer_answer(aws: Deployment) -> None:
    """API Gateway caches the authorizer's answer per header for minutes: the portal API reads the token again."""
    made = aws.token("acme")
    ctx = {"portalTokenId": made["id"], "namespace": "acme_co", "subject": "acme"}
    assert aws.gw.call("GET", "/api/v1/portal/me", made["token"], ctx=ctx)[0] == 200
    aws.admin("POST", "/api/v1/portal/tokens/invalidate", {"id": made["id"]})
    status, prob = aws.gw.call("GET", "/api/v1/portal/me", made["token"], ctx=ctx)
    assert status == 401 and "invalidated" in prob["detail"]
    aws.clock.t += timedelta(hours=2)
    fresh = aws.token("acme")
    ctx = {**ctx, "portalTokenId": fresh["id"]}
    aws.clock.t += timedelta(hours=1)
    status, prob = aws.gw.call("GET", "/api/v1/portal/me", fresh["token"], ctx=ctx)
    assert status == 401 and "expired" in prob["detail"]


def test_tampered_tokens_are_refused(aws: Deployment) -> None:
    made = aws.token("acme")
    tok = made["token"]
    other = aws.token("globex")["token"]
    flipped = tok[:-1] + ("A" if tok[-1] != "A" else "B")
    swapped = other.split("_", 2)
    for bad in (flipped, tok[:-1], tok + "x", tok.replace("bp_", "bk_", 1), tok.replace("bp_", "bP_", 1),
                f"bp_{swapped[1]}_{tok.split('_', 2)[2]}",  # another token's id with this secret
                "bp_" + "0" * 26 + "_" + "x" * 43, "bp_", tok.lower()):
        assert aws.portal("/api/v1/portal/me", bad)[0] == 401, bad
    assert aws.portal("/api/v1/portal/me", tok)[0] == 200


def test_portal_query_is_forced_to_the_token_subject(aws: Deployment) -> None:
    acme_cust, globex_cust = _customers(aws)
    _usage(aws)
    tok = aws.token("acme")["token"]
    status, body = aws.portal("/api/v1/portal/meters/tokens/query", tok)
    assert status == 200 and values(body) == [Decimal("5.3")]
    _, daily = aws.portal("/api/v1/portal/meters/tokens/query", tok, windowSize="DAY", groupBy=["model", "subject"])
    assert sorted((r["windowStart"], r["groupBy"]["model"], r["subject"], Decimal(str(r["value"])))
                  for r in daily["data"]) == [("2026-03-09T00:00:00Z", "gpt", "acme", Decimal("0.1")),
                                              ("2026-03-09T00:00:00Z", "o3", "acme", Decimal("0.2")),
                                              ("2026-03-10T00:00:00Z", "gpt", "acme", Decimal(5))]
    # The same as an admin's query for that subject; the admin sees globex too.
    admin = aws.admin("GET", "/api/v1/meters/tokens/query", query={"subject": "acme"})
    assert values(admin) == values(body)
    assert values(aws.admin("GET", "/api/v1/meters/tokens/query")) == [Decimal("1012.3")]
    # Asking for another subject or customer is refused, never answered.
    for query in ({"subject": "globex"}, {"subject": ["acme", "globex"]}, {"filterCustomerId": globex_cust["id"]},
                  {"filterCustomerId": "globex_inc"}, {"filterCustomerId": [acme_cust["id"], globex_cust["id"]]}):
        status, prob = aws.portal("/api/v1/portal/meters/tokens/query", tok, **query)
        assert status == 403 and prob["status"] == 403, (query, prob)
    for query in ({"subject": "acme"}, {"filterCustomerId": acme_cust["id"]}, {"filterCustomerId": "acme_inc"}):
        status, own = aws.portal("/api/v1/portal/meters/tokens/query", tok, **query)
        assert status == 200 and values(own) == [Decimal("5.3")], (query, own)
    # Filters and bad parameters behave as on the meter query.
    _, o3 = aws.portal("/api/v1/portal/meters/tokens/query", tok,
                       advancedMeterGroupByFilters='{"model": {"$eq": "o3"}}')
    assert values(o3) == [Decimal("0.2")]
    status, prob = aws.portal("/api/v1/portal/meters/tokens/query", tok, windowSize="WEEK")
    assert status == 400 and prob["validationErrors"][0]["field"] == "windowSize"
    # A subject with no usage sees nothing, not someone else's.
    empty = aws.token("initech")["token"]
    assert aws.portal("/api/v1/portal/meters/tokens/query", empty)[1]["data"] == []


def test_csv_answer(aws: Deployment) -> None:
    _usage(aws)
    tok = aws.token("acme")["token"]
    status, text = aws.gw.call("GET", "/api/v1/portal/meters/tokens/query", tok, headers={"accept": "text/csv"},
                               query={"windowSize": "DAY"})
    assert status == 200 and text.splitlines() == ["window_start,window_end,value",
                                                   "2026-03-09T00:00:00Z,2026-03-10T00:00:00Z,0.3",
                                                   "2026-03-10T00:00:00Z,2026-03-11T00:00:00Z,5"]


def test_allowed_meters(aws: Deployment) -> None:
    _usage(aws)
    tok = aws.token("acme", allowedMeterSlugs=["tokens", "tokens"])
    assert tok["allowedMeterSlugs"] == ["tokens"]
    assert aws.portal("/api/v1/portal/meters/tokens/query", tok["token"])[0] == 200
    meter_id = aws.admin("GET", "/api/v1/meters/requests")["id"]
    for slug in ("requests", meter_id, "nope"):
        status, prob = aws.portal(f"/api/v1/portal/meters/{slug}/query", tok["token"])
        assert status == 403 and "may not read" in prob["detail"], slug
    me = aws.portal("/api/v1/portal/me", tok["token"])[1]
    assert me["allowedMeterSlugs"] == ["tokens"] and [m["slug"] for m in me["meters"]] == ["tokens"]
    everything = aws.token("acme", allowedMeterSlugs=[])["token"]
    assert [m["slug"] for m in aws.portal("/api/v1/portal/me", everything)[1]["meters"]] == ["tokens", "requests"]
    assert aws.portal("/api/v1/portal/meters/requests/query", everything)[0] == 200
    assert aws.portal("/api/v1/portal/meters/nope/query", everything)[0] == 404


def test_api_keys_and_portal_tokens_do_not_mix(aws: Deployment) -> None:
    tok = aws.token("acme")["token"]
    for key in ("admin", "read"):  # an API key is not a portal token
        status, prob = aws.portal("/api/v1/portal/me", aws.keys[key])
        assert status == 401 and "portal token" in prob["detail"]
        assert aws.portal("/api/v1/portal/meters/tokens/query", aws.keys[key])[0] == 401
    for method, path, body in (("GET", "/api/v1/meters", None), ("GET", "/api/v1/meters/tokens/query", None),
                               ("POST", "/api/v1/meters/tokens/query", {}), ("GET", "/api/v1/subjects", None),
                               ("GET", "/api/v1/customers", None), ("GET", "/api/v1/entitlements", None),
                               ("GET", "/api/v1/subjects/acme/entitlements", None),
                               ("GET", "/api/v1/portal/tokens", None),
                               ("POST", "/api/v1/portal/tokens", {"subject": "globex"}),
                               ("POST", "/api/v1/portal/tokens/invalidate", {"subject": "acme"}),
                               ("GET", "/api/v1/admin/keys", None), ("DELETE", "/api/v1/meters/tokens", None)):
        status, prob = aws.gw.call(method, path, tok, body)
        assert status == 403 and "portal API" in prob["detail"], (method, path, prob)
    status, prob = aws.gw.call("POST", "/api/v1/events", tok, [], content_type="application/cloudevents-batch+json")
    assert status == 403
    # Nothing of the above happened: the token still works, the meter is still there.
    assert aws.portal("/api/v1/portal/me", tok)[0] == 200
    assert aws.admin("GET", "/api/v1/meters/tokens")["slug"] == "tokens"
    assert aws.portal("/api/v1/portal/me", "")[0] == 401


def test_me_entitlements_and_invoices(aws: Deployment) -> None:
    _customers(aws)
    _usage(aws)
    aws.admin("POST", "/api/v1/features", {"key": "ai", "name": "AI tokens", "meterSlug": "tokens"})
    aws.admin("POST", "/api/v1/features", {"key": "sso", "name": "Single sign-on"})
    aws.admin("POST", "/api/v1/features", {"key": "calls", "name": "API calls", "meterSlug": "requests"})
    for subject in ("acme", "globex"):
        ent = aws.admin("POST", f"/api/v1/subjects/{subject}/entitlements",
                        {"type": "metered", "featureKey": "ai", "usagePeriod": {"interval": "MONTH"}})
        aws.admin("POST", f"/api/v1/subjects/{subject}/entitlements/ai/grants",
                  {"amount": 100 if subject == "acme" else 5000, "effectiveAt": ent["currentUsagePeriod"]["from"],
                   "expiration": {"duration": "MONTH", "count": 1}})
    aws.clock.t += timedelta(minutes=1)  # usage of the period that began when the entitlements were made
    aws.gw.usage(aws.keys["admin"], "acme", "3.5", "2026-03-10T12:00:30Z")
    aws.gw.usage(aws.keys["admin"], "globex", 7, "2026-03-10T12:00:30Z")
    aws.admin("POST", "/api/v1/subjects/acme/entitlements", {"type": "boolean", "featureKey": "sso"})
    aws.admin("POST", "/api/v1/subjects/acme/entitlements",
              {"type": "metered", "featureKey": "calls", "usagePeriod": {"interval": "DAY"}})
    tok = aws.token("acme")["token"]
    me = aws.portal("/api/v1/portal/me", tok)[1]
    assert me["subject"] == "acme" and me["customer"]["key"] == "acme_inc" and me["customer"]["name"] == "Acme Inc"
    assert me["expiresAt"] == "2026-03-10T13:01:00Z" and me["allowedMeterSlugs"] is None
    assert aws.portal("/api/v1/portal/me", aws.token("initech")["token"])[1]["customer"] is None

    ents = {e["featureKey"]: e for e in aws.portal("/api/v1/portal/entitlements", tok)[1]}
    assert set(ents) == {"ai", "sso", "calls"}
    expected = aws.admin("GET", "/api/v1/subjects/acme/entitlements/ai/value")
    assert ents["ai"]["value"] == expected and ents["ai"]["featureName"] == "AI tokens"
    assert Decimal(str(expected["balance"])) == Decimal("96.5")  # 100 granted, 3.5 used this period
    assert ents["sso"]["value"] == {"hasAccess": True} and ents["sso"]["type"] == "boolean"
    assert "subjectKey" not in ents["ai"] and "metadata" not in ents["ai"]
    # A token limited to the tokens meter does not show the calls entitlement (its value is requests usage).
    narrow = aws.token("acme", allowedMeterSlugs=["tokens"])["token"]
    assert {e["featureKey"] for e in aws.portal("/api/v1/portal/entitlements", narrow)[1]} == {"ai", "sso"}
    globex = aws.token("globex")["token"]
    (g,) = aws.portal("/api/v1/portal/entitlements", globex)[1]
    assert Decimal(str(g["value"]["balance"])) == Decimal(4993)

    assert aws.portal("/api/v1/portal/invoices", tok) == (200, [])


def test_same_subject_and_meter_in_another_namespace_stay_apart(aws: Deployment) -> None:
    _usage(aws)
    aws.gw.usage(aws.keys["other"], "acme", 42, "2026-03-10T09:00:00Z")
    mine, theirs = aws.token("acme")["token"], aws.token("acme", key="other")["token"]
    assert values(aws.portal("/api/v1/portal/meters/tokens/query", mine)[1]) == [Decimal("5.3")]
    assert values(aws.portal("/api/v1/portal/meters/tokens/query", theirs)[1]) == [Decimal(42)]
