"""The backtest job store's in-memory twin (ports.BacktestJobStore) for unit tests: the SQL store's contract
(tests/adapters/test_backtest_job_store_contract.py), in one process. Jobs are copied in and out, as the SQL store
serialises them, so a caller never shares a job object with the store."""

from __future__ import annotations

import copy
import threading
from collections.abc import Sequence
from datetime import datetime

from billow.domain.backtest_jobs import Job


class InMemoryBacktestJobStore:
    def __init__(self) -> None:
        self._jobs: dict[tuple[str, str], Job] = {}
        self._lock = threading.Lock()

    def migrate(self) -> None:
        pass

    def add(self, job: Job) -> None:
        with self._lock:
            if (job.namespace, job.id) in self._jobs:
                raise KeyError(f"backtest job {job.id} exists")
            self._jobs[(job.namespace, job.id)] = copy.deepcopy(job)

    def get(self, namespace: str, id_: str, *, rows: bool = True) -> Job | None:
        with self._lock:
            job = self._jobs.get((namespace, id_))
            if job is None:
                return None
            found = copy.deepcopy(job)
            if not rows:
                found.rows = []
            return found

    def claim(self, namespace: str, id_: str, now: datetime, alive_since: datetime) -> Job | None:
        with self._lock:
            job = self._jobs.get((namespace, id_))
            if job is None or job.status != "queued" or job.updated_at is None or job.updated_at <= alive_since:
                return None
            job.status, job.updated_at = "running", now
            return copy.deepcopy(job)

    def report(self, namespace: str, id_: str, success: int, failed: int, at: datetime) -> None:
        with self._lock:
            job = self._jobs.get((namespace, id_))
            if job is not None and job.status == "running":
                job.success, job.failed, job.updated_at = success, failed, at

    def finish(self, job: Job, *, expect: Sequence[str] = ("running",),
               last_written_by: datetime | None = None) -> bool:
        with self._lock:
            stored = self._jobs.get((job.namespace, job.id))
            if stored is None or stored.status not in expect:
                return False
            if last_written_by is not None and (stored.updated_at is None or stored.updated_at > last_written_by):
                return False
            done = copy.deepcopy(job)
            done.spec = stored.spec
            if done.status != "succeeded":
                done.rows = []
            self._jobs[(job.namespace, job.id)] = done
            return True

    def forget(self, namespace: str, completed_before: datetime) -> int:
        with self._lock:
            gone = [k for k, j in self._jobs.items() if k[0] == namespace and j.done and j.completed_at is not None
                    and j.completed_at < completed_before]
            for k in gone:
                del self._jobs[k]
            return len(gone)
