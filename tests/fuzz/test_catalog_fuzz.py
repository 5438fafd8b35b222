"""The same fuzz (tests/fuzz/harness.py) over the product catalog and subscription operations, on a server of
its own so that xdist runs it beside test_openapi_fuzz.py."""

from __future__ import annotations

from tests.fuzz.harness import HEAVY, OPERATIONS, make_tests

test_no_server_errors, test_hostile_strings = make_tests([op for op in OPERATIONS if op[1].startswith(HEAVY)])
