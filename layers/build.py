"""Build the Lambda assets from the lockfile, without Docker.

  build/layers/deps-<arch>/python/...  the core dependencies layer: manylinux wheels for the Lambda architecture
  build/layers/deps-<arch>/billing-layer/python/...  the billing-only layer (stripe, fpdf2 and what only they need)
  build/layers/code-<hash>/{billow,functions}  the function code asset: the shared core and the handlers, and
                                               rds-ca-bundle.pem (layers/rds_ca.py: TLS to Aurora without the proxy)

Run from the repo root: `.venv/bin/python -m layers.build [--arch arm64|x86_64] [--force]`.

* Requirements come from `uv export --frozen` (uv.lock) with the `postgres`, `kafka` and `billing` (stripe, fpdf2) extras only: never
  `embedded` (chdb, ~530 MB) nor the dev/infra groups. The build fails if chdb turns up anyway.
* Two layers: the core (the `postgres` and `kafka` extras' locked closure, what every function imports) and the
  billing layer (what the `billing` extra adds to it: stripe, fpdf2, fonttools, pillow, requests, defusedxml,
  charset-normalizer), attached only to BILLING_FUNCTIONS, the handlers that import stripe or fpdf2. Ingest, the
  sink, the authorizer, migrate and notify_dispatch carry only the core.
* boto3, botocore and s3transfer are left out: the Lambda Python runtime ships them, Billow only uses stable
  calls (SQS SendMessageBatch, Secrets Manager GetSecretValue, credentials for the MSK IAM signer), and they
  are the biggest packages in the tree (botocore alone is ~25 MB unzipped). Put them back (drop them from
  RUNTIME_PROVIDED) if a feature needs a newer botocore than the runtime's.
* Wheels are installed with `uv pip install --python-platform <arch>-manylinux_2_34 --python-version 3.12
  --only-binary :all: --no-deps --target ...`, the uv equivalent of `pip install --platform ... --target`:
  the uv-managed venv has no pip, and uv accepts every manylinux tag up to glibc 2.34 (Amazon Linux 2023,
  which the python3.12 runtime runs on), where pip's `--platform manylinux2014_*` would refuse a wheel
  tagged only manylinux_2_28. `--no-deps` is right because the export is already the full locked closure.
* Everything is byte-compiled with unchecked-hash .pyc files when the build interpreter is the target
  version: Lambda's file system is read-only, and the asset zip stores every file with the same fixed
  timestamp, so timestamp-checked .pyc files would be stale and recompiled in memory on every cold start.
* The dependencies layer is cached under build/layers keyed by the exported requirements (the lockfile),
  arch, Python version and this script; the code asset is keyed by the hash of its sources. Builds hold a
  file lock and swap finished directories in by rename (parallel test workers, synth next to tests).
* What no import reaches is left out of the layer: the C sources Cython compiled into the shipped .so files, .pyi
  stubs, and the test suites some packages ship (sqlalchemy.testing, alembic.testing, ...): ~1.7 MB zipped.
* Sizes are checked against Lambda's real limit: 250 MB unzipped per function, its code and all its layers
  together. There is no zipped gate: CDK uploads assets through S3, where Lambda takes layer and code zips beyond
  the 50 MB of a direct upload.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import fcntl
import hashlib
import io
import json
import os
import py_compile
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from layers.rds_ca import ASSET_NAME as RDS_CA_ASSET_NAME
from layers.rds_ca import BUNDLE as RDS_CA_BUNDLE

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "build" / "layers"
PYTHON = "3.12"  # the Lambda runtime (infra/constructs/functions.py RUNTIME) and the venv
ARCHES = {"arm64": "aarch64", "x86_64": "x86_64"}
FUNCTION_UNZIPPED_LIMIT = 250 * 1024 * 1024  # function code + all its layers, unzipped (Lambda quota)
FORBIDDEN = ("chdb",)  # must never reach a Lambda asset
RUNTIME_PROVIDED = frozenset({"boto3", "botocore", "s3transfer"})
CORE_EXTRAS = ("postgres", "kafka")
BILLING_EXTRAS = ("billing",)
EXTRAS = (*CORE_EXTRAS, *BILLING_EXTRAS)
BILLING_LAYER = "billing-layer"  # the billing layer's directory inside deps-<arch> (a name no package has)
# The handlers under functions/ that import stripe or fpdf2 (infra attaches the billing layer to these only): the API
# (invoice documents, Stripe approve/advance/void), the billing run (renders documents, finalises Stripe invoices) and
# the Stripe webhook (checks Stripe's signature with the SDK).
BILLING_FUNCTIONS = frozenset({"api", "billing_run", "stripe_webhook"})
UNUSED_DIRS = ("sqlalchemy/testing", "alembic/testing", "mako/testing", "simplejson/tests", "certifi/tests")
UNUSED_SUFFIXES = frozenset({".c", ".pxd", ".pyi"})
KEEP_CODE_VERSIONS = 8  # older code assets kept (~3 MB each) for builds still reading them


class BuildError(SystemExit):
    pass


@dataclass(frozen=True)
class Sizes:
    core_unzipped: int
    core_zipped: int
    billing_unzipped: int
    billing_zipped: int
    code_unzipped: int
    code_zipped: int
    functions: tuple[str, ...]  # the handlers in the code asset

    def per_function(self) -> dict[str, int]:
        """Each function's code + layers, unzipped: what Lambda holds against its 250 MB."""
        return {name: self.code_unzipped + self.core_unzipped
                + (self.billing_unzipped if name in BILLING_FUNCTIONS else 0) for name in self.functions}

    def report(self) -> str:
        def mb(n: int) -> str:
            return f"{n / 1024 / 1024:.1f} MB"

        totals = ", ".join(f"{name} {mb(n)}" for name, n in sorted(self.per_function().items()))
        return (f"core layer {mb(self.core_zipped)} zipped / {mb(self.core_unzipped)} unzipped; billing layer "
                f"{mb(self.billing_zipped)} zipped / {mb(self.billing_unzipped)} unzipped; code {mb(self.code_zipped)} "
                f"zipped / {mb(self.code_unzipped)} unzipped; per function unzipped (limit "
                f"{mb(FUNCTION_UNZIPPED_LIMIT)}): {totals}")


