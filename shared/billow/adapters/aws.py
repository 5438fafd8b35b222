"""AWS adapters (boto3): the SQS dead-letter destination and secrets from Secrets Manager.
boto3 honours AWS_ENDPOINT_URL, which is how the tests point these at LocalStack."""

from __future__ import annotations

import threading
from typing import Any

from billow import jsonx

SQS_MAX_BODY = 256 * 1024


class SqsDeadLetters:
    """Records the usage sink cannot process, one SQS message each, with the reason in the body and as a
    message attribute. A failed send raises, so the sink batch is retried instead of losing the record."""

    def __init__(self, queue_url: str, client: Any = None) -> None:
        import boto3

        self.queue_url = queue_url
        self._sqs = client or boto3.client("sqs")
        self.count = 0
        self._lock = threading.Lock()

    def __call__(self, items: list[dict[str, Any]]) -> None:
        for start in range(0, len(items), 10):
            chunk = items[start:start + 10]
            entries = []
            for i, item in enumerate(chunk):
                body = jsonx.dumps(item)  # ASCII only: control bytes of a poison record arrive escaped
                if len(body) > SQS_MAX_BODY:
                    body = jsonx.dumps({**item, "value": item.get("value", "")[:4096], "truncated": True})
                entries.append({
                    "Id": str(i), "MessageBody": body,
                    "MessageAttributes": {
                        "reason": {"DataType": "String", "StringValue": str(item.get("reason", ""))[:256] or "-"},
                        "where": {"DataType": "String", "StringValue": str(item.get("where", "")) or "-"},
                    },
                })
            resp = self._sqs.send_message_batch(QueueUrl=self.queue_url, Entries=entries)
            failed = resp.get("Failed") or []
            if failed:
                raise ConnectionError(f"SQS refused {len(failed)} dead letters: {failed[0].get('Message')}")
            with self._lock:
                self.count += len(chunk)


def secret_json(arn: str, client: Any = None) -> dict[str, Any]:
    """A Secrets Manager secret whose SecretString is a JSON object (RDS- and user-made secrets alike)."""
    import boto3

    sm = client or boto3.client("secretsmanager")
    value = sm.get_secret_value(SecretId=arn)
    data = jsonx.loads(value["SecretString"])
    if not isinstance(data, dict):
        raise ValueError(f"secret {arn} must hold a JSON object")
    return data
