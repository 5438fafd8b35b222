"""The entitlement usage-period rules are pure domain rules (issue 19 item 3): billow.domain.entitlements holds the
period parsing, the reset schedule (period boundaries and manual resets, which move the anchor unless retainAnchor)
and the current period; billow.services.entitlements reads the resets through its store and calls them."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from billow.domain import entitlements as rules
from billow.errors import ValidationFailed
from billow.services import entitlements


def t(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


ENT: dict[str, Any] = {"id": "e1", "measureUsageFrom": "2026-01-01T00:00:00Z", "preserveOverageAtReset": False,
                       "usagePeriod": rules.parse_period({"interval": "MONTH"}, "usagePeriod", t("2026-01-01T00:00:30"))}


def test_a_usage_period_is_parsed_to_the_minute_with_its_calendar() -> None:
    assert ENT["usagePeriod"] == {"interval": "MONTH", "intervalISO": "P1M", "anchor": "2026-01-01T00:00:00Z",
                                  "timeZone": "UTC"}
    for raw, where in (({}, "usagePeriod.interval"), ({"interval": "MONTH", "timeZone": "Mars/Base"},
                                                       "usagePeriod.timeZone"), ("MONTH", "usagePeriod")):
        with pytest.raises(ValidationFailed) as exc:
            rules.parse_period(raw, "usagePeriod", t("2026-01-01T00:00:00"))
        assert exc.value.errors[0]["field"] == where


def test_manual_resets_move_the_anchor_unless_it_is_retained() -> None:
    moved = [{"at": t("2026-02-10T00:00:00"), "retainAnchor": False, "preserveOverage": True}]
    resets, period = rules.reset_schedule(ENT, moved, t("2026-03-15T00:00:00"))
    assert resets == [rules.Reset(t("2026-02-01T00:00:00"), False), rules.Reset(t("2026-02-10T00:00:00"), True),
                      rules.Reset(t("2026-03-10T00:00:00"), False)]
    assert period.containing(t("2026-03-15T00:00:00")) == (t("2026-03-10T00:00:00"), t("2026-04-10T00:00:00"))
    retained = [{"at": t("2026-03-12T00:00:00"), "retainAnchor": True}]
    resets, _ = rules.reset_schedule(ENT, retained, t("2026-03-15T00:00:00"))
    assert [r.at for r in resets] == [t("2026-02-01T00:00:00"), t("2026-03-01T00:00:00"), t("2026-03-12T00:00:00")]
    assert rules.period_at(ENT, retained, t("2026-03-15T00:00:00")) == (t("2026-03-12T00:00:00"),
                                                                        t("2026-04-01T00:00:00"))
    assert rules.period_at(ENT, [], t("2026-01-20T10:11:12")) == (t("2026-01-01T00:00:00"), t("2026-02-01T00:00:00"))


def test_the_service_reads_the_resets_and_applies_the_domain_rules() -> None:
    class Store:
        def list_resets(self, namespace: str, entitlement_id: str) -> list[dict[str, Any]]:
            assert (namespace, entitlement_id) == ("ns", "e1")
            return [{"at": t("2026-03-12T00:00:00"), "retainAnchor": True}]

    at = t("2026-03-15T00:00:00")
    assert entitlements.current_period(ENT, store=Store(), namespace="ns", at=at) == (  # type: ignore[arg-type]
        rules.period_at(ENT, Store().list_resets("ns", "e1"), at))
    assert entitlements.reset_schedule is rules.reset_schedule and entitlements.minute is rules.minute
    assert rules.add_duration(t("2026-01-31T00:00:00"), "MONTH", 1) == t("2026-02-28T00:00:00")


def test_grant_and_entitlement_fields_parse_in_the_domain() -> None:
    assert rules.amount("1.5", "amount") == Decimal("1.5") and rules.amount(0, "amount") == 0
    for value, positive in ((-1, False), (0, True), ("1e20", False), (True, False), ("0.0000000000000000001", False),
                            ("１", False)):
        with pytest.raises(ValidationFailed) as exc:
            rules.amount(value, "grants[0].amount", positive=positive)
        assert exc.value.errors[0]["field"] == "grants[0].amount", value
    effective = t("2026-01-31T00:00:00")
    assert rules.parse_expiration({"duration": "MONTH", "count": 1}, effective, v2=False) == (
        t("2026-02-28T00:00:00"), {"duration": "MONTH", "count": 1})
    assert rules.parse_expiration(None, effective, v2=True) == (None, None)  # v2: never expires
    for exp, where in ((None, "expiration"), ({"duration": "SECOND", "count": 1}, "expiration.duration"),
                       ({"duration": "DAY", "count": 0}, "expiration.count")):
        with pytest.raises(ValidationFailed) as exc:
            rules.parse_expiration(exp, effective, v2=False)
        assert exc.value.errors[0]["field"] == where
    now = t("2026-01-20T10:11:12")
    assert rules.measure_usage_from(None, ENT["usagePeriod"], now) == t("2026-01-01T00:00:00")
    assert rules.measure_usage_from("NOW", ENT["usagePeriod"], now) == t("2026-01-20T10:11:00")
    assert rules.measure_usage_from("2026-01-05T01:02:03Z", ENT["usagePeriod"], now) == t("2026-01-05T01:02:00")
    assert entitlements.amount is rules.amount  # the services parse with the domain's functions
