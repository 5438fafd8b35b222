"""Where a namespace gets its sandbox app and default billing profile (issue 16: OpenMeter makes them when a
namespace is created): `billow keys create` for a namespace, the AWS migrate function at every deploy (once)."""

from __future__ import annotations

import os
from typing import Any

import pytest
import sqlalchemy as sa

from billow.adapters.sql_apps import SqlAppStore
from billow.adapters.sql_billing import SqlBillingStore


def provisioned(url: str, namespace: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    e = sa.create_engine(url)
    try:
        return SqlAppStore(e).list_apps(namespace), SqlBillingStore(e).list_profiles(namespace)
    finally:
        e.dispose()


def test_keys_create_provisions_the_keys_namespace(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from billow.cli import main

    for _ in range(2):
        assert main(["keys", "--data-dir", str(tmp_path), "create", "--name", "ci", "--namespace", "tenant_x"]) == 0
    assert "created API key" in capsys.readouterr().out
    apps, profiles = provisioned(f"sqlite:///{tmp_path / 'billow.db'}", "tenant_x")
    assert [a["type"] for a in apps] == ["sandbox"] and len(profiles) == 1 and profiles[0]["default"]
    assert provisioned(f"sqlite:///{tmp_path / 'billow.db'}", "default") == ([], [])


def test_the_migrate_function_provisions_the_stack_namespace_once(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from functions.migrate.handler import lambda_handler

    url = f"sqlite:///{tmp_path / 'meta.db'}"
    for k in [k for k in os.environ if k.startswith("BILLOW_") and not k.startswith("BILLOW_TEST_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "billow-test-migrate")
    monkeypatch.setenv("BILLOW_META_STORE_URL", url)
    monkeypatch.setenv("BILLOW_USAGE_STORE", "memory")
    monkeypatch.setenv("BILLOW_NAMESPACE", "prod_ns")
    first = lambda_handler({"RequestType": "Create"}, None)
    assert first["apps"].startswith("default billing profile ")
    assert lambda_handler({"RequestType": "Update"}, None)["apps"] == "provisioned before"
    apps, profiles = provisioned(url, "prod_ns")
    assert [a["type"] for a in apps] == ["sandbox"] and [p["id"] for p in profiles] == [first["apps"].split()[3]]
