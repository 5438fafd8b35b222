"""The first admin key without a host in the VPC (issue 18 item 6): the migrate function mints it, if the namespace
has none, into the Secrets Manager secret the stack makes; a re-run changes nothing; a run that stopped between the
secret and the database finishes the same key. Against LocalStack Secrets Manager and SQLite/PostgreSQL."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from billow.adapters.sql import SqlMetaStore
from billow.adapters.sql_keys import SqlKeyStore
from billow.services.apikeys import authenticate, create_key, revoke_key
from billow.timeutil import utcnow

TEMPLATE = {"token": "", "keyId": "", "namespace": ""}  # the stack's secret before the first run


@pytest.fixture
def sm(monkeypatch: pytest.MonkeyPatch, aws_endpoint: str) -> Any:
    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL", aws_endpoint)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return boto3.client("secretsmanager", endpoint_url=aws_endpoint, region_name="us-east-1")


def new_secret(sm: Any) -> str:
    value = {**TEMPLATE, "password": "generated-and-unused"}
    return str(sm.create_secret(Name=f"billow/test/admin-{uuid.uuid4().hex[:10]}", SecretString=json.dumps(value))["ARN"])


def stored(sm: Any, arn: str) -> dict[str, Any]:
    return dict(json.loads(sm.get_secret_value(SecretId=arn)["SecretString"]))


def test_mints_one_admin_key_into_the_secret_once(sm: Any, meta_store: SqlMetaStore) -> None:
    from billow.services.first_admin_key import ensure_first_admin_key

    keys = SqlKeyStore(meta_store.engine)
    ns, arn = "a" + uuid.uuid4().hex[:10], new_secret(sm)
    assert ensure_first_admin_key(ns, arn, keys=keys, secrets=sm, now=utcnow()) == "created"
    value = stored(sm, arn)
    principal = authenticate(f"Bearer {value['token']}", store=keys)  # the token in the secret works
    assert principal.namespace == ns and principal.scopes == {"admin"} and principal.key_id == value["keyId"]
    assert value["namespace"] == ns and value["password"] == "generated-and-unused"  # the other keys stay
    # the next deploy: nothing new, the same token
    assert ensure_first_admin_key(ns, arn, keys=keys, secrets=sm, now=utcnow()) == "exists"
    assert stored(sm, arn)["token"] == value["token"]
    assert [k["id"] for k in keys.list_keys(ns)] == [value["keyId"]]


def test_a_namespace_that_has_an_admin_key_gets_none(sm: Any, meta_store: SqlMetaStore) -> None:
    from billow.services.first_admin_key import ensure_first_admin_key

    keys = SqlKeyStore(meta_store.engine)
    ns, arn = "b" + uuid.uuid4().hex[:10], new_secret(sm)
    create_key(ns, "ops", ["admin"], store=keys, now=utcnow())  # made with `billow keys create`
    assert ensure_first_admin_key(ns, arn, keys=keys, secrets=sm, now=utcnow()).startswith("skipped")
    assert stored(sm, arn)["token"] == "" and len(keys.list_keys(ns)) == 1


def test_a_run_stopped_after_the_secret_finishes_the_same_key(sm: Any, meta_store: SqlMetaStore) -> None:
    from billow.services.first_admin_key import ensure_first_admin_key

    keys = SqlKeyStore(meta_store.engine)
    ns, arn = "c" + uuid.uuid4().hex[:10], new_secret(sm)

    class Down(SqlKeyStore):
        def put_key(self, doc: dict[str, Any], key_hash: str) -> None:
            raise ConnectionError("database gone")

    with pytest.raises(ConnectionError):
        ensure_first_admin_key(ns, arn, keys=Down(meta_store.engine), secrets=sm, now=utcnow())
    token = stored(sm, arn)["token"]
    assert token and keys.list_keys(ns) == []  # the secret first: a token is never lost
    assert ensure_first_admin_key(ns, arn, keys=keys, secrets=sm, now=utcnow()) == "created"
    assert stored(sm, arn)["token"] == token and authenticate(f"Bearer {token}", store=keys).namespace == ns
    # a revoked first key is not brought back: the operator revoked it on purpose
    revoke_key(stored(sm, arn)["keyId"], store=keys, now=utcnow())
    assert ensure_first_admin_key(ns, arn, keys=keys, secrets=sm, now=utcnow()).startswith("skipped")


def test_the_migrate_function_mints_it(sm: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from functions.migrate.handler import lambda_handler

    for k in list(os.environ):
        if k.startswith("BILLOW_") and not k.startswith("BILLOW_TEST_"):
            monkeypatch.delenv(k)
    ns, arn = "d" + uuid.uuid4().hex[:10], new_secret(sm)
    for key, value in {"BILLOW_NAMESPACE": ns, "BILLOW_DATA_DIR": str(tmp_path), "BILLOW_USAGE_STORE": "memory",
                       "BILLOW_ADMIN_KEY_SECRET_ARN": arn}.items():
        monkeypatch.setenv(key, value)
    assert lambda_handler({}, None)["adminKey"] == "created"
    assert lambda_handler({}, None)["adminKey"] == "exists"
    keys = SqlKeyStore(SqlMetaStore(f"sqlite:///{tmp_path / 'billow.db'}").engine)
    assert authenticate(f"Bearer {stored(sm, arn)['token']}", store=keys).scopes == {"admin"}
