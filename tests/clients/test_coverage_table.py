"""README.md's table of OpenMeter's clients is the one scripts/client_coverage.py makes from tests/clients/coverage.json
(which test_python_client.py and test_node_client.py check against the real clients) and the served document."""

from __future__ import annotations

import copy
import json

from scripts.client_coverage import COVERAGE, readme_table, table


def test_readme_table_is_the_generated_one() -> None:
    assert readme_table() == table()


def test_the_table_follows_the_coverage_file() -> None:
    coverage = json.loads(COVERAGE.read_text())
    fewer = copy.deepcopy(coverage)
    fewer["clients"][0]["passing"].pop()
    assert table(fewer) != table(coverage)
