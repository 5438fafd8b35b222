"""Build the Lambda assets without Docker, from the lockfile:

  build/lambda/deps/python/...   third-party dependencies: manylinux wheels for the Lambda architecture
  build/lambda/code/{billow,functions}   Billow's own code (the shared core and the thin handlers)

Both are byte-compiled (Lambda's file system is read-only: a .pyc not shipped is compiled on every cold
start). chdb is never included (the `embedded` extra stays out), nor boto3/botocore, which the Lambda
Python runtime provides. Sizes are checked against Lambda's limits.
Run: .venv/bin/python -m layers.build [--arch arm64|x86_64] [--python 3.13]
"""

from __future__ import annotations

import argparse
import compileall
import hashlib
import io
import shutil
import subprocess
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "build" / "lambda"
LAYER_ZIP_LIMIT = 50 * 1024 * 1024  # direct upload limit for one layer, zipped
FUNCTION_UNZIPPED_LIMIT = 250 * 1024 * 1024  # function + all its layers, unzipped
EXCLUDED = {"chdb", "boto3", "botocore", "s3transfer", "jmespath"}  # jmespath comes with the runtime's boto3
UV_PYTHON = shutil.which("python3") or "python3"  # scripts/setup.sh installs uv there
# Lambda's python3.12/3.13 runtimes run on Amazon Linux 2023 (glibc 2.34): manylinux_2_34 wheels and older.
PLATFORMS = {"arm64": "aarch64-manylinux_2_34", "x86_64": "x86_64-manylinux_2_34"}


def requirements() -> list[str]:
    out = subprocess.run([UV_PYTHON, "-m", "uv", "export", "--frozen", "--no-dev", "--no-emit-project",
                          "--no-hashes", "--no-header", "--no-annotate", "--extra", "postgres", "--extra", "kafka",
                          "--no-default-groups"], cwd=ROOT, check=True, capture_output=True, text=True).stdout
    reqs = []
    for line in out.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name = line.split("==")[0].split(";")[0].strip().lower().replace("_", "-")
        if name in EXCLUDED:
            continue
        reqs.append(line)
    return reqs


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def zipped_size(path: Path) -> int:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(path.rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(path))
    return buf.tell()


def build(arch: str = "arm64", python: str = "3.13") -> dict[str, int]:
    reqs = requirements()
    key = hashlib.sha256(("\n".join(reqs) + arch + python).encode()).hexdigest()[:16]
    deps = OUT / "deps"
    stamp = OUT / "deps.key"
    if not (stamp.exists() and stamp.read_text() == key and deps.exists()):
        shutil.rmtree(deps, ignore_errors=True)
        (deps / "python").mkdir(parents=True)
        req_file = OUT / "requirements.txt"
        req_file.write_text("\n".join(reqs) + "\n")
        subprocess.run([UV_PYTHON, "-m", "uv", "pip", "install", "--quiet", "--no-deps", "--target",
                        str(deps / "python"), "--python-platform", PLATFORMS[arch], "--python-version", python, "--only-binary", ":all:", "-r", str(req_file)],
                       cwd=ROOT, check=True)
        for junk in (deps / "python").rglob("__pycache__"):
            shutil.rmtree(junk, ignore_errors=True)
        compileall.compile_dir(str(deps / "python"), quiet=1, workers=0, legacy=False)
        stamp.write_text(key)
    code = OUT / "code"
    shutil.rmtree(code, ignore_errors=True)
    code.mkdir(parents=True)
    shutil.copytree(ROOT / "shared" / "billow", code / "billow", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "functions", code / "functions", ignore=shutil.ignore_patterns("__pycache__"))
    compileall.compile_dir(str(code), quiet=1)
    if any((deps / "python").glob("chdb*")):
        raise SystemExit("layers: chdb must never be in a Lambda layer")
    sizes = {"deps_unzipped": dir_size(deps), "deps_zipped": zipped_size(deps),
             "code_unzipped": dir_size(code), "code_zipped": zipped_size(code)}
    if sizes["deps_zipped"] > LAYER_ZIP_LIMIT:
        raise SystemExit(f"layers: dependencies layer is {sizes['deps_zipped']} bytes zipped (limit 50 MB)")
    if sizes["deps_unzipped"] + sizes["code_unzipped"] > FUNCTION_UNZIPPED_LIMIT:
        raise SystemExit("layers: function + layers exceed 250 MB unzipped")
    return sizes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", choices=sorted(PLATFORMS), default="arm64")
    ap.add_argument("--python", default="3.13")
    args = ap.parse_args()
    sizes = build(args.arch, args.python)
    mb = {k: f"{v / 1024 / 1024:.1f} MB" for k, v in sizes.items()}
    print(f"layers: deps {mb['deps_zipped']} zipped ({mb['deps_unzipped']} unzipped), "
          f"code {mb['code_zipped']} zipped ({mb['code_unzipped']} unzipped) in {OUT}")


if __name__ == "__main__":
    main()
