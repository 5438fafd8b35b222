"""A deleted billing profile, as OpenMeter shows it: GET /api/v1/billing/profiles/{id} answers it with its deletedAt
(Billow answered 404), the list shows it with includeArchived=true only (Billow had no includeArchived: never), and a
second DELETE answers 204 again and changes nothing (Billow: 404). An edit of it is still refused. On SQLite and
PostgreSQL meta stores."""

from __future__ import annotations

from typing import Any

from tests.entitlements.conftest import Billow
from tests.support.billing import PROFILE

PROFILES = "/api/v1/billing/profiles"


def _ids(b: Billow, query: dict[str, str] | None = None) -> list[str]:
    return sorted(p["id"] for p in b.ok("GET", PROFILES, query=query)["items"])


def _deleted(b: Billow) -> tuple[dict[str, Any], dict[str, Any]]:
    default = b.ok("POST", PROFILES, PROFILE)
    other = b.ok("POST", PROFILES, {**PROFILE, "name": "EU", "default": False})
    b.clock.set("2026-01-02T00:00:00Z")
    b.ok("DELETE", f"{PROFILES}/{other['id']}")
    return default, other


def test_a_deleted_profile_is_shown_by_id_with_its_deleted_at(meta_billow: Billow) -> None:
    _, other = _deleted(meta_billow)
    shown = meta_billow.ok("GET", f"{PROFILES}/{other['id']}")
    assert shown["id"] == other["id"] and shown["name"] == "EU"
    assert shown["deletedAt"] == "2026-01-02T00:00:00Z"


def test_the_list_shows_deleted_profiles_with_include_archived_only(meta_billow: Billow) -> None:
    default, other = _deleted(meta_billow)
    assert _ids(meta_billow) == [default["id"]]
    assert _ids(meta_billow, {"includeArchived": "false"}) == [default["id"]]
    listed = meta_billow.ok("GET", PROFILES, query={"includeArchived": "true"})["items"]
    assert sorted(p["id"] for p in listed) == sorted([default["id"], other["id"]])
    assert [p["deletedAt"] for p in listed if p["id"] == other["id"]] == ["2026-01-02T00:00:00Z"]


def test_include_archived_must_be_a_boolean(meta_billow: Billow) -> None:
    status, out = meta_billow.call("GET", PROFILES, query={"includeArchived": "yes"})
    assert status == 400 and "includeArchived" in str(out), (status, out)


def test_a_second_delete_answers_204_and_changes_nothing_and_an_edit_is_refused(meta_billow: Billow) -> None:
    _, other = _deleted(meta_billow)
    meta_billow.clock.set("2026-01-03T00:00:00Z")
    assert meta_billow.call("DELETE", f"{PROFILES}/{other['id']}")[0] == 204
    assert meta_billow.ok("GET", f"{PROFILES}/{other['id']}")["deletedAt"] == "2026-01-02T00:00:00Z"
    assert meta_billow.call("PUT", f"{PROFILES}/{other['id']}", {**PROFILE, "name": "back", "default": False})[0] == 404
    assert meta_billow.ok("GET", f"{PROFILES}/{other['id']}")["name"] == "EU"
