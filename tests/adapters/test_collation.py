"""Lists the meta store orders by a text key come out in the same order on SQLite and on a PostgreSQL database
whose collation is a language's (RDS creates en_US.UTF-8 databases; the test cluster's is C.UTF-8, byte order like
SQLite's): `a` before `B` there, `_` ignored, so an ORDER BY on the key listed the same rows in another order."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from billow.bootstrap import Settings, build, install
from billow.local.server import apigw_event
from functions.api.handler import lambda_handler as api
from tests.conftest import scratch_database

KEYS = ["b", "B", "a", "_c", "Z", "a-b", "ab", "ä", "a b", "10", "9"]


@pytest.fixture
def en_us_database() -> Iterator[str]:
    """A database of this test's own collated by ICU's en-US, as a language collation orders text (skipped on
    PostgreSQL before 15, or one built without ICU)."""
    with scratch_database("billow_icu_", "TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' "
                                         "LOCALE 'C.UTF-8'") as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres-en-US"])
def billow(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[None]:
    url = {} if request.param == "sqlite" else {"meta_store_url": request.getfixturevalue("en_us_database")}
    c = build(Settings.parse(dict(usage_store="memory", data_dir=str(tmp_path), **url)))
    install(c)
    yield
    install(None)
    c.close()


def call(method: str, path: str, body: Any = None) -> Any:
    out = api(apigw_event(method, path, {"content-type": "application/json"},
                          json.dumps(body).encode() if body is not None else b"", "127.0.0.1"), None)
    assert out["statusCode"] < 300, out["body"]
    return json.loads(out["body"])


def test_subjects_are_listed_by_key_in_code_point_order(billow: None) -> None:
    for key in KEYS:
        call("POST", "/api/v1/subjects", [{"key": key}])
    assert [s["key"] for s in call("GET", "/api/v1/subjects")] == sorted(KEYS)


def test_llm_price_overrides_are_listed_by_provider_and_model_in_code_point_order(billow: None) -> None:
    lower = sorted({k.lower() for k in KEYS})  # providers and models are stored lower-case
    for key in reversed(lower):
        call("POST", "/api/v1/llm/prices", {"provider": "p" + key, "model": "m" + key, "currency": "USD",
                                            "inputPerMillionTokens": "1", "outputPerMillionTokens": "1"})
    got = [(p["provider"], p["model"]) for p in call("GET", "/api/v1/llm/prices")]
    assert got == [("p" + k, "m" + k) for k in lower]
