"""A newcomer's first minutes with `billow`: --version, help that shows the defaults, `billow serve` saying where it
listens, where its data is, whether auth is on and what to try first; `GET /` a landing page that links the API
reference, the portal and health; a wrong method on a known path a 405 naming the allowed ones; `billow keys list`
saying there are none."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from billow import __version__
from tests.e2e.conftest import BIN, Server


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_version_and_help_show_the_defaults() -> None:
    out = run("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"billow {__version__}"
    helped = run("serve", "--help")
    assert helped.returncode == 0
    text = " ".join(helped.stdout.split())
    for expected in ("--host HOST", "(default: 127.0.0.1)", "--port PORT", "(default: 8888)",
                     "--log-level {DEBUG,INFO,WARNING,ERROR}", "(default: WARNING)", "(default: .billow)"):
        assert expected in text, expected


def test_keys_list_says_when_there_are_none(tmp_path: Path) -> None:
    out = run("keys", "--data-dir", str(tmp_path), "list")
    assert out.returncode == 0
    assert out.stdout.strip() == "no API keys yet: create one with `billow keys create --name NAME --scope admin`"
    made = run("keys", "--data-dir", str(tmp_path), "create", "--name", "me", "--namespace", "shop")
    assert made.returncode == 0
    listed = run("keys", "--data-dir", str(tmp_path), "list").stdout
    assert " shop " in listed and " me " in listed and "no API keys" not in listed
    other = run("keys", "--data-dir", str(tmp_path), "list", "--namespace", "elsewhere")
    assert other.stdout.strip() == "no API keys in namespace 'elsewhere'"


@pytest.fixture(scope="module")
def started(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, list[str]]]:
    data = tmp_path_factory.mktemp("first-minutes")
    srv = Server(data / "data").start()
    assert srv.proc is not None and srv.proc.stdout is not None
    lines: list[str] = []
    out = srv.proc.stdout

    def read() -> None:  # the banner ends with how to stop; a reader thread, so a missing line cannot hang the test
        for line in out:
            lines.append(line.rstrip("\n"))
            if "Ctrl-C" in line:
                break

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=30)
    yield srv, list(lines)
    srv.stop()


def test_serve_says_where_it_listens_its_data_auth_and_what_to_try(started: tuple[Server, list[str]]) -> None:
    srv, lines = started
    text = "\n".join(lines)
    url = srv.url
    for expected in (f"API reference  {url}/api/docs", f"{url}/api/v1/openapi.json", f"Console        {url}/console",
                     f"Portal         {url}/portal#token=...",
                     f"Health         {url}/healthz", f"Data dir       {(srv.data_dir).resolve()}",
                     "Auth           OFF", f"curl -s -X POST {url}/api/v1/meters",
                     f"curl -s -X POST {url}/api/v1/events", f"curl -s '{url}/api/v1/meters/tokens/query"):
        assert expected in text, expected
    for path in ("/api/docs", "/api/v1/openapi.json", "/console", "/portal", "/healthz"):  # every address it names
        status, _, _ = srv.request("GET", path)
        assert status == 200, path


def test_root_is_a_landing_page(started: tuple[Server, list[str]]) -> None:
    srv, _ = started
    status, headers, body = srv.request("GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    for link in ('href="/api/docs"', 'href="/api/v1/openapi.json"', 'href="/console"', 'href="/portal"',
                 'href="/healthz"', 'href="/readyz"'):
        assert link in body, link
    assert f"Billow {__version__}" in body


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("DELETE", "/healthz", "GET"),
    ("PATCH", "/api/v1/meters", "GET, POST"),
    ("POST", "/api/v1/meters/tokens", "DELETE, GET, PUT"),
    ("PUT", "/api/v1/events", "GET, POST"),
    ("HEAD", "/api/v1/meters", "GET, POST"),
])
def test_a_wrong_method_on_a_known_path_is_405_with_allow(started: tuple[Server, list[str]], method: str,
                                                          path: str, allow: str) -> None:
    srv, _ = started
    status, headers, body = srv.request(method, path, {} if method in ("POST", "PUT", "PATCH") else None)
    assert status == 405 and headers["Allow"] == allow, (status, headers, body)
    assert headers["Content-Type"] == "application/problem+json"
    if method != "HEAD":
        assert body["status"] == 405 and method in body["detail"] and allow in body["detail"]
    status, _, body = srv.request("DELETE", "/api/v1/no-such-thing")
    assert status == 404 and body["status"] == 404
