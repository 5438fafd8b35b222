"""The Lambda assets from layers/build.py: within Lambda's size limits, no chdb, no runtime-provided boto3,
bytecode that stays valid inside a zip with fixed timestamps. Prints the sizes (a benchmark line)."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest

from layers import build as lb


def test_assets_fit_lambda_limits(lambda_assets: Any, capsys: pytest.CaptureFixture[str]) -> None:
    deps, code, sizes = lambda_assets
    assert sizes.deps_zipped < lb.LAYER_ZIP_LIMIT
    assert sizes.function_unzipped < lb.FUNCTION_UNZIPPED_LIMIT
    with capsys.disabled():
        print(f"\n[layers] {sizes.report()}")
    packages = {p.name.lower() for p in (deps / "python").iterdir()}
    assert {"confluent_kafka", "pg8000", "clickhouse_connect", "aws_msk_iam_sasl_signer", "aws_lambda_powertools",
            "sqlalchemy", "pydantic_core"} <= packages
    assert not lb.forbidden_in(deps / "python") and not any(p.startswith(("boto3", "botocore")) for p in packages)
    binaries = list((deps / "python" / "confluent_kafka").glob("cimpl*.so"))
    assert binaries and all("aarch64" in b.name for b in binaries), binaries  # built for the Lambda architecture
    assert "cpython-312" in binaries[0].name
    assert (code / "functions" / "ingest" / "handler.py").is_file()
    assert not list(code.rglob("chdb*"))


def test_bytecode_is_unchecked_hash_based(lambda_assets: Any) -> None:
    """A timestamp-checked .pyc would be stale after CDK zips the asset with fixed timestamps."""
    _, code, _ = lambda_assets
    pycs = list((code / "billow").rglob("*.cpython-312.pyc"))
    assert len(pycs) >= len(list((code / "billow").rglob("*.py")))
    for pyc in pycs:
        flags = struct.unpack("<I", pyc.read_bytes()[4:8])[0]
        assert flags == 0b01, pyc  # hash-based, check_source off


def test_requirements_are_the_locked_lambda_extras_only() -> None:
    reqs = lb.requirements()
    names = {lb.package_name(r) for r in reqs}
    assert {"confluent-kafka", "pg8000", "clickhouse-connect", "aws-msk-iam-sasl-signer-python"} <= names
    assert not names & {"chdb", "boto3", "botocore", "s3transfer", "pytest", "aws-cdk-lib", "cdk-nag", "ruff"}
    assert all("==" in r for r in reqs)  # pinned by the lockfile


def test_chdb_in_an_asset_fails_the_build(tmp_path: Path) -> None:
    deps, code = tmp_path / "deps", tmp_path / "code"
    (deps / "python" / "chdb").mkdir(parents=True)
    code.mkdir()
    with pytest.raises(lb.BuildError, match="chdb"):
        lb.check(deps, code)


def test_oversized_layer_fails_the_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    deps, code = tmp_path / "deps", tmp_path / "code"
    (deps / "python").mkdir(parents=True)
    (deps / "python" / "blob.bin").write_bytes(b"x" * 4096)
    code.mkdir()
    monkeypatch.setattr(lb, "LAYER_ZIP_LIMIT", 10)
    with pytest.raises(lb.BuildError, match="too big"):
        lb.check(deps, code)


def test_the_migrate_function_runs_from_the_assets_alone(lambda_assets: Any, tmp_path: Path) -> None:
    """functions/migrate imported from the code asset and the layer only (no venv): Alembic, Mako and the
    revisions ship, and it migrates a database (pure-Python fallbacks stand in for the arm64 extensions)."""
    import os
    import subprocess
    import sys

    deps, code, _ = lambda_assets
    assert {"alembic", "mako", "markupsafe"} <= {p.name for p in (deps / "python").iterdir()}
    assert not list((deps / "python").rglob("*.c")) and not (deps / "python" / "sqlalchemy" / "testing").exists()
    assert (code / "billow" / "migrations" / "env.py").is_file()
    script = ("from functions.migrate.handler import lambda_handler; "
              "from billow.migrations import HEAD; assert lambda_handler({}, None)['meta'] == HEAD; print('ok')")
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": f"{code}:{deps / 'python'}", "AWS_LAMBDA_FUNCTION_NAME": "t",
           "BILLOW_META_STORE_URL": f"sqlite:///{tmp_path / 'meta.db'}", "BILLOW_USAGE_STORE": "memory",
           "BILLOW_DATA_DIR": str(tmp_path / "none"), "AWS_REGION": "us-east-1"}
    done = subprocess.run([sys.executable, "-S", "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.splitlines()[-1] == "ok", done.stderr[-3000:]
