"""The Python, Node.js and Go SDKs' own test suites, each against one real `billow serve` (API keys on, the
meter of tests/sdk/billow.yaml) through BILLOW_URL and BILLOW_API_KEY. Go and npm are required: `make test`
installs Go (scripts/toolchains.sh), Node.js and npm come with the machine."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.e2e.conftest import Server
from tests.support.keys import make_key

HERE = Path(__file__).parent
SDK = HERE.parents[1] / "sdk"
# What a skipped test looks like in each runner's output; only the portal token test may skip (when the server
# answers 404 for POST /api/v1/portal/tokens).
SKIP = re.compile(r"SKIPPED \[\d+\].*|--- SKIP: \S+|# SKIP.*")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    data, config = tmp_path_factory.mktemp("billow-sdk"), HERE / "billow.yaml"
    _, token = make_key(data, config, "default", "admin")
    server = Server(data, config).start()
    yield {**os.environ, "BILLOW_URL": server.url, "BILLOW_API_KEY": token}
    server.stop()


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: scripts/toolchains.sh (run by `make test`) installs Go; Node.js and "
                    "npm come with the machine")
    return path


def run(cwd: Path, env: dict[str, str], *cmd: str) -> None:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=180)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"`{' '.join(cmd)}` in {cwd} failed:\n{out[-6000:]}"
    skipped = [s for s in SKIP.findall(out) if "portal" not in s.lower()]
    assert not skipped, f"`{' '.join(cmd)}` skipped tests: {skipped}"


def python_sdk(env: dict[str, str]) -> None:
    run(SDK / "python", env, sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests")


def node_sdk(env: dict[str, str]) -> None:
    npm = tool("npm")
    for cmd in (["ci", "--prefer-offline", "--no-audit", "--no-fund"], ["run", "build"], ["test"]):
        run(SDK / "node", env, npm, *cmd)


def go_sdk(env: dict[str, str]) -> None:
    # -count=1: go caches test results keyed on BILLOW_URL, which a new server may reuse.
    run(SDK / "go", env, tool("go"), "test", "-count=1", "-v", "./...")


@pytest.fixture(scope="module")
def suites(env: dict[str, str]) -> Iterator[dict[str, Future[None]]]:
    """The three suites run at once (they share the server, each on subjects of its own): the machine mostly
    waits on compilers, npm and the server, and the file has to stay under 90 s."""
    with ThreadPoolExecutor(3) as pool:
        yield {name: pool.submit(suite, env) for name, suite in (("python", python_sdk), ("node", node_sdk),
                                                                 ("go", go_sdk))}


@pytest.mark.parametrize("sdk", ["python", "node", "go"])
def test_sdk(suites: dict[str, Future[None]], sdk: str) -> None:
    suites[sdk].result()
