"""Build the Lambda assets from the lockfile, without Docker.

  build/layers/deps-<arch>/python/...  the dependencies layer: manylinux wheels for the Lambda architecture
  build/layers/code-<hash>/{billow,functions}  the function code asset: the shared core and the handlers

Run from the repo root: `.venv/bin/python -m layers.build [--arch arm64|x86_64] [--force]`.

* Requirements come from `uv export --frozen` (uv.lock) with the `postgres`, `kafka` and `billing` (stripe, fpdf2) extras only: never
  `embedded` (chdb, ~530 MB) nor the dev/infra groups. The build fails if chdb turns up anyway.
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
* Sizes are checked: the layer < 50 MB zipped (direct upload limit) and code + layer < 250 MB unzipped.
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

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "build" / "layers"
PYTHON = "3.12"  # the Lambda runtime (infra/constructs/functions.py RUNTIME) and the venv
ARCHES = {"arm64": "aarch64", "x86_64": "x86_64"}
LAYER_ZIP_LIMIT = 50 * 1024 * 1024  # one layer, zipped (direct upload)
FUNCTION_UNZIPPED_LIMIT = 250 * 1024 * 1024  # function code + all its layers, unzipped
FORBIDDEN = ("chdb",)  # must never reach a Lambda asset
RUNTIME_PROVIDED = frozenset({"boto3", "botocore", "s3transfer"})
EXTRAS = ("postgres", "kafka", "billing")
UNUSED_DIRS = ("sqlalchemy/testing", "alembic/testing", "mako/testing", "simplejson/tests", "certifi/tests")
UNUSED_SUFFIXES = frozenset({".c", ".pxd", ".pyi"})


class BuildError(SystemExit):
    pass


@dataclass(frozen=True)
class Sizes:
    deps_unzipped: int
    deps_zipped: int
    code_unzipped: int
    code_zipped: int

    @property
    def function_unzipped(self) -> int:
        return self.deps_unzipped + self.code_unzipped

    def report(self) -> str:
        def mb(n: int) -> str:
            return f"{n / 1024 / 1024:.1f} MB"

        return (f"deps layer {mb(self.deps_zipped)} zipped / {mb(self.deps_unzipped)} unzipped "
                f"(limit {mb(LAYER_ZIP_LIMIT)} zipped); code {mb(self.code_zipped)} zipped / "
                f"{mb(self.code_unzipped)} unzipped; function total {mb(self.function_unzipped)} unzipped "
                f"(limit {mb(FUNCTION_UNZIPPED_LIMIT)})")


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


def requirements() -> list[str]:
    """The locked runtime closure for the Lambda extras, minus what the runtime provides."""
    cmd = _uv("export", "--frozen", "--no-dev", "--no-default-groups", "--no-emit-project", "--no-hashes",
              "--no-header", "--no-annotate", *(a for e in EXTRAS for a in ("--extra", e)))
    out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    reqs = [line.strip() for line in out.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    names = {package_name(r) for r in reqs}
    if bad := names.intersection(FORBIDDEN):
        raise BuildError(f"layers: {sorted(bad)} is in the Lambda requirements; it must never be in a layer")
    return [r for r in reqs if package_name(r) not in RUNTIME_PROVIDED]


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
    reqs = requirements()
    key = cache_key(reqs, arch)
    deps = out / f"deps-{arch}"
    stamp = deps / ".key"  # dot files next to python/ are not layer content (infra excludes them from the asset)
    if not force and stamp.exists() and stamp.read_text() == key:
        return deps
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-deps-{arch}-", dir=out))
    site = tmp / "python"
    site.mkdir()
    req_file = out / f"requirements-{arch}.txt"
    req_file.write_text("\n".join(reqs) + "\n")
    try:
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


def build_code(out: Path = OUT) -> Path:
    """The code asset, in a directory named by the hash of its sources: unchanged code is reused, and a
    directory another process is zipping is never rewritten under it."""
    files = _sources()
    h = hashlib.sha256(f"{PYTHON}\0{sys.version_info[:2]}".encode())
    for f in files:
        h.update(str(f.relative_to(ROOT)).encode() + b"\0" + f.read_bytes() + b"\0")
    code = out / f"code-{h.hexdigest()[:16]}"
    if code.is_dir():
        return code
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-code-", dir=out))
    try:
        for f in files:
            rel = f.relative_to(ROOT / "shared") if f.is_relative_to(ROOT / "shared") else f.relative_to(ROOT)
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, tmp / rel)
        _compile(tmp)
        _publish(tmp, code)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for stale in out.glob("code-*"):  # older versions of the code asset
        if stale != code:
            shutil.rmtree(stale, ignore_errors=True)
    return code


def _deps_sizes(deps: Path) -> tuple[int, int]:
    """(unzipped, zipped) of the layer content, cached next to it (zipping 80 MB takes seconds)."""
    cached = deps / ".sizes.json"
    if cached.exists():
        data = json.loads(cached.read_text())
        return int(data["unzipped"]), int(data["zipped"])
    sizes = dir_size(deps / "python"), zipped_size(deps / "python")
    cached.write_text(json.dumps({"unzipped": sizes[0], "zipped": sizes[1]}))
    return sizes


def check(deps: Path, code: Path) -> Sizes:
    for where in (deps / "python", code):
        if found := forbidden_in(where):
            raise BuildError(f"layers: {found} found in {where}; chdb must never be in a Lambda asset")
    deps_unzipped, deps_zipped = _deps_sizes(deps)
    sizes = Sizes(deps_unzipped=deps_unzipped, deps_zipped=deps_zipped,
                  code_unzipped=dir_size(code), code_zipped=zipped_size(code))
    if sizes.deps_zipped >= LAYER_ZIP_LIMIT:
        raise BuildError(f"layers: the dependencies layer is too big: {sizes.report()}")
    if sizes.function_unzipped >= FUNCTION_UNZIPPED_LIMIT:
        raise BuildError(f"layers: code + layer exceed Lambda's unzipped limit: {sizes.report()}")
    return sizes


def build(arch: str = "arm64", *, force: bool = False, out: Path = OUT) -> tuple[Path, Path, Sizes]:
    """Build (or reuse) the dependencies layer and the code asset; returns (deps, code, sizes)."""
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
    print(f"layers: {deps}/python and {code} ready in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
