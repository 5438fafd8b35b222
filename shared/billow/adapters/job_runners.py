"""Job runners (ports.JobRunner): who runs a job the API accepted (a backtest).

* `ThreadJobRunner`: a daemon thread of this process (`billow serve`, which keeps running after the response).
* `SqsJobRunner`: one message on the SQS job queue (AWS: the billing_run function's queue, set by the CDK stack as
  BILLOW_JOB_QUEUE_URL), `{"job": <kind>, "namespace": ..., "id": ...}`; the queue's consumer runs it. A Lambda
  function is frozen once its response is sent, so a thread started there would never finish.

boto3 honours AWS_ENDPOINT_URL, which is how the tests point the queue runner at LocalStack."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from billow import jsonx


class ThreadJobRunner:
    """Runs `work(kind, namespace, id)` in a daemon thread per job."""

    def __init__(self, work: Callable[[str, str, str], None]) -> None:
        self._work = work
        self._threads: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()

    def submit(self, kind: str, namespace: str, id_: str) -> None:
        t = threading.Thread(target=self._work, args=(kind, namespace, id_), name=f"{kind}-{id_}", daemon=True)
        with self._lock:
            self._threads = {k: v for k, v in self._threads.items() if v.is_alive()}
            self._threads[id_] = t
        t.start()

    def join(self, id_: str, timeout: float | None = None) -> bool:
        """Wait for a job this runner started; whether it is done (True for a job it does not know)."""
        with self._lock:
            t = self._threads.get(id_)
        if t is not None:
            t.join(timeout)
            return not t.is_alive()
        return True


class SqsJobRunner:
    """Sends one message per job to the job queue."""

    def __init__(self, queue_url: str, client: Any = None) -> None:
        import boto3

        self.queue_url = queue_url
        self._sqs = client or boto3.client("sqs")

    def submit(self, kind: str, namespace: str, id_: str) -> None:
        self._sqs.send_message(QueueUrl=self.queue_url,
                               MessageBody=jsonx.dumps({"job": kind, "namespace": namespace, "id": id_}))
