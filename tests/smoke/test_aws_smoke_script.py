"""scripts/aws_smoke.py, which .github/workflows/aws-smoke.yml runs against a deployed stack: the smoke environment
from the stack outputs, and the fallback admin key minted through the API function, checked here against the real
handler (the event is what API Gateway hands it after the authorizer; the key it returns authenticates as admin)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from billow.bootstrap import Settings, build, install
from billow.services.apikeys import authenticate

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("aws_smoke", ROOT / "scripts" / "aws_smoke.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["aws_smoke"] = module
    spec.loader.exec_module(module)
    return module


def test_env_from_stack_outputs(script: ModuleType, tmp_path: Path) -> None:
    outputs = {"ApiUrl": "https://abc.execute-api.eu-west-1.amazonaws.com/", "AlarmTopicArn": "arn:aws:sns:x:1:t",
               "ClickHouseSecretArn": "arn:aws:secretsmanager:eu-west-1:1:secret:ch"}
    path = tmp_path / "out.json"
    path.write_text(json.dumps({"Billow-ci": outputs}))
    env = script.smoke_env(script.stack_outputs(str(path), "Billow-ci"))
    assert env == {"BILLOW_SMOKE_URL": "https://abc.execute-api.eu-west-1.amazonaws.com",
                   "ALARM_TOPIC_ARN": "arn:aws:sns:x:1:t"}  # no admin-key secret: the key is minted instead
    secret = "arn:aws:secretsmanager:eu-west-1:1:secret:billow-ci-admin-key"
    assert script.smoke_env({**outputs, "AdminKeySecretArn": secret})["ADMIN_KEY_SECRET_ARN"] == secret


def test_the_fallback_mints_an_admin_key_through_the_api_function(script: ModuleType, tmp_path: Path) -> None:
    c = build(Settings.parse({"usage_store": "memory", "data_dir": str(tmp_path), "auth": "keys"}))
    install(c)
    try:
        from functions.api.handler import lambda_handler as api

        token = script.token_from(api(script.mint_event("acme", "aws-smoke test"), None))
        principal = authenticate(f"Bearer {token}", store=c.keys)
        assert (principal.namespace, principal.scopes) == ("acme", frozenset({"admin"}))
        with pytest.raises(SystemExit, match="minting the admin key failed"):
            bad = script.mint_event("acme", "x")
            bad["requestContext"]["authorizer"]["lambda"]["scopes"] = "read"
            script.token_from(api(bad, None))
    finally:
        install(None)
        c.close()
