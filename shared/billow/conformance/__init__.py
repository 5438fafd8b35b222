"""A metering conformance suite anyone can run: `billow conformance --url URL [--token T]` plays black-box
scenarios (ingest content types, batches, deduplication also across a restart, windows and time zones with DST days,
every aggregation, exact decimals, late and invalid events, CSV, bad input) against any server that speaks OpenMeter's
v1 API, prints a pass/fail table and exits 1 when a scenario failed. Standard library only (urllib, zoneinfo), so it
also runs as `python -m billow.conformance` from a copy of this package. See docs/conformance.md."""

from billow.conformance.runner import add_arguments, run

__all__ = ["add_arguments", "run"]