def _uv(*args: str) -> list[str]:
    """`python3 -m uv` as scripts/setup.sh installs it (the pinned uv), else a `uv` on PATH."""
    python3 = shutil.which("python3")
    if python3 and subprocess.run([python3, "-m", "uv", "--version"], capture_output=True).returncode == 0:
        return [python3, "-m", "uv", *args]
    uv = shutil.which("uv")
    if not uv:
        raise BuildError("layers: uv not found (scripts/setup.sh installs it as `python3 -m uv`)")
    return [uv, *args]


def package_name(requirement: str) -> str:
    return requirement.split(";")[0].split("==")[0].split("[")[0].strip().lower().replace("_", "-")


def requirements(extras: tuple[str, ...] = EXTRAS) -> list[str]:
    """The locked runtime closure for the Lambda extras, minus what the runtime provides."""
    cmd = _uv("export", "--frozen", "--no-dev", "--no-default-groups", "--no-emit-project", "--no-hashes",
              "--no-header", "--no-annotate", *(a for e in extras for a in ("--extra", e)))
    out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    reqs = [line.strip() for line in out.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    names = {package_name(r) for r in reqs}
    if bad := names.intersection(FORBIDDEN):
        raise BuildError(f"layers: {sorted(bad)} is in the Lambda requirements; it must never be in a layer")
    return [r for r in reqs if package_name(r) not in RUNTIME_PROVIDED]


def layer_requirements() -> tuple[list[str], list[str]]:
    """(core, billing-only): the core extras' closure, and what the billing extras add to it."""
    core = requirements(CORE_EXTRAS)
    core_names = {package_name(r) for r in core}
    return core, [r for r in requirements() if package_name(r) not in core_names]


def cache_key(reqs: list[str], arch: str) -> str:
    h = hashlib.sha256()
    for part in (*reqs, arch, PYTHON, Path(__file__).read_text()):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:20]


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def zipped_size(path: Path) -> int:
    """Size of the directory as CDK would upload it (deflate)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(path.rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(path))
    return buf.tell()


def _compile(path: Path) -> None:
    if f"{sys.version_info.major}.{sys.version_info.minor}" != PYTHON:
        print(f"layers: not byte-compiling (running {sys.version.split()[0]}, target {PYTHON})", file=sys.stderr)
        return
    ok = compileall.compile_dir(str(path), quiet=2, workers=1,  # no process pool: importable anywhere
                                invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    if not ok:  # a third-party file with Python 2 syntax (test data, templates) is not fatal
        print(f"layers: some files under {path} did not compile (left as source)", file=sys.stderr)


def forbidden_in(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.name.lower().split("-")[0].split(".")[0] in FORBIDDEN)


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    """One builder at a time (pytest-xdist workers, a `cdk synth` next to a test run)."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _publish(tmp: Path, final: Path) -> None:
    """Swap a finished build into place with renames, so a reader never sees a half-built directory."""
    old = final.with_name(f".old-{final.name}-{os.getpid()}")
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def build_deps(arch: str, *, force: bool = False, out: Path = OUT) -> Path:
    if arch not in ARCHES:
        raise BuildError(f"layers: arch must be one of {sorted(ARCHES)}, got {arch!r}")
    core, billing = layer_requirements()
    key = cache_key([*core, "--billing--", *billing], arch)
    deps = out / f"deps-{arch}"
    stamp = deps / ".key"  # dot files next to python/ are not layer content (infra excludes them from the asset)
    if not force and stamp.exists() and stamp.read_text() == key:
        return deps
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-deps-{arch}-", dir=out))
    try:
        for name, reqs, site in (("core", core, tmp / "python"), ("billing", billing, tmp / BILLING_LAYER / "python")):
            site.mkdir(parents=True)
            req_file = out / f"requirements-{arch}-{name}.txt"
            req_file.write_text("\n".join(reqs) + "\n")
            subprocess.run(_uv("pip", "install", "--quiet", "--no-deps", "--only-binary", ":all:",
                               "--python-platform", f"{ARCHES[arch]}-manylinux_2_34", "--python-version", PYTHON,
                               "--target", str(site), "-r", str(req_file)), cwd=ROOT, check=True)
            for junk in [*site.rglob("__pycache__"), site / "bin", *(site / d for d in UNUSED_DIRS)]:
                shutil.rmtree(junk, ignore_errors=True)
            for unused in [f for f in site.rglob("*") if f.suffix in UNUSED_SUFFIXES and f.is_file()]:
                unused.unlink()
            _compile(site)
        (tmp / ".key").write_text(key)
        _publish(tmp, deps)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return deps


