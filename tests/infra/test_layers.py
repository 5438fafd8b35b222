"""The Lambda assets from layers/build.py: within Lambda's size limits, no chdb, no runtime-provided boto3,
bytecode that stays valid inside a zip with fixed timestamps. Prints the sizes (a benchmark line).

Two layers (issue 18 item 8): the core dependencies every function imports, and a billing-only layer (stripe, fpdf2
and what they pull in: fonttools, pillow, requests, ...) attached only to the functions that import it; the gate is
Lambda's real limit, 250 MB unzipped per function (code and all its layers), not 50 MB zipped per layer (the assets
go through S3)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from layers import build as lb
from tests.infra.support import HANDLERS, Synth, synthesize

BILLING_PACKAGES = {"stripe", "fpdf", "fonttools", "pil", "requests", "defusedxml", "charset_normalizer"}
# Every handler that imports stripe or fpdf2: the API (invoice documents, Stripe actions), the billing run (renders
# documents, finalises Stripe invoices) and the Stripe webhook (verifies Stripe's signature with the SDK).
BILLING_HANDLERS = {"api", "billing_run", "stripe_webhook"}


def top_level(layer: Path) -> set[str]:
    return {p.name.lower() for p in (layer / "python").iterdir()
            if not p.name.endswith((".dist-info", ".libs")) and not p.name.startswith((".", "__pycache__"))}


def test_assets_fit_lambda_limits(lambda_assets: Any, capsys: pytest.CaptureFixture[str]) -> None:
    deps, code, sizes = lambda_assets
    with capsys.disabled():
        print(f"\n[layers] {sizes.report()}")
    per_function = sizes.per_function()
    assert set(per_function) == set(HANDLERS)
    assert all(total < lb.FUNCTION_UNZIPPED_LIMIT for total in per_function.values()), per_function
    for name, total in per_function.items():  # code + core layer (+ billing layer where it is attached)
        billing = sizes.billing_unzipped if name in BILLING_HANDLERS else 0
        assert total == sizes.code_unzipped + sizes.core_unzipped + billing, name
    packages = {p.name.lower() for p in (deps / "python").iterdir()}
    assert {"confluent_kafka", "pg8000", "clickhouse_connect", "aws_msk_iam_sasl_signer", "aws_lambda_powertools",
            "sqlalchemy", "pydantic_core"} <= packages
    assert not lb.forbidden_in(deps / "python") and not any(p.startswith(("boto3", "botocore")) for p in packages)
    binaries = list((deps / "python" / "confluent_kafka").glob("cimpl*.so"))
    assert binaries and all("aarch64" in b.name for b in binaries), binaries  # built for the Lambda architecture
    assert "cpython-312" in binaries[0].name
    assert (code / "functions" / "ingest" / "handler.py").is_file()
    assert not list(code.rglob("chdb*"))


def test_billing_packages_are_in_the_billing_layer_only(lambda_assets: Any) -> None:
    deps, _, sizes = lambda_assets
    core, billing = top_level(deps), top_level(deps / lb.BILLING_LAYER)
    assert BILLING_PACKAGES <= billing, billing
    assert not core & BILLING_PACKAGES, core & BILLING_PACKAGES
    assert not core & billing  # nothing twice: each package in exactly one layer
    assert not lb.forbidden_in(deps / lb.BILLING_LAYER / "python")
    assert lb.BILLING_FUNCTIONS == BILLING_HANDLERS
    assert sizes.core_unzipped < sizes.core_unzipped + sizes.billing_unzipped < lb.FUNCTION_UNZIPPED_LIMIT


@pytest.mark.parametrize("name", sorted(set(HANDLERS) - BILLING_HANDLERS))
def test_functions_without_the_billing_layer_import_from_the_core_layer_alone(host_assets: Any, name: str,
                                                                             tmp_path: Path) -> None:
    """Each handler module imported from the code asset and the core layer only (no venv, no billing layer): what
    a function without the billing layer can import. stripe and fpdf2 are absent there. (The layer built for this
    machine's architecture from the same lockfile: the arm64 one's compiled extensions cannot load here.)"""
    deps, code, _ = host_assets
    script = (f"import functions.{name}.handler as h; assert callable(h.lambda_handler)\n"
              "import importlib.util as u; assert not [m for m in ('stripe', 'fpdf', 'PIL') if u.find_spec(m)]\n"
              "print('ok')")
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": f"{code}:{deps / 'python'}", "AWS_LAMBDA_FUNCTION_NAME": "t",
           "BILLOW_META_STORE_URL": f"sqlite:///{tmp_path / 'meta.db'}", "BILLOW_USAGE_STORE": "memory",
           "BILLOW_DATA_DIR": str(tmp_path / "none"), "AWS_REGION": "us-east-1"}
    done = subprocess.run([sys.executable, "-S", "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.splitlines()[-1] == "ok", done.stderr[-3000:]


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory, lambda_assets: Any) -> Synth:
    return synthesize(tmp_path_factory.mktemp("cdk.out"), {"stage": "test"}, lambda_assets)


def test_the_template_attaches_the_billing_layer_only_where_it_is_imported(synth: Synth) -> None:
    """Per function in the template: its layers, and code + layers as the template deploys them < 250 MB unzipped."""
    out = Path(synth.app.synth().directory)  # the cloud assembly, with the staged assets
    resources = json.loads((out / synth.stack.template_file).read_text())["Resources"]
    asset = {k: out / v["Metadata"]["aws:asset:path"] for k, v in resources.items()
             if v["Type"] == "AWS::Lambda::LayerVersion"}
    assert len(asset) == 2
    by_content = {("stripe" in {p.name for p in (path / "python").iterdir()}): k for k, path in asset.items()}
    billing_id, core_id = by_content[True], by_content[False]
    for name in HANDLERS:
        fn_id, _ = synth.function(name)
        fn = resources[fn_id]
        attached = [ref["Ref"] for ref in fn["Properties"]["Layers"]]
        assert attached == ([core_id, billing_id] if name in BILLING_HANDLERS else [core_id]), name
        total = lb.dir_size(out / fn["Metadata"]["aws:asset:path"]) + sum(
            lb.dir_size(asset[layer]) for layer in attached)
        assert total < lb.FUNCTION_UNZIPPED_LIMIT, (name, total)


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


def test_a_function_over_250_mb_unzipped_fails_the_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The gate is per function (code + all its layers, unzipped), so the billing layer counts only where attached:
    a limit between the core functions' total and the billing functions' total names a billing function."""
    deps, code = tmp_path / "deps", tmp_path / "code"
    (deps / "python").mkdir(parents=True)
    (deps / "python" / "core.bin").write_bytes(b"x" * 1000)
    (deps / lb.BILLING_LAYER / "python").mkdir(parents=True)
    (deps / lb.BILLING_LAYER / "python" / "billing.bin").write_bytes(b"x" * 4000)
    for name in ("api", "ingest"):
        (code / "functions" / name).mkdir(parents=True)
        (code / "functions" / name / "handler.py").write_text("")
    assert lb.check(deps, code).per_function() == {"api": 5000, "ingest": 1000}
    monkeypatch.setattr(lb, "FUNCTION_UNZIPPED_LIMIT", 3000)
    with pytest.raises(lb.BuildError, match="api") as failed:
        lb.check(deps, code)
    assert "ingest" not in str(failed.value).split("exceed")[0]


def test_the_migrate_function_runs_from_the_assets_alone(lambda_assets: Any, tmp_path: Path) -> None:
    """functions/migrate imported from the code asset and the layer only (no venv): Alembic, Mako and the
    revisions ship, and it migrates a database (pure-Python fallbacks stand in for the arm64 extensions)."""
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
