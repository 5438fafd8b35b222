"""A green CI run proves the real services ran: `make test` stops when scripts/services.sh fails or leaves an
address out, .ci/run marks the run as CI, and in CI a skipped test fails the run (tests/conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ALL_SERVICES = ("echo 'export BILLOW_TEST_PG_URL=postgresql+pg8000://pg'; echo 'export BILLOW_TEST_KAFKA=k:1'; "
                "echo 'export BILLOW_TEST_AWS_ENDPOINT=http://aws'")


def run_make_test(tmp_path: Path, services: str) -> tuple[subprocess.CompletedProcess[str], str | None]:
    """`make test` with its prerequisites taken as done, the given stand-in for `scripts/services.sh` and a
    stand-in pytest that records the environment it was started with."""
    fake_services = tmp_path / "services.sh"
    fake_services.write_text(f'[ "$1" = start ] || exit 9\n{services}\n')
    seen = tmp_path / "pytest-env"
    fake_pytest = tmp_path / "pytest.sh"
    fake_pytest.write_text(f'echo "$BILLOW_TEST_PG_URL|$BILLOW_TEST_KAFKA|$BILLOW_TEST_AWS_ENDPOINT|$*" > {seen}\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("BILLOW_TEST_") and k not in ("MAKEFLAGS", "MFLAGS")}
    cmd = ["make", "-s", "-o", "setup", "-o", "lint-only", "test", f"SERVICES=bash {fake_services}",
           f"PYTEST=bash {fake_pytest}", "TOOLCHAINS=true"]
    # Dry run first: a recipe that ignores the stand-ins would start the real services and the whole suite.
    dry = subprocess.run([*cmd[:1], "-n", *cmd[1:]], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert str(fake_services) in dry.stdout and str(fake_pytest) in dry.stdout, dry.stdout
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    return proc, seen.read_text().strip() if seen.exists() else None


def test_make_test_fails_when_the_services_do_not_start(tmp_path: Path) -> None:
    proc, ran = run_make_test(tmp_path, "echo 'services: postgres did not come up' >&2; exit 1")
    assert proc.returncode != 0
    assert ran is None, "pytest ran without the services"
    assert "services" in proc.stderr


def test_make_test_fails_when_a_service_address_is_missing(tmp_path: Path) -> None:
    proc, ran = run_make_test(tmp_path, "echo 'export BILLOW_TEST_PG_URL=postgresql+pg8000://pg'")
    assert proc.returncode != 0
    assert ran is None, "pytest ran without the Kafka and LocalStack addresses"
    assert "BILLOW_TEST_KAFKA" in proc.stderr


def test_make_test_runs_the_suite_with_every_address(tmp_path: Path) -> None:
    proc, ran = run_make_test(tmp_path, ALL_SERVICES)
    assert proc.returncode == 0, proc.stderr
    assert ran is not None
    pg, kafka, aws, args = ran.split("|")
    assert (pg, kafka, aws) == ("postgresql+pg8000://pg", "k:1", "http://aws")
    assert "-rs" in args.split() or "-ra" in args.split()  # the skip summary is printed


def test_ci_entry_point_marks_the_run_as_ci() -> None:
    lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert "export CI=true" in lines
    assert lines.index("export CI=true") < lines.index("make test")


CONFTEST = """
import tests.conftest as shared
from tests.conftest import pytest_make_collect_report, pytest_runtest_makereport  # noqa: F401

shared.ALLOWED_SKIPS = {allowed!r}
"""
TESTS = """
import pytest

def test_runs():
    pass

def test_skips():
    pytest.skip("LocalStack not started (run through `make test`)")

@pytest.mark.skip(reason="later")
def test_marked():
    pass

@pytest.mark.xfail(reason="known", strict=True)
def test_expected_failure():
    assert False
"""
SKIPPED_MODULE = """
import pytest
pytest.skip("whole module away", allow_module_level=True)
"""


def run_suite(tmp_path: Path, *, ci: str | None, allowed: tuple[str, ...] = (),
              skipped_module: bool = True) -> subprocess.CompletedProcess[str]:
    (tmp_path / "conftest.py").write_text(CONFTEST.format(allowed=allowed))
    (tmp_path / "test_sample.py").write_text(TESTS)
    if skipped_module:
        (tmp_path / "test_away.py").write_text(SKIPPED_MODULE)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "shared")])
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:randomly", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), "-c", os.devnull, str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_outside_ci_a_skip_is_only_reported(tmp_path: Path) -> None:
    proc = run_suite(tmp_path, ci=None)
    assert proc.returncode == 0, proc.stdout
    assert "1 passed, 3 skipped, 1 xfailed" in proc.stdout
    assert "SKIPPED" in proc.stdout and "LocalStack not started" in proc.stdout


def test_in_ci_every_skip_fails_the_run_and_says_why(tmp_path: Path) -> None:
    proc = run_suite(tmp_path, ci="true", skipped_module=False)
    assert proc.returncode == 1, proc.stdout
    # A skip in the call fails the test; one in set-up (a mark, a fixture such as require_service) errors it.
    assert "1 failed, 1 passed, 1 xfailed, 1 error" in proc.stdout.splitlines()[-1]
    assert "skipped in CI (Skipped: LocalStack not started" in proc.stdout
    assert "skipped in CI (Skipped: later)" in proc.stdout


def test_in_ci_a_module_skipped_at_collection_fails_the_run(tmp_path: Path) -> None:
    proc = run_suite(tmp_path, ci="true")
    assert proc.returncode != 0, proc.stdout
    assert "ERROR collecting test_away.py" in proc.stdout and "skipped in CI (Skipped: whole module away)" in proc.stdout


def test_in_ci_an_allowed_skip_stays_a_skip(tmp_path: Path) -> None:
    proc = run_suite(tmp_path, ci="true", allowed=("LocalStack not started", "later", "whole module away"))
    assert proc.returncode == 0, proc.stdout
    assert "1 passed, 3 skipped, 1 xfailed" in proc.stdout


def test_the_suite_allows_no_skip_in_ci() -> None:
    import tests.conftest as shared

    assert shared.ALLOWED_SKIPS == ()
