"""Run every benchmark: `.venv/bin/python -m bench` (or `make bench`)."""

import subprocess
import sys

for module in ("bench.ingest", "bench.query"):
    print(f"== {module}", flush=True)
    subprocess.run([sys.executable, "-m", module, *sys.argv[1:]], check=True)
