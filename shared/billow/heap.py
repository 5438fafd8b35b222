"""The process's garbage collector, set for ingest (issue 17).

A 10,000-event batch allocates a few hundred thousand short-lived objects (decoded JSON, events, values). With
CPython's default thresholds (700, 10, 10) they set off collections that scan the whole heap, and a Billow process
holds well over a million long-lived objects from start-up (chdb, SQLAlchemy, pydantic, pandas): that scanning cost
about a quarter of ingest's CPU per event. `settle()`, once start-up is done, collects what start-up left, moves the
survivors out of the collector's view (gc.freeze: they are still freed by reference counting, only no longer
scanned) and lets more allocations pass between young collections. Nothing is kept alive by it."""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000  # allocations between collections of the youngest generation (CPython's default: 700)


def settle() -> None:
    """Call once a process has started (its modules imported, its stores open), before it serves."""
    gc.collect()
    gc.freeze()
    young, middle, old = gc.get_threshold()
    gc.set_threshold(max(young, YOUNG_THRESHOLD), middle, old)
