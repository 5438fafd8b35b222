"""An event subject longer than a subject key may be (domain/fields: 1,024 characters and 2,048 bytes of UTF-8, what
every store can index) is counted by meters, but it can be no subject, no customer's subject key and no entitlement's
subject: each try is a 400 naming the field, on SQLite and on PostgreSQL (whose index refuses an entry over ~2,700
bytes: a 500 had any such key reached it). Through the v1 subject paths it is `subjectIdOrKey`, where it was the
404 of an unknown subject, whose "create it with POST /api/v1/subjects" no request could follow."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.entitlements.conftest import Billow, on_meta_store

WIDE = "€" * 700  # 700 characters, 2,100 bytes
BOOLEAN = {"type": "boolean", "featureKey": "ai"}
METERED = {"type": "metered", "featureKey": "ai", "usagePeriod": {"interval": "MONTH"}}


@pytest.fixture(params=["sqlite", "postgres"])
def billow(request: pytest.FixtureRequest, tmp_path: Path, namespace: str) -> Iterator[Billow]:
    with on_meta_store(request, tmp_path, namespace) as b:
        yield b


def _refused(b: Billow, method: str, path: str, body: Any, field: str) -> None:
    status, out = b.call(method, path, body)
    assert status == 400 and b.headers["Content-Type"] == "application/problem+json", (method, path, status, out)
    assert [e["field"] for e in out["validationErrors"]] == [field], out
    assert "2048 bytes" in out["detail"] and len(out["detail"]) < 400, out


def test_a_subject_too_long_to_be_a_key_is_counted_but_refused_as_a_subject_naming_the_field(billow: Billow) -> None:
    b = billow
    b.ok("POST", "/api/v1/features", {"key": "ai", "name": "AI", "meterSlug": "tokens"})
    b.usage(3, "2026-01-01T00:00:00Z", subject=WIDE)
    (row,) = b.ok("GET", "/api/v1/meters/tokens/query", query={"subject": WIDE})["data"]
    assert (row["subject"], row["value"]) == (WIDE, 3)
    b.ok("POST", "/api/v1/customers", {"key": "acme", "name": "Acme",
                                       "usageAttribution": {"subjectKeys": ["customer_1"]}})
    subjects, customers = b.ok("GET", "/api/v1/subjects"), b.ok("GET", "/api/v1/customers")

    _refused(b, "POST", "/api/v1/subjects", [{"key": WIDE}], "[0].key")
    _refused(b, "POST", "/api/v1/customers", {"key": "wide", "name": "Wide",
                                              "usageAttribution": {"subjectKeys": [WIDE]}},
             "usageAttribution.subjectKeys[0]")
    _refused(b, "PUT", "/api/v1/customers/acme", {"key": "acme", "name": "Acme",
                                                  "usageAttribution": {"subjectKeys": ["customer_1", WIDE]}},
             "usageAttribution.subjectKeys[1]")
    path = f"/api/v1/subjects/{quote(WIDE, safe='')}/entitlements"
    for method, tail, body in [("POST", "", BOOLEAN), ("POST", "", METERED), ("GET", "", None),
                               ("GET", "/ai/value", None), ("PUT", "/ai/override", BOOLEAN),
                               ("POST", "/ai/grants", {"amount": 1, "effectiveAt": "2026-01-01T00:00:00Z"})]:
        _refused(b, method, path + tail, body, "subjectIdOrKey")

    assert (b.ok("GET", "/api/v1/subjects"), b.ok("GET", "/api/v1/customers")) == (subjects, customers)
    assert b.ok("GET", "/api/v1/entitlements") == []
