"""Cold import of every Lambda handler module (each functions/*/handler.py, migrate included): a fresh
interpreter imports it, best and median of N runs.

Bytecode is compiled first (the Lambda layer ships compiled .pyc as well; `scripts/setup.sh` compiles the
locked dependencies), so the figure is import work, not parsing. It is not a Lambda cold start: it leaves out
what AWS does before the handler module is imported (building the execution environment: fetching and unpacking
the code asset and layers, starting the runtime), which only a deployed stack shows (its INIT duration in the
REPORT log line). Budget: < 300 ms each (issue 4), for the import.
Run: .venv/bin/python -m bench.cold_start [--runs 5]
"""

from __future__ import annotations

import argparse
import compileall
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HANDLERS = sorted(f"functions.{p.parent.name}.handler" for p in (ROOT / "functions").glob("*/handler.py"))
PROBE = "import time; t = time.perf_counter(); import {m}; print((time.perf_counter() - t) * 1000)"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args, _ = ap.parse_known_args()
    for d in ("shared", "functions"):
        compileall.compile_dir(str(ROOT / d), quiet=1)
    for module in HANDLERS:
        times = sorted(float(subprocess.run([sys.executable, "-c", PROBE.format(m=module)], cwd=ROOT, check=True,
                                            capture_output=True, text=True).stdout) for _ in range(args.runs))
        verdict = "ok" if times[0] < 300 else "OVER the 300 ms budget"
        print(f"cold import {module}: best {times[0]:.0f} ms, median {times[len(times) // 2]:.0f} ms "
              f"({args.runs} fresh interpreters) {verdict}")


if __name__ == "__main__":
    main()
