"""`billow serve`'s worker classes (billow.local.asgi.Workers): a job's result or exception reaches the request
awaiting it, jobs start in arrival order, a stopped server's loop does not kill a worker, and shutdown runs what was
queued before it."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from billow.local.asgi import Reply, Workers


def _reply(n: int) -> Reply:
    return Reply(200, [], str(n).encode())


def test_results_and_errors_reach_the_awaiting_requests() -> None:
    workers = Workers(2, "t-results")
    try:
        async def main() -> tuple[list[bytes], str]:
            loop = asyncio.get_running_loop()
            replies = await asyncio.wait_for(asyncio.gather(*(workers.call(loop, _reply, n) for n in range(50))), 10)

            def fail() -> Reply:
                raise ValueError("boom")

            with pytest.raises(ValueError) as err:
                await asyncio.wait_for(workers.call(loop, fail), 10)
            return [r.body for r in replies], str(err.value)

        bodies, error = asyncio.run(main())
        assert bodies == [str(n).encode() for n in range(50)] and error == "boom"
    finally:
        workers.shutdown()


def test_jobs_start_in_arrival_order_and_shutdown_runs_the_queued_ones() -> None:
    workers = Workers(1, "t-order")
    started: list[int] = []
    gate = threading.Event()

    def job(n: int) -> Reply:
        if n == 0:
            gate.wait(10)
        started.append(n)
        return _reply(n)

    loop = asyncio.new_event_loop()
    try:
        for n in range(20):
            workers.call(loop, job, n)
        gate.set()
        workers.shutdown()  # returns once the 20 queued jobs ran
        assert started == list(range(20))
        assert not any(t.is_alive() for t in workers._threads)
    finally:
        loop.close()


def test_a_job_finishing_after_its_loop_closed_does_not_kill_its_worker() -> None:
    workers = Workers(1, "t-closed")
    try:
        loop = asyncio.new_event_loop()
        gate = threading.Event()
        workers.call(loop, lambda: (gate.wait(10), _reply(0))[1])
        loop.close()
        gate.set()
        time.sleep(0.2)

        async def after() -> bytes:
            return (await asyncio.wait_for(workers.call(asyncio.get_running_loop(), _reply, 7), 10)).body

        assert asyncio.run(after()) == b"7"  # the same (one) worker still serves
    finally:
        workers.shutdown()
