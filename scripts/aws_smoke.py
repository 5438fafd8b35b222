"""Helpers for .github/workflows/aws-smoke.yml (deploy stage=ci, smoke it, force an alarm, destroy).

  python scripts/aws_smoke.py env cdk-outputs.json Billow-ci    KEY=VALUE lines for $GITHUB_ENV from the stack outputs
  python scripts/aws_smoke.py admin-key cdk-outputs.json Billow-ci --function billow-ci-api --namespace default
                                                              prints an admin API key for the namespace

The admin key comes from the stack's first-admin-key secret when the stack has one (an output whose name contains
"AdminKey" and holds a Secrets Manager ARN). Otherwise it is minted through the API function itself: invoked directly
(lambda:InvokeFunction, so IAM decides who may), with the request context API Gateway's authorizer would have given
an admin key of the namespace; `billow keys create` cannot reach Aurora from outside the VPC."""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
import uuid
from typing import Any


def stack_outputs(path: str, stack: str) -> dict[str, str]:
    with open(path) as fh:
        return {str(k): str(v) for k, v in json.load(fh)[stack].items()}


def smoke_env(outputs: dict[str, str]) -> dict[str, str]:
    env = {"BILLOW_SMOKE_URL": outputs["ApiUrl"].rstrip("/"), "ALARM_TOPIC_ARN": outputs["AlarmTopicArn"]}
    if secret := admin_key_secret(outputs):
        env["ADMIN_KEY_SECRET_ARN"] = secret
    return env


def admin_key_secret(outputs: dict[str, str]) -> str | None:
    found = [v for k, v in sorted(outputs.items()) if "AdminKey" in k and v.startswith("arn:") and ":secretsmanager:" in v]
    return found[0] if found else None


def mint_event(namespace: str, name: str) -> dict[str, Any]:
    """An API Gateway HTTP API (payload 2.0) request for POST /api/v1/admin/keys as the authorizer passes it on."""
    body = json.dumps({"name": name, "scopes": ["admin"]})
    return {
        "version": "2.0", "routeKey": "POST /api/v1/admin/keys", "rawPath": "/api/v1/admin/keys", "rawQueryString": "",
        "headers": {"content-type": "application/json", "host": "aws-smoke"},
        "requestContext": {
            "accountId": "aws-smoke", "apiId": "aws-smoke", "domainName": "aws-smoke", "stage": "$default",
            "requestId": str(uuid.uuid4()), "routeKey": "POST /api/v1/admin/keys", "time": "", "timeEpoch": int(time.time() * 1000),
            "http": {"method": "POST", "path": "/api/v1/admin/keys", "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1",
                     "userAgent": "aws-smoke"},
            "authorizer": {"lambda": {"keyId": "aws-smoke", "namespace": namespace, "scopes": "admin"}}},
        "body": body, "isBase64Encoded": False}


def token_from(response: dict[str, Any]) -> str:
    if response.get("statusCode") != 201:
        raise SystemExit(f"aws-smoke: minting the admin key failed: {json.dumps(response)[:2000]}")
    body = response["body"]
    if response.get("isBase64Encoded"):
        body = base64.b64decode(body).decode()
    return str(json.loads(body)["token"])


def admin_key(outputs: dict[str, str], function: str, namespace: str) -> str:
    import boto3

    if secret := admin_key_secret(outputs):
        value = boto3.client("secretsmanager").get_secret_value(SecretId=secret)["SecretString"]
        try:
            return str(json.loads(value)["token"])
        except (ValueError, KeyError, TypeError):
            return value.strip()
    got = boto3.client("lambda").invoke(FunctionName=function, Payload=json.dumps(mint_event(
        namespace, f"aws-smoke {uuid.uuid4().hex[:8]}")).encode())
    payload = json.loads(got["Payload"].read())
    if "FunctionError" in got:
        raise SystemExit(f"aws-smoke: {function} failed: {json.dumps(payload)[:2000]}")
    return token_from(payload)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="scripts/aws_smoke.py")
    sub = ap.add_subparsers(dest="cmd", required=True)
    env = sub.add_parser("env")
    key = sub.add_parser("admin-key")
    for p in (env, key):
        p.add_argument("outputs_file")
        p.add_argument("stack")
    key.add_argument("--function", required=True)
    key.add_argument("--namespace", default="default")
    args = ap.parse_args(argv)
    outputs = stack_outputs(args.outputs_file, args.stack)
    if args.cmd == "env":
        for k, v in smoke_env(outputs).items():
            print(f"{k}={v}")
    else:
        sys.stdout.write(admin_key(outputs, args.function, args.namespace) + "\n")


if __name__ == "__main__":
    main()
