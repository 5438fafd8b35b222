"""test_openapi_fuzz.py's fuzz (the metering, entitlement and portal operations) against a `billow serve` whose meta
store is PostgreSQL, as production's is: what SQLite stores as it comes (NUL, lone surrogates, huge numbers, years
past 9999, long keys) PostgreSQL may refuse. A module of its own, so pytest-xdist (--dist loadfile) runs it beside
the SQLite one."""

from __future__ import annotations

from tests.fuzz.harness import HEAVY, OPERATIONS, make_tests

META_STORE = "postgres"  # tests/fuzz/conftest.py: fuzz_server
test_no_server_errors, test_hostile_strings = make_tests([op for op in OPERATIONS if not op[1].startswith(HEAVY)])
