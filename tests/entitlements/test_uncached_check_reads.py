"""Issue 17 item 5: the uncached entitlement check (Lambda's design: no balance cache, every check reads the balance
snapshot plus the usage since) makes one usage read, of only the segment sums it needs, and no meta-database
statement twice. What a check reads is counted at the engines: the SQL statements the meta database runs and the
statements the usage store sends to chdb. A feature's meter and filters never change (a feature is only ever
archived), so a container reads them once."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from tests.entitlements.conftest import Billow


def _setup(b: Billow) -> None:
    b.ok("POST", "/api/v1/features", {"key": "ai_tokens", "name": "AI tokens", "meterSlug": "tokens"})
    path = "/api/v1/subjects/customer_1/entitlements"
    b.ok("POST", path, {"type": "metered", "featureKey": "ai_tokens", "issueAfterReset": 100,
                        "usagePeriod": {"interval": "MONTH", "anchor": "2026-01-01T00:00:00Z"}})
    b.ok("POST", path + "/ai_tokens/grants", {"amount": 50, "priority": 1, "effectiveAt": "2026-01-03T00:00:00Z",
                                              "expiration": {"duration": "DAY", "count": 10}})
    for tokens, at in (("2.5", "2026-01-01T10:00:00Z"), ("1", "2026-01-02T23:59:59.999Z"), ("4", "2026-01-03T00:00:00Z"),
                       ("0.25", "2026-01-20T07:30:10Z"), ("8", "2026-01-20T07:31:00Z"), ("16", "2026-01-20T08:00:00Z")):
        b.usage(tokens, at)
    b.usage("32", "2026-01-20T07:00:00Z", subject="customer_2")
    b.clock.set("2026-01-20T07:31:00Z")  # mid-hour, as a check usually is: 07:31 itself is not counted yet


def test_an_uncached_check_reads_each_meta_row_once_and_usage_once(billow: Billow, monkeypatch: Any) -> None:
    b = billow
    _setup(b)
    b.c.balance_cache = None  # Lambda
    first = b.value("customer_1", "ai_tokens")  # a container's first check also reads the feature (never changes)
    statements: list[str] = []
    engine = b.c.meta.engine

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    usage_reads: list[Any] = []
    store = b.c.usage
    for name in ("aggregate", "bounded_usage"):
        real = getattr(store, name)
        monkeypatch.setattr(store, name, lambda *a, _real=real, _name=name, **k: usage_reads.append(_name) or _real(*a, **k))
    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        got = b.value("customer_1", "ai_tokens")
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
    # 3.5 burnt before the grant of 50, 4 of it (it expires first) then lost at its expiry, 0.25 since: exact.
    assert got == {"hasAccess": True, "balance": 96.25, "usage": 7.75, "overage": 0,
                   "totalAvailableGrantAmount": 104}
    assert usage_reads == ["bounded_usage"]
    assert got == first
    # subject, its customer's other subjects, entitlement, meter, and its resets, snapshot and grants at once
    # (SqlEntitlementStore.ledger_rows: one statement where they were three).
    assert len(statements) == 5, statements


def test_a_check_parses_a_grant_once_until_it_changes(billow: Billow, monkeypatch: Any) -> None:
    """The grants' times are parsed once per process (the engine's grants are immutable), and a changed grant (voided)
    is parsed again: the value after the void is the one a fresh process computes."""
    from billow.services import balances

    b = billow
    _setup(b)
    b.c.balance_cache = None
    grant = b.ok("POST", "/api/v1/subjects/customer_1/entitlements/ai_tokens/grants", {
        "amount": 20, "priority": 1, "effectiveAt": "2026-01-20T07:00:00Z", "expiration": {"duration": "DAY", "count": 30}})
    with_grant = b.value("customer_1", "ai_tokens")
    parsed: list[str] = []
    real = balances.parse_rfc3339
    monkeypatch.setattr(balances, "parse_rfc3339", lambda s, field: parsed.append(field) or real(s, field))
    assert b.value("customer_1", "ai_tokens") == with_grant
    assert not {"effectiveAt", "expiresAt", "createdAt"} & set(parsed), parsed
    b.ok("DELETE", f"/api/v1/grants/{grant['id']}")
    voided = b.value("customer_1", "ai_tokens")
    assert "voidedAt" in parsed and voided != with_grant
    balances._PARSED_GRANTS.clear()
    assert b.value("customer_1", "ai_tokens") == voided
