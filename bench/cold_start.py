"""Cold import of every Lambda handler module (each functions/*/handler.py, migrate included): a fresh
interpreter imports it, best and median of N runs.

Bytecode is compiled first (the Lambda layer ships compiled .pyc as well; `scripts/setup.sh` compiles the
locked dependencies), so the figure is import work, not parsing. It is not a Lambda cold start: it leaves out
what AWS does before the handler module is imported (building the execution environment: fetching and unpacking
the code asset and layers, starting the runtime), which only a deployed stack shows (its INIT duration in the
REPORT log line). Budget: < 300 ms each (issue 4), for the import, judged on its CPU time (the wall time is
printed beside it: on a machine other work loads, it includes waiting for a core).
Run: .venv/bin/python -m bench.cold_start [--runs 5]
"""

from __future__ import annotations

import argparse
import compileall
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HANDLERS = sorted(f"functions.{p.parent.name}.handler" for p in (ROOT / "functions").glob("*/handler.py"))
# wall and CPU time of the import alone, in ms (CPU: this interpreter's, all its threads)
PROBE = ("import time; t, c = time.perf_counter(), time.process_time(); import {m}; "
         "print((time.perf_counter() - t) * 1000, (time.process_time() - c) * 1000)")
BUDGET_MS = 300


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args, _ = ap.parse_known_args()
    for d in ("shared", "functions"):
        compileall.compile_dir(str(ROOT / d), quiet=1)
    print(f"Cold import of each Lambda handler module (functions/*/handler.py, {len(HANDLERS)} of them) in a fresh "
          f"interpreter, bytecode compiled: import work only, not a Lambda INIT (no execution-environment build, no "
          f"code or layer download). Budget < {BUDGET_MS} ms each, judged on the import's CPU time (wall time on a "
          f"shared machine adds the wait for a core). Load average {os.getloadavg()[0]:.2f} at the start.")
    for module in HANDLERS:
        runs = [tuple(map(float, subprocess.run([sys.executable, "-c", PROBE.format(m=module)], cwd=ROOT, check=True,
                                                capture_output=True, text=True).stdout.split()))
                for _ in range(args.runs)]
        wall, cpu = sorted(r[0] for r in runs), sorted(r[1] for r in runs)
        verdict = f"< {BUDGET_MS} ms ok" if cpu[0] < BUDGET_MS else f"OVER the {BUDGET_MS} ms budget"
        print(f"cold import {module}: CPU best {cpu[0]:.0f} ms, median {cpu[len(cpu) // 2]:.0f} ms; wall best "
              f"{wall[0]:.0f} ms, median {wall[len(wall) // 2]:.0f} ms ({args.runs} fresh interpreters, load "
              f"{os.getloadavg()[0]:.2f}) {verdict}")


if __name__ == "__main__":
    main()
