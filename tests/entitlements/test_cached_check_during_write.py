"""A check computed while the sink stores usage must not count that usage twice (billow serve's balance cache).
Found from outside by tests/e2e/test_balance_cache_outside.py (a burst of usage sent while the same entitlement was
checked: the served balance counted one event twice, usage 16.625 where the store holds 16.5).

The race: the sink writes the values, and only then tells the cache (`usage_added`). A check that misses the cache
in between reads the store, which already holds the values, and keeps its value: the versions it read before
computing have not moved yet. Then the sink tells the cache, which adds the same values to the kept value. Now the
sink tells the cache before it writes too (`usage_writing`), and no value of those subjects is kept until the write
is over."""

from __future__ import annotations

from typing import Any

import pytest

from tests.entitlements.conftest import Billow


def test_usage_stored_while_a_check_computes_counts_once(billow: Billow, monkeypatch: pytest.MonkeyPatch) -> None:
    b = billow
    assert b.c.balance_cache is not None
    b.ok("POST", "/api/v1/features", {"key": "ai", "name": "AI", "meterSlug": "tokens"})
    b.ok("POST", "/api/v1/subjects/customer_1/entitlements", {
        "type": "metered", "featureKey": "ai", "issueAfterReset": 100,
        "usagePeriod": {"interval": "MONTH", "anchor": "2026-01-01T00:00:00Z"}})
    b.clock.set("2026-01-04T10:00:00Z")
    store, write = b.c.usage, b.c.usage.write
    during: list[dict[str, Any]] = []

    def write_then_check(*args: Any, **kwargs: Any) -> Any:
        out = write(*args, **kwargs)
        if not during:  # the sink has written, and not yet told the cache: a check comes in now
            during.append(b.value("customer_1", "ai"))
        return out

    monkeypatch.setattr(store, "write", write_then_check)
    b.usage("5", "2026-01-03T10:00:00Z")
    monkeypatch.setattr(store, "write", write)
    assert during and during[0]["usage"] == 5  # the check in between read the stored 5
    after = b.value("customer_1", "ai")
    fresh = b.value("customer_1", "ai", at="2026-01-04T10:00:00Z")
    assert (fresh["usage"], fresh["balance"]) == (5, 95)
    assert after == fresh  # before the fix: usage 10, balance 90 (the 5 counted twice)
