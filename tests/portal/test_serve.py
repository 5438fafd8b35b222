"""The portal on `billow serve`: the in-process auth checks portal tokens as the Lambda authorizer does, with
`auth: keys` and with auth off (the embedded default) alike; the web page is public and locked down."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Server


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The embedded default: no `auth` in the config, so auth is off."""
    srv = Server(tmp_path_factory.mktemp("portal-open")).start()
    yield srv
    srv.stop()


def test_page_is_public_and_locked_down(keyed_server: tuple[Server, dict[str, str]]) -> None:
    srv = keyed_server[0]
    status, hdrs, html = srv.request("GET", "/portal")
    assert status == 200 and hdrs["Content-Type"] == "text/html; charset=utf-8"
    assert '<script src="/portal/portal.js" defer></script>' in html and "http" not in html.split("<body")[0]
    csp = hdrs["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "connect-src 'self'" in csp
    assert hdrs["Referrer-Policy"] == "no-referrer" and hdrs["X-Frame-Options"] == "DENY"
    for name, ctype in (("portal.js", "text/javascript"), ("portal.css", "text/css")):
        status, hdrs, text = srv.request("GET", f"/portal/{name}")
        assert status == 200 and hdrs["Content-Type"].startswith(ctype) and len(text) > 1000
        assert "//cdn" not in text and "https://" not in text  # nothing from elsewhere
    for path in ("/portal/index.html", "/portal/..%2Fhandler.py", "/portal/nope.js"):
        status, hdrs, body = srv.request("GET", path)
        assert status in (401, 404) and hdrs["Content-Type"] == "application/problem+json", path


def test_with_api_keys(keyed_server: tuple[Server, dict[str, str]]) -> None:
    srv, keys = keyed_server
    admin, read = bearer(keys["admin"]), bearer(keys["read"])
    assert srv.request("POST", "/api/v1/meters", {"slug": "tokens", "eventType": "prompt", "aggregation": "SUM",
                                                  "valueProperty": "$.tokens"}, headers=admin)[0] == 201
    assert srv.request("POST", "/api/v1/events", [
        {"specversion": "1.0", "id": f"s{i}", "source": "serve", "type": "prompt", "subject": subject,
         "data": {"tokens": n}} for i, (subject, n) in enumerate((("shopper", 3), ("other", 100)))],
        headers=admin)[0] == 204
    assert srv.request("POST", "/api/v1/portal/tokens", {"subject": "shopper"})[0] == 401
    assert srv.request("POST", "/api/v1/portal/tokens", {"subject": "shopper"}, headers=read)[0] == 403
    status, _, made = srv.request("POST", "/api/v1/portal/tokens", {"subject": "shopper"}, headers=admin)
    assert status == 200 and made["token"].startswith("bp_")
    portal = bearer(made["token"])
    status, _, body = srv.request("GET", "/api/v1/portal/meters/tokens/query", headers=portal)
    assert status == 200 and [r["value"] for r in body["data"]] == [3]
    status, _, prob = srv.request("GET", "/api/v1/portal/meters/tokens/query?subject=other", headers=portal)
    assert status == 403 and prob["status"] == 403
    # Keys and tokens do not stand in for each other.
    status, hdrs, prob = srv.request("GET", "/api/v1/portal/me", headers=admin)
    assert status == 401 and hdrs["Content-Type"] == "application/problem+json" and "portal token" in prob["detail"]
    for method, path in (("GET", "/api/v1/meters"), ("GET", "/api/v1/portal/tokens"), ("GET", "/api/v1/admin/keys")):
        assert srv.request(method, path, headers=portal)[0] == 403, path
    assert srv.request("POST", "/api/v1/events", [], headers=portal)[0] == 403
    # Another tenant's admin can neither list nor invalidate it.
    rival = bearer(keys["rival"])
    assert srv.request("GET", "/api/v1/portal/tokens", headers=rival)[2] == []
    assert srv.request("POST", "/api/v1/portal/tokens/invalidate", {"id": made["id"]}, headers=rival)[0] == 404
    assert srv.request("GET", "/api/v1/portal/me", headers=portal)[0] == 200
    # Tampered, then invalidated: 401 from the host's auth, before any handler.
    assert srv.request("GET", "/api/v1/portal/me", headers=bearer(made["token"][:-2] + "zz"))[0] == 401
    assert srv.request("POST", "/api/v1/portal/tokens/invalidate", {"subject": "shopper"}, headers=admin)[0] == 204
    status, _, prob = srv.request("GET", "/api/v1/portal/me", headers=portal)
    assert status == 401 and "invalidated" in prob["detail"]


def test_with_auth_off_the_portal_still_needs_a_token(open_server: Server, tmp_path: Path) -> None:
    srv = open_server
    assert srv.request("POST", "/api/v1/meters", {"slug": "calls", "eventType": "call",
                                                  "aggregation": "COUNT"})[0] == 201
    for path in ("/api/v1/portal/me", "/api/v1/portal/meters/calls/query", "/api/v1/portal/entitlements",
                 "/api/v1/portal/invoices"):
        status, hdrs, prob = srv.request("GET", path)
        assert status == 401 and hdrs["Content-Type"] == "application/problem+json", path
        assert srv.request("GET", path, headers=bearer("bp_" + "0" * 26 + "_" + "a" * 43))[0] == 401
        assert srv.request("GET", path, headers=bearer("anything"))[0] == 401
    status, _, made = srv.request("POST", "/api/v1/portal/tokens", {"subject": "caller",
                                                                   "allowedMeterSlugs": ["calls"]})
    assert status == 200
    assert srv.request("GET", "/api/v1/portal/meters/calls/query", headers=bearer(made["token"]))[0] == 200
    # With auth off too, a portal token reads the portal API and nothing else.
    status, _, prob = srv.request("GET", "/api/v1/meters", headers=bearer(made["token"]))
    assert status == 403 and "portal API" in prob["detail"]
    assert srv.request("GET", "/api/v1/meters")[0] == 200  # the embedded default, without a token


def test_concurrent_customers_each_get_their_own_answer(keyed_server: tuple[Server, dict[str, str]]) -> None:
    """Many portal requests at once, from two customers with different parameters: each answer is its own."""
    from concurrent.futures import ThreadPoolExecutor

    srv, keys = keyed_server
    admin = bearer(keys["admin"])
    assert srv.request("POST", "/api/v1/meters", {"slug": "rounds", "eventType": "round", "aggregation": "SUM",
                                                  "valueProperty": "$.n", "groupBy": {"kind": "$.kind"}},
                       headers=admin)[0] == 201
    events = [{"specversion": "1.0", "id": f"r{subject}{kind}", "source": "serve", "type": "round",
               "subject": subject, "time": "2026-01-05T10:00:00Z", "data": {"n": n, "kind": kind}}
              for subject, kind, n in (("ann", "a", 1), ("ann", "b", 2), ("bob", "a", 10), ("bob", "b", 20))]
    assert srv.request("POST", "/api/v1/events", events, headers=admin)[0] == 204
    tokens = {s: srv.request("POST", "/api/v1/portal/tokens", {"subject": s}, headers=admin)[2]["token"]
              for s in ("ann", "bob")}
    cases = [("ann", "", [3]), ("ann", "?groupBy=kind", [1, 2]), ("bob", "", [30]), ("bob", "?groupBy=kind", [10, 20])]

    def one(i: int) -> tuple[int, list[int], list[int]]:
        subject, q, expected = cases[i % len(cases)]
        status, _, body = srv.request("GET", f"/api/v1/portal/meters/rounds/query{q}", headers=bearer(tokens[subject]))
        return status, sorted(r["value"] for r in body["data"]), expected

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(80)))
    assert all(status == 200 and got == expected for status, got, expected in results), results


