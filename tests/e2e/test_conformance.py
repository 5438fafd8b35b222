"""`billow conformance` (issue 21 item 4) run as a user runs it: the console script against a real `billow serve`.

Every scenario passes against Billow (with the dedup-across-restart phases around a real restart, so none is skipped),
and the suite is not a rubber stamp: behind a proxy that answers COUNT meters one too high it exits 1 and names the
COUNT scenario, and only it."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from billow.conformance.scenarios import SCENARIOS
from tests.e2e.conftest import BIN, Server

ROW = re.compile(r"^(\w+)\s+(PASS|FAIL|SKIP)\s+(.*)$")


def conformance(url: str, *args: str) -> tuple[int, dict[str, tuple[str, str]], str]:
    """Run `billow conformance`; its exit code, {scenario: (result, detail)} from the table, and the whole output."""
    done = subprocess.run([str(BIN), "conformance", "--url", url, "--wait", "20", *args],
                          capture_output=True, text=True, timeout=600)
    rows = {m[1]: (m[2], m[3]) for line in done.stdout.splitlines() if (m := ROW.match(line))}
    return done.returncode, rows, done.stdout + done.stderr


def test_every_scenario_passes_against_billow_serve_across_a_restart(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    srv = Server(tmp_path / "data").start()
    try:
        code, rows, out = conformance(srv.url, "--restart-phase", "before", "--state", str(state))
    finally:
        assert srv.stop() == 0
    assert code == 0, out
    assert set(rows) == {s.key for s in SCENARIOS}, out  # every scenario ran
    assert {r for r, _ in rows.values()} == {"PASS"}, out  # none failed, none skipped
    assert "dedup_restart" in json.loads(state.read_text())["slug"]

    srv = Server(tmp_path / "data").start()  # the same data dir, a new process
    try:
        code, rows, out = conformance(srv.url, "--restart-phase", "after", "--state", str(state),
                                      "--only", "dedup_restart")
    finally:
        assert srv.stop() == 0
    assert code == 0, out
    assert set(rows) == {"dedup_restart"}, out
    assert rows["dedup_restart"][0] == "PASS", out
    assert "resent batch and singles count once" in rows["dedup_restart"][1]


class _WrongProxy(BaseHTTPRequestHandler):
    """A reverse proxy to billow serve that changes the values of the meter queries whose slug ends in `meter`."""

    upstream = ""
    meter = ""
    corrupt: Callable[[float], float]

    def _forward(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) or None
        req = urllib.request.Request(self.upstream + self.path, data=body, method=self.command)
        for h in ("Content-Type", "Accept", "Authorization"):
            if self.headers.get(h):
                req.add_header(h, self.headers[h])
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                status, ctype, payload = resp.status, resp.headers.get("Content-Type", ""), resp.read()
        except urllib.error.HTTPError as err:
            status, ctype, payload = err.code, err.headers.get("Content-Type", ""), err.read()
        if status == 200 and re.search(rf"/meters/conf_\w+_{self.meter}/query", self.path) and "json" in ctype:
            doc = json.loads(payload)
            for row in doc["data"]:
                row["value"] = self.corrupt(row["value"])
            payload = json.dumps(doc).encode()
        self.send_response(status)
        if ctype:
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_DELETE = _forward

    def log_message(self, *_: object) -> None:
        pass


@contextmanager
def wrong_server(server: Server, meter: str, corrupt: Callable[[float], float]) -> Iterator[str]:
    handler = type("H", (_WrongProxy,), {"upstream": server.url, "meter": meter, "corrupt": staticmethod(corrupt)})
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{proxy.server_address[1]}"
    finally:
        proxy.shutdown()
        proxy.server_close()


def test_a_server_that_counts_wrong_fails_naming_the_scenario(server: Server) -> None:
    with wrong_server(server, "agg_count", lambda v: v + 1) as url:
        code, rows, out = conformance(url, "--wait", "2")
    assert code == 1, out
    assert rows["agg_count"][0] == "FAIL", out
    assert "value=5" in rows["agg_count"][1] and "value=4" in rows["agg_count"][1], out  # saw 5, expected 4
    assert {k for k, (r, _) in rows.items() if r == "FAIL"} == {"agg_count"}, out
    assert "1 failed" in out


def test_float_answers_fail_the_billow_profile_and_pass_the_openmeter_profile(server: Server) -> None:
    """A server that sums in float64 (0.1 + 0.2 = 0.30000000000000004) is what OpenMeter documents, not Billow."""
    with wrong_server(server, "exact_decimals", lambda v: v * (1 + 2**-52)) as url:
        strict = conformance(url, "--only", "exact_decimals", "--wait", "2")
        lenient = conformance(url, "--only", "exact_decimals", "--profile", "openmeter")
    assert strict[0] == 1 and strict[1]["exact_decimals"][0] == "FAIL", strict[2]
    assert "0.30000000000000004" in strict[1]["exact_decimals"][1], strict[2]
    assert lenient[0] == 0 and lenient[1]["exact_decimals"][0] == "PASS", lenient[2]
    assert "float64" in lenient[1]["exact_decimals"][1]
