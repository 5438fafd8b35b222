"""Run every benchmark: `.venv/bin/python -m bench` (or `make bench`)."""

import os
import subprocess
import sys

modules = ["bench.cold_start", "bench.ingest", "bench.receipts", "bench.query", "bench.entitlement_check",
           "bench.billing_run", "bench.billing_rate_cards", "bench.latest_fill", "bench.llm_costs", "bench.documents", "bench.serve_concurrency", "bench.backtest",
           "bench.request_body"]
if os.environ.get("BILLOW_TEST_KAFKA"):  # the Kafka path needs a broker (scripts/services.sh starts one)
    modules.append("bench.kafka_path")
for module in modules:
    print(f"== {module}", flush=True)
    subprocess.run([sys.executable, "-m", module, *sys.argv[1:]], check=True)
