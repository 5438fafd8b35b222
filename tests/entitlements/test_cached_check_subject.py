"""A cached entitlement check (billow serve's balance cache) reads nothing from the meta database: the subject's key
is remembered with the value until this process writes a subject or a customer (issue 17: under 64 clients on
uvicorn, the SQLite SELECT of `subjects.subject_key` was most of a cached check's time, ahead of the cache)."""

from __future__ import annotations

from typing import Any

from tests.entitlements.conftest import Billow


def _entitled(b: Billow) -> None:
    b.ok("POST", "/api/v1/features", {"key": "ai_tokens", "name": "AI tokens", "meterSlug": "tokens"})
    b.ok("POST", "/api/v1/subjects/customer_1/entitlements", {
        "type": "metered", "featureKey": "ai_tokens", "issueAfterReset": 100,
        "usagePeriod": {"interval": "MONTH", "anchor": "2026-01-01T00:00:00Z"}})


def test_a_cached_check_looks_up_no_subject(billow: Billow, monkeypatch: Any) -> None:
    b = billow
    assert b.c.balance_cache is not None  # billow serve's in-process cache is what this is about
    _entitled(b)
    first = b.value("customer_1", "ai_tokens")
    lookups: list[Any] = []
    real = b.c.meta.get_subject
    monkeypatch.setattr(b.c.meta, "get_subject", lambda *a, **k: lookups.append(a) or real(*a, **k))
    assert [b.value("customer_1", "ai_tokens") for _ in range(3)] == [first] * 3
    assert lookups == []


def test_a_remembered_subject_follows_subject_writes(billow: Billow) -> None:
    b = billow
    _entitled(b)
    b.value("customer_1", "ai_tokens")
    sid = b.ok("GET", "/api/v1/subjects/customer_1")["id"]
    b.value(sid, "ai_tokens")  # by id, remembered too
    b.ok("DELETE", "/api/v1/subjects/customer_1")
    assert b.call("GET", "/api/v1/subjects/customer_1/entitlements/ai_tokens/value")[0] == 404
    assert b.call("GET", f"/api/v1/subjects/{sid}/entitlements/ai_tokens/value")[0] == 404
    b.ok("POST", "/api/v1/subjects", [{"key": "customer_1"}])  # back: the entitlement is the key's
    assert b.value("customer_1", "ai_tokens")["balance"] == 100
