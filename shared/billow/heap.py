"""The process's garbage collector, set for ingest (issue 17).

A 10,000-event batch allocates a few hundred thousand short-lived objects (decoded JSON, events, values). With
CPython's default thresholds (700, 10, 10) they set off collections that scan the whole heap, and a Billow process
holds well over a million long-lived objects from start-up (chdb, SQLAlchemy, pydantic, pandas): that scanning cost
about a quarter of ingest's CPU per event. `settle()`, once start-up is done, collects what start-up left, moves the
survivors out of the collector's view (gc.freeze: they are still freed by reference counting, only no longer
scanned) and lets more allocations pass between young collections. Nothing is kept alive by it.

`paused()` goes further for the length of one batch (ingest, the usage sink): the batch's objects are acyclic and
die together when it ends, so the collector has nothing to find in them, yet at 10,000 allocations a young
collection it scans each of them once or twice (~4 us per event, ~8 % of ingest's Python time, issue 17). Cycles
made meanwhile (none on these paths) are collected at the first collection after the last batch in flight ends; and
since a busy server may always have a batch in flight, a batch that ends more than COLLECT_EVERY_S after the last
collection runs one of the young generations (and a full one every FULL_EVERY_S), so cycles never pile up."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

YOUNG_THRESHOLD = 10_000  # allocations between collections of the youngest generation (CPython's default: 700)


def settle() -> None:
    """Call once a process has started (its modules imported, its stores open), before it serves."""
    gc.collect()
    gc.freeze()
    young, middle, old = gc.get_threshold()
    gc.set_threshold(max(young, YOUNG_THRESHOLD), middle, old)


COLLECT_EVERY_S = 1.0  # while batches keep the collector paused: a young collection at most this often
FULL_EVERY_S = 60.0  # ... and a full one

_pause = threading.Lock()
_paused = [0, False]  # batches in flight (all threads), whether the first of them found the collector enabled
_collected = [time.monotonic(), time.monotonic()]  # when paused() last ran a young / a full collection


@contextmanager
def paused() -> Iterator[None]:
    """No automatic collection while the body runs, nor while any other thread's `paused()` body does; the
    collector is back as it was once the last of them ends (left off if it was off before the first)."""
    with _pause:
        if _paused[0] == 0:
            _paused[1] = gc.isenabled()
            gc.disable()
        _paused[0] += 1
    try:
        yield
    finally:
        generation = None
        with _pause:
            _paused[0] -= 1
            if _paused[1]:
                now = time.monotonic()
                if now - _collected[1] >= FULL_EVERY_S:
                    generation, _collected[0], _collected[1] = 2, now, now
                elif now - _collected[0] >= COLLECT_EVERY_S:
                    generation, _collected[0] = 1, now
                if _paused[0] == 0:
                    gc.enable()
        if generation is not None:
            gc.collect(generation)
