"""test_http_layer_fuzz.py's mutation fuzz of the HTTP layer against a `billow serve` whose meta store is PostgreSQL,
as production's is: the subjects the fuzz POSTs (stored when the request is whole, not stored when it was refused or
cut short) go through a connection pool to a server of its own, where a request cut off mid-body or refused while a
write is under way could leave a connection checked out or a transaction open. Same seed and cases as the SQLite run
(BILLOW_HTTP_FUZZ_SEED, BILLOW_HTTP_FUZZ_CASES); a module of its own, so pytest-xdist (--dist loadfile) runs it beside
the others."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from billow.local.server import BillowServer
from tests.conftest import memory_server, scratch_database
from tests.fuzz.test_http_layer_fuzz import (
    HEADER_TIMEOUT_S,
    READ_TIMEOUT_S,
    test_mutated_requests_keep_every_invariant,
)

__all__ = ["test_mutated_requests_keep_every_invariant"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BillowServer]:
    """Without BILLOW_TEST_PG_URL: skipped outside CI, failed in CI (tests.conftest.scratch_database)."""
    with scratch_database("billow_httpfuzz_") as url, memory_server(
            tmp_path_factory.mktemp("httpfuzz_pg"), meta_store_url=url, header_timeout_s=HEADER_TIMEOUT_S,
            read_timeout_s=READ_TIMEOUT_S, keepalive_s=5) as srv:
        assert srv.container.settings.meta_store_url == url
        yield srv
