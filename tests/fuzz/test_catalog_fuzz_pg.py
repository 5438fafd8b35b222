"""test_catalog_fuzz.py's fuzz (the product catalog and subscription operations) against a `billow serve` whose meta
store is PostgreSQL, as production's is (test_openapi_fuzz_pg.py says why)."""

from __future__ import annotations

from tests.fuzz.harness import HEAVY, OPERATIONS, make_tests

META_STORE = "postgres"  # tests/fuzz/conftest.py: fuzz_server
test_no_server_errors, test_hostile_strings = make_tests([op for op in OPERATIONS if op[1].startswith(HEAVY)])
