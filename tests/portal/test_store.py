"""The portal-token store on SQLite and PostgreSQL (the meta store's database, as `Container.store` opens it)."""

from __future__ import annotations

from typing import Any

from billow.adapters.sql_portal import SqlPortalStore
from billow.ids import new_id
from tests.conftest import t


def test_portal_token_store_contract(meta_store: Any, namespace: str) -> None:
    store = SqlPortalStore(meta_store.engine)
    store.migrate()
    store.migrate()  # idempotent
    other = namespace + "_x"
    docs = []
    for i, (ns, subject) in enumerate(((namespace, "a"), (namespace, "a"), (namespace, "b"), (other, "a"))):
        doc = {"id": new_id(), "subject": subject, "createdAt": f"2026-01-0{i + 1}T00:00:00Z",
               "expiresAt": "2026-02-01T00:00:00Z", "allowedMeterSlugs": ["m"]}
        store.put_token(ns, doc, f"{i:064d}")
        docs.append(doc)
    assert store.get_token(docs[0]["id"]) == (namespace, docs[0], f"{0:064d}")
    assert store.get_token(new_id()) is None
    assert [d["id"] for d in store.list_tokens(namespace, 10)] == [d["id"] for d in docs[2::-1]]
    assert [d["id"] for d in store.list_tokens(namespace, 1)] == [docs[2]["id"]]
    assert store.exists(namespace, docs[0]["id"]) and not store.exists(other, docs[0]["id"])

    at = t("2026-01-15T10:30:00.123Z")
    assert store.invalidate(other, token_id=docs[0]["id"], subject=None, at=at) == 0  # not that namespace's
    assert store.invalidate(namespace, token_id=None, subject="a", at=at) == 2
    assert store.invalidate(namespace, token_id=docs[0]["id"], subject=None, at=at) == 0  # already
    assert store.invalidate(namespace, token_id=None, subject=None, at=at) == 0
    found = store.get_token(docs[1]["id"])
    assert found is not None and found[1]["invalidatedAt"] == "2026-01-15T10:30:00.123Z"
    assert "invalidatedAt" not in store.list_tokens(namespace, 10)[0]  # subject b
    assert "invalidatedAt" not in store.get_token(docs[3]["id"])[1]  # type: ignore[index]  # other namespace
