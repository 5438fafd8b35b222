"""A deleted billing profile, as OpenMeter shows it: GET /api/v1/billing/profiles/{id} answers it with its deletedAt
(Billow answered 404), the list shows it with includeArchived=true only (Billow had no includeArchived: never), and a
second DELETE answers 204 again and changes nothing (Billow: 404). An edit of it is refused as OpenMeter refuses it,
ErrProfileAlreadyDeleted, a validation error: 400 (Billow answered 404 until 2026-12-07), also when the delete wins a
race with the edit. On SQLite and PostgreSQL meta stores."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from billow.services import billing_profiles
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
    status, problem = meta_billow.call("PUT", f"{PROFILES}/{other['id']}", {**PROFILE, "name": "back", "default": False})
    assert status == 400 and problem["validationErrors"] == [{"field": "id", "message": "profile already deleted"}]
    assert meta_billow.ok("GET", f"{PROFILES}/{other['id']}")["name"] == "EU"


def _deleted_first(b: Billow, monkeypatch: pytest.MonkeyPatch, writes: Callable[[dict[str, Any]], bool]) -> tuple[
        dict[str, Any], list[str]]:
    """A second profile, and a hook on the billing store: the first write of it that `writes` picks (after its read)
    finds another client's DELETE of the profile written just before it. (The profile, the ids raced.)"""
    b.ok("POST", PROFILES, PROFILE)
    other = b.ok("POST", PROFILES, {**PROFILE, "name": "EU", "default": False})
    store = type(b.c.billing_store())
    real_put = store.put_profile
    raced: list[str] = []

    def put_after_a_delete(self: Any, namespace: str, doc: dict[str, Any], **kw: Any) -> None:
        if not raced and writes(doc):
            raced.append(doc["id"])
            b.clock.set("2026-01-01T00:00:01Z")
            billing_profiles.delete_profile(namespace, doc["id"], store=self, now=b.clock.now())
        real_put(self, namespace, doc, **kw)

    monkeypatch.setattr(store, "put_profile", put_after_a_delete)
    return other, raced


def test_an_edit_that_loses_a_race_to_the_delete_is_refused_as_deleted_and_writes_nothing(
        meta_billow: Billow, monkeypatch: pytest.MonkeyPatch) -> None:
    b = meta_billow
    other, raced = _deleted_first(b, monkeypatch, lambda doc: doc.get("name") == "back")  # the edit's write
    status, problem = b.call("PUT", f"{PROFILES}/{other['id']}", {**PROFILE, "name": "back", "default": False})
    assert raced == [other["id"]]
    assert status == 400 and problem["validationErrors"] == [{"field": "id", "message": "profile already deleted"}]
    shown = b.ok("GET", f"{PROFILES}/{other['id']}")
    assert shown["name"] == "EU" and shown["deletedAt"] == "2026-01-01T00:00:01Z"


def test_a_delete_that_loses_a_race_to_another_delete_answers_204(meta_billow: Billow,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    b = meta_billow
    other, raced = _deleted_first(b, monkeypatch, lambda doc: bool(doc.get("deletedAt")))  # this delete's write
    assert b.call("DELETE", f"{PROFILES}/{other['id']}")[0] == 204
    assert raced == [other["id"]]
    assert b.ok("GET", f"{PROFILES}/{other['id']}")["deletedAt"] == "2026-01-01T00:00:01Z"  # the winner's, kept