def test_the_openmeter_client_drives_the_portal(keyed_server: tuple[Server, dict[str, str]]) -> None:
    """OpenMeter's own client, unchanged: tokens made, listed and invalidated with an API key; the portal meter
    query read with the portal token (JSON and CSV)."""
    from corehttp.exceptions import HttpResponseError
    from openmeter import Client

    srv, keys = keyed_server
    admin = Client(endpoint=srv.url, token=keys["admin"])
    admin.meters.create({"slug": "om_portal", "eventType": "om_portal", "aggregation": "SUM", "valueProperty": "$.n"})
    assert srv.request("POST", "/api/v1/events", [
        {"specversion": "1.0", "id": f"om{i}", "source": "om", "type": "om_portal", "subject": s,
         "time": "2026-02-01T10:00:00Z", "data": {"n": n}} for i, (s, n) in enumerate((("om_a", "1.5"), ("om_b", 9)))],
        headers=bearer(keys["admin"]))[0] == 204
    made = admin.portal.portal_tokens.create({"subject": "om_a", "allowedMeterSlugs": ["om_portal"]})
    assert made.subject == "om_a" and made.token and made.token.startswith("bp_") and made.expired is False
    assert made.id in {t.id for t in admin.portal.portal_tokens.list(limit=100)}
    portal = Client(endpoint=srv.url, token=made.token)
    result = portal.portal.portal_meters.query_json("om_portal", window_size="DAY", group_by=["subject"])
    assert [(str(r.value), r.subject) for r in result.data] == [("1.5", "om_a")]
    assert "1.5" in portal.portal.portal_meters.query_csv("om_portal") and "9" not in portal.portal.portal_meters.query_csv(
        "om_portal").split("\n", 1)[1]
    admin.portal.portal_tokens.invalidate(subject="om_a")
    with pytest.raises(HttpResponseError) as err:
        portal.portal.portal_meters.query_json("om_portal")
    assert err.value.status_code == 401
