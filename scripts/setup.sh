#!/usr/bin/env bash
# Install Billow and its locked dependencies into .venv (Python 3.12, else 3.13). Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${BILLOW_PYTHON:-}"
if [ -z "$PY" ]; then
  for cand in /root/.pyenv/versions/3.12.*/bin/python3.12 /root/.pyenv/versions/3.13.*/bin/python3.13 \
              "$(command -v python3.12 || true)" "$(command -v python3.13 || true)"; do
    if [ -n "$cand" ] && [ -x "$cand" ]; then PY="$cand"; break; fi
  done
fi
if [ -z "$PY" ]; then
  echo "setup: no Python 3.12 or 3.13 found; set BILLOW_PYTHON=/path/to/python3.12" >&2
  exit 1
fi

# uv (pinned) from PyPI into the user's default Python, used as `python3 -m uv`.
UV_VERSION=0.13.9
if ! python3 -m uv --version 2>/dev/null | grep -q "$UV_VERSION"; then
  echo "setup: installing uv $UV_VERSION"
  python3 -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
fi
echo "setup: installing Billow's locked dependencies into .venv with $PY (about a minute on a cold cache)"
python3 -m uv sync --frozen --compile-bytecode --python "$PY" --extra embedded --extra postgres --extra kafka --extra aws --extra billing
echo "setup: .venv ready ($("$PWD/.venv/bin/python" --version))"
