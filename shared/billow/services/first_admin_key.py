"""The first admin key of a deployment, minted at deploy (functions/migrate) into a Secrets Manager secret the stack
makes, so nobody needs a host in the VPC to reach the database for it (issue 18 item 6).

Only when the namespace has no admin key at all (a revoked one counts: the operator revoked it on purpose). The
token goes to the secret first and the key's hash to the database second: a run that stops between the two
leaves the token in the secret, and the next run stores that same key, so a token is never lost or duplicated."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from billow import jsonx
from billow.services.apikeys import TOKEN_RE, KeyStore, new_secret
from billow.timeutil import format_rfc3339

NAME = "first admin key (deploy)"


def _put_key(keys: KeyStore, namespace: str, token: str, key_id: str, now: datetime) -> None:
    m = TOKEN_RE.match(token)
    if m is None or m.group(1) != key_id:
        raise ValueError("the admin key secret holds a token that is not an API key: empty its token to mint a new one")
    doc = {"id": key_id, "namespace": namespace, "name": NAME, "scopes": ["admin"], "createdAt": format_rfc3339(now),
           "prefix": token[:34]}
    keys.put_key(doc, hashlib.sha256(m.group(2).encode()).hexdigest())  # as apikeys.create_key stores it


def ensure_first_admin_key(namespace: str, secret_arn: str, *, keys: KeyStore, secrets: Any, now: datetime) -> str:
    """`secrets`: a boto3 Secrets Manager client. Returns "created", "exists" or "skipped: ..." for the deploy log."""
    value = jsonx.loads(secrets.get_secret_value(SecretId=secret_arn)["SecretString"])
    if not isinstance(value, dict):
        raise ValueError(f"secret {secret_arn} must hold a JSON object")
    token, key_id = str(value.get("token") or ""), str(value.get("keyId") or "")
    if token and value.get("namespace") == namespace:
        found = keys.get_key(key_id)
        if found is not None:
            if found[0].get("revokedAt"):  # not brought back, nor replaced: the operator revoked it on purpose
                return "skipped: the key in the secret was revoked (make another with billow keys create)"
            return "exists"
        _put_key(keys, namespace, token, key_id, now)  # the previous run stopped after the secret
        return "created"
    if any("admin" in k.get("scopes", ()) for k in keys.list_keys(namespace)):
        return "skipped: the namespace already has an admin key (billow keys list)"
    key_id, token, _ = new_secret("bk")
    secrets.put_secret_value(SecretId=secret_arn, SecretString=jsonx.dumps(
        {**value, "token": token, "keyId": key_id, "namespace": namespace}))
    _put_key(keys, namespace, token, key_id, now)
    return "created"
