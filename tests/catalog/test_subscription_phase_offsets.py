"""Issue 16: a subscription's phases start at the subscription's start plus their ISO 8601 offset (OpenMeter's
`startAfter`, the sum of the earlier phases' durations), and edits move the later phases by adding ISO durations to
those offsets (OpenMeter's subscription/patch: StartAfter.Add / Subtract), not by a fixed elapsed time: around
months of different lengths the two differ by days. A subscription from January 31st shows it."""

from __future__ import annotations

from typing import Any

from tests.catalog.conftest import Billow
from tests.support.catalog import published, setup


def _phases(b: Billow, sub_id: str) -> list[tuple[str, str, str | None]]:
    return [(p["key"], p["activeFrom"], p["activeTo"]) for p in b.ok("GET", f"/api/v1/subscriptions/{sub_id}")["phases"]]


def _subscribed(b: Billow) -> dict[str, Any]:
    card = [{"type": "flat_fee", "key": "base", "name": "Base fee", "billingCadence": "P1M",
             "price": {"type": "flat", "amount": "1", "paymentTerm": "in_advance"}}]
    published(b, {"key": "phased", "name": "Phased", "currency": "USD", "billingCadence": "P1M", "phases": [
        {"key": "trial", "name": "Trial", "duration": "P1M", "rateCards": card},
        {"key": "intro", "name": "Intro", "duration": "P1M", "rateCards": card},
        {"key": "default", "name": "Default", "rateCards": card}]})
    b.clock.set("2026-01-31T00:00:00Z")
    return b.ok("POST", "/api/v1/subscriptions", {"plan": {"key": "phased"}, "customerKey": "acme"})  # type: ignore[no-any-return]


def test_phases_start_at_their_iso_offsets_and_edits_add_iso_durations(billow: Billow) -> None:
    b = billow
    setup(b)
    sub = _subscribed(b)
    path = f"/api/v1/subscriptions/{sub['id']}"
    # intro starts at +P1M (Feb 28th), default at +P2M (March 31st, not Feb 28th + 1 month = March 28th).
    assert _phases(b, sub["id"]) == [("trial", "2026-01-31T00:00:00Z", "2026-02-28T00:00:00Z"),
                                     ("intro", "2026-02-28T00:00:00Z", "2026-03-31T00:00:00Z"),
                                     ("default", "2026-03-31T00:00:00Z", None)]
    b.clock.set("2026-02-01T00:00:00Z")
    # Stretching the trial by P1M adds P1M to the later offsets: intro at +P2M, default at +P3M (April 30th).
    b.ok("PATCH", path, {"customizations": [{"op": "stretch_phase", "phaseKey": "trial", "extendBy": "P1M"}]})
    assert _phases(b, sub["id"]) == [("trial", "2026-01-31T00:00:00Z", "2026-03-31T00:00:00Z"),
                                     ("intro", "2026-03-31T00:00:00Z", "2026-04-30T00:00:00Z"),
                                     ("default", "2026-04-30T00:00:00Z", None)]
    # Removing intro (shift next) takes its offset difference (P3M - P2M = P1M) off the later offsets: +P2M.
    b.ok("PATCH", path, {"customizations": [{"op": "remove_phase", "phaseKey": "intro", "shift": "next"}]})
    assert _phases(b, sub["id"]) == [("trial", "2026-01-31T00:00:00Z", "2026-03-31T00:00:00Z"),
                                     ("default", "2026-03-31T00:00:00Z", None)]
    # A phase at +P1M for P1M: the next one starts at +P1M + P1M = +P2M (March 31st, not Feb 28th + 1 month).
    b.ok("PATCH", path, {"customizations": [
        {"op": "add_phase", "phase": {"key": "promo", "name": "Promo", "startAfter": "P1M", "duration": "P1M"}}]})
    assert _phases(b, sub["id"]) == [("trial", "2026-01-31T00:00:00Z", "2026-02-28T00:00:00Z"),
                                     ("promo", "2026-02-28T00:00:00Z", "2026-03-31T00:00:00Z"),
                                     ("default", "2026-03-31T00:00:00Z", None)]



def test_a_stretch_too_far_is_a_400_naming_extend_by(billow: Billow) -> None:
    b = billow
    setup(b)
    sub = _subscribed(b)
    path = f"/api/v1/subscriptions/{sub['id']}"
    b.clock.set("2026-02-01T00:00:00Z")
    before = _phases(b, sub["id"])
    for far in ("P7980Y", "P9999Y"):
        status, out = b.call("PATCH", path, {"customizations": [
            {"op": "stretch_phase", "phaseKey": "trial", "extendBy": far}]})
        assert status == 400 and "customizations[0].extendBy" in str(out), (far, status, out)
    assert _phases(b, sub["id"]) == before