def _sources() -> list[Path]:
    skip = {"__pycache__", "tests", ".pytest_cache"}
    files = [f for base in (ROOT / "shared" / "billow", ROOT / "functions") for f in base.rglob("*")
             if f.is_file() and f.suffix != ".pyc" and not skip.intersection(f.relative_to(ROOT).parts)]
    return sorted(files)


def _asset_path(f: Path) -> Path:
    """Where a source file goes in the code asset: billow/ and functions/ at its root, and the RDS CA bundle
    (layers/rds_ca.py) as /var/task/rds-ca-bundle.pem, which BILLOW_DB_CA_BUNDLE names in every function."""
    if f == RDS_CA_BUNDLE:
        return Path(RDS_CA_ASSET_NAME)
    return f.relative_to(ROOT / "shared") if f.is_relative_to(ROOT / "shared") else f.relative_to(ROOT)


def build_code(out: Path = OUT) -> Path:
    """The code asset, in a directory named by the hash of its sources: unchanged code is reused, and a
    directory another process is zipping is never rewritten under it."""
    files = [*_sources(), RDS_CA_BUNDLE]
    h = hashlib.sha256(f"{PYTHON}\0{sys.version_info[:2]}".encode())
    for f in files:
        h.update(str(_asset_path(f)).encode() + b"\0" + f.read_bytes() + b"\0")
    code = out / f"code-{h.hexdigest()[:16]}"
    if code.is_dir():
        return code
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-code-", dir=out))
    try:
        for f in files:
            rel = _asset_path(f)
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, tmp / rel)
        _compile(tmp)
        _publish(tmp, code)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    # Older versions of the code asset, but the newest few: another process (a test session, a synth) that built one
    # a moment ago may still be synthesizing from it while the sources change under a shared checkout.
    older = sorted((d for d in out.glob("code-*") if d != code), key=lambda d: d.stat().st_mtime, reverse=True)
    for stale in older[KEEP_CODE_VERSIONS:]:
        shutil.rmtree(stale, ignore_errors=True)
    return code


def _layer_sizes(layer: Path) -> tuple[int, int]:
    """(unzipped, zipped) of one layer's python/ directory, cached next to it (zipping 80 MB takes seconds)."""
    cached = layer / ".sizes.json"
    if cached.exists():
        data = json.loads(cached.read_text())
        return int(data["unzipped"]), int(data["zipped"])
    if not (layer / "python").is_dir():
        return 0, 0
    sizes = dir_size(layer / "python"), zipped_size(layer / "python")
    cached.write_text(json.dumps({"unzipped": sizes[0], "zipped": sizes[1]}))
    return sizes


def check(deps: Path, code: Path) -> Sizes:
    for where in (deps / "python", deps / BILLING_LAYER / "python", code):
        if where.is_dir() and (found := forbidden_in(where)):
            raise BuildError(f"layers: {found} found in {where}; chdb must never be in a Lambda asset")
    (core_unzipped, core_zipped), (billing_unzipped, billing_zipped) = (
        _layer_sizes(deps), _layer_sizes(deps / BILLING_LAYER))
    handlers = tuple(sorted(p.parent.name for p in (code / "functions").glob("*/handler.py")))
    sizes = Sizes(core_unzipped=core_unzipped, core_zipped=core_zipped, billing_unzipped=billing_unzipped,
                  billing_zipped=billing_zipped, code_unzipped=dir_size(code), code_zipped=zipped_size(code),
                  functions=handlers)
    if over := sorted(name for name, total in sizes.per_function().items() if total >= FUNCTION_UNZIPPED_LIMIT):
        raise BuildError(f"layers: {', '.join(over)} exceed Lambda's unzipped limit (code + layers): {sizes.report()}")
    return sizes


def build(arch: str = "arm64", *, force: bool = False, out: Path = OUT) -> tuple[Path, Path, Sizes]:
    """Build (or reuse) the dependency layers and the code asset; returns (deps, code, sizes): deps/python is the
    core layer, deps/BILLING_LAYER/python the billing layer."""
    with _locked(out):
        deps = build_deps(arch, force=force, out=out)
        code = build_code(out)
        return deps, code, check(deps, code)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m layers.build", description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", choices=sorted(ARCHES), default="arm64")
    ap.add_argument("--force", action="store_true", help="rebuild the dependencies layer even if cached")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    deps, code, sizes = build(args.arch, force=args.force)
    print(f"layers: {sizes.report()}")
    print(f"layers: {deps}/python, {deps}/{BILLING_LAYER}/python and {code} ready in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
