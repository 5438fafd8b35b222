"""The smoke suite's target: a base URL and an admin API key.

* BILLOW_SMOKE_URL and BILLOW_SMOKE_TOKEN set (a deployed stack: .github/workflows/aws-smoke.yml, or by hand): the suite
  runs against it and creates only uniquely named things in the key's namespace.
* Unset (the normal suite): `billow serve` with the production adapters, so the suite cannot rot: the Kafka bus on the
  shared Tansu broker (BILLOW_TEST_KAFKA), PostgreSQL (a fresh database on BILLOW_TEST_PG_URL, dropped afterwards), chdb,
  and `auth: keys`, with an admin key made by `billow keys create` as an operator makes it.

BILLOW_SMOKE_WAIT_S bounds each wait for usage to be readable (default 180 s: a deployed sink's first batch includes
Lambda cold starts and the MSK trigger's polling)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.smoke.client import Client


@pytest.fixture(scope="session")
def smoke_wait_s() -> float:
    return float(os.environ.get("BILLOW_SMOKE_WAIT_S", "180"))


@pytest.fixture(scope="session")
def admin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    """A client with the admin key of the target's namespace."""
    url = os.environ.get("BILLOW_SMOKE_URL")
    if url:
        token = os.environ.get("BILLOW_SMOKE_TOKEN")
        if not token:
            pytest.fail("BILLOW_SMOKE_URL is set but BILLOW_SMOKE_TOKEN (an admin API key) is not")
        yield Client(url.rstrip("/"), token)
        return
    yield from _local_serve(tmp_path_factory.mktemp("smoke"))


def _local_serve(tmp: Path) -> Iterator[Client]:
    import sqlalchemy as sa

    from tests.conftest import require_service
    from tests.e2e.conftest import Server
    from tests.support.keys import make_key

    kafka = require_service("BILLOW_TEST_KAFKA", "the Tansu broker")
    admin_url = require_service("BILLOW_TEST_PG_URL", "PostgreSQL")
    run = uuid.uuid4().hex[:10]
    database, namespace = f"billow_smoke_{run}", f"smoke_{run}"
    pg = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with pg.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{database}"'))
    try:
        meta_url = sa.make_url(admin_url).set(database=database).render_as_string(hide_password=False)
        config = tmp / "billow.yaml"
        config.write_text(f"""auth: keys
namespace: {namespace}
bus: kafka
kafka_bootstrap: {kafka}
kafka_group: smoke-sink-{run}
meta_store_url: {meta_url}
usage_store: chdb
""")
        data = tmp / "data"
        _, token = make_key(data, config, namespace, "admin")
        srv = Server(data, config).start()
        try:
            yield Client(srv.url, token)
        finally:
            assert srv.stop() == 0
    finally:
        with pg.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        pg.dispose()
