"""OpenMeter's official Node SDK, `@openmeter/sdk` pinned in tests/clients/node/package.json (installed here with
`npm ci`, as tests/sdk installs Billow's own Node SDK; Node.js and npm come with the machine), unmodified, through its
default paths, against a real `billow serve` whose Stripe is the stand-in (tests/stripe_standin). tests/clients/node/
drive.mjs calls each of the SDK's operations; exactly the operations tests/clients/coverage.json lists as passing must
pass, and every operation the SDK calls must be listed there (passing, or not driven with the reason)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from scripts.client_coverage import COVERAGE, node_operations
from tests.e2e.conftest import Server
from tests.stripe_standin.server import StandIn

HERE = Path(__file__).parent / "node"


def client(name: str) -> dict[str, object]:
    (found,) = [c for c in json.loads(COVERAGE.read_text())["clients"] if c["key"] == name]
    return found  # type: ignore[no-any-return]


class _Faults(BaseHTTPRequestHandler):
    """The stand-in's fault switch for the Node process: POST /unavailable?path=P (every request whose path holds P
    answered 503 until) POST /clear."""

    standin: StandIn

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        url = urlsplit(self.path)
        if url.path == "/unavailable":
            self.standin.inject("unavailable", path=parse_qs(url.query)["path"][0], times=1_000_000)
        else:
            with self.standin._lock:
                self.standin._faults.clear()
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def billow_with_stripe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, StandIn, str]]:
    root = tmp_path_factory.mktemp("node-client")
    standin = StandIn(api_key="sk_test_nodeclient", webhook_secret="whsec_nodeclient").start()
    (root / "billow.yaml").write_text(f"stripe_api_base: {standin.url}\n")
    srv = Server(root / "data", root / "billow.yaml").start()
    faults = ThreadingHTTPServer(("127.0.0.1", 0), type("Faults", (_Faults,), {"standin": standin}))
    threading.Thread(target=faults.serve_forever, daemon=True).start()
    yield srv, standin, f"http://127.0.0.1:{faults.server_address[1]}"
    faults.shutdown()
    faults.server_close()
    srv.stop()
    standin.stop()


def test_the_node_sdk_against_billow(billow_with_stripe: tuple[Server, StandIn, str], tmp_path: Path) -> None:
    srv, standin, faults = billow_with_stripe
    npm, node = shutil.which("npm"), shutil.which("node")
    if npm is None or node is None:
        pytest.fail("node and npm are required (they come with the machine)")
    subprocess.run([npm, "ci", "--prefer-offline", "--no-audit", "--no-fund", "--loglevel=error"], cwd=HERE,
                   check=True, capture_output=True, timeout=300)
    expected = client("node")
    assert sorted(node_operations(HERE / "node_modules" / "@openmeter" / "sdk")) == expected["operations"]
    report = tmp_path / "report.json"
    env = {**os.environ, "BILLOW_URL": srv.url, "BILLOW_CLIENT_REPORT": str(report), "STRIPE_KEY": standin.api_key,
           "STRIPE_URL": standin.url, "STRIPE_VERSION": standin.api_version,
           "STRIPE_FAULTS_URL": faults}
    proc = subprocess.run([node, "drive.mjs"], cwd=HERE, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    results = json.loads(report.read_text())
    passed = sorted(op for op, r in results.items() if r == "pass")
    failed = {op: r for op, r in results.items() if r != "pass"}
    assert passed == expected["passing"], f"failed: {json.dumps(failed, indent=1)}\n{proc.stdout[-3000:]}"
    not_driven = expected["not_driven"]
    assert isinstance(not_driven, dict)
    assert set(expected["operations"]) == set(passed) | set(not_driven)  # type: ignore[call-overload]
