"""What a Lambda handler's cold import loads (bench/cold_start.py measures it against the 300 ms budget): the
migrate function needs SQLAlchemy, Alembic and the Kafka admin client only when it runs, not at import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("sqlalchemy", "alembic", "kafka", "confluent_kafka", "pg8000", "boto3")


def loaded_by(module: str) -> list[str]:
    probe = (f"import sys, json; import {module}; "
             f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({list(HEAVY)!r}))))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return list(json.loads(out.strip().splitlines()[-1]))


def test_migrate_handler_imports_no_database_or_kafka_library() -> None:
    assert loaded_by("functions.migrate.handler") == []
