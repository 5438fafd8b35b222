"""OpenMeter's official clients against Billow: per client, how many of the operations it calls Billow serves, and how
many pass through it in the tests (tests/clients). The figures come from tests/clients/coverage.json, which the client
tests keep honest (each asserts that exactly its `passing` operations passed through the real client against
`billow serve`, and that every operation the client calls is in `passing` or `not_driven` with the reason), and from
the served OpenAPI document.

    .venv/bin/python scripts/client_coverage.py            # print the README table
    .venv/bin/python scripts/client_coverage.py --check    # exit 1 if README.md's table differs

tests/clients/test_coverage_table.py runs the check.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
COVERAGE = ROOT / "tests" / "clients" / "coverage.json"
DOC = ROOT / "shared" / "billow" / "web" / "openapi.json"
README = ROOT / "README.md"
BEGIN, END = "<!-- client-coverage:begin -->", "<!-- client-coverage:end -->"
METHODS = ("get", "put", "post", "delete", "patch")


def node_operations(package: Path) -> list[str]:
    """`METHOD /path` of every request the Node SDK's source makes (its client and portal classes)."""
    found = set()
    for f in sorted((package / "dist" / "src").glob("*/*.js")):
        found |= {f"{m} {p}" for m, p in re.findall(r"client\.(GET|POST|PUT|DELETE|PATCH)\(['\"]([^'\"]+)", f.read_text())}
    return sorted(found)


def python_operations() -> list[str]:
    """`METHOD /path` of every request builder in the `openmeter` Python client."""
    import openmeter._generated.operations._operations as ops

    text = Path(ops.__file__).read_text(encoding="utf-8")
    found = set()
    for body in re.split(r"\ndef build_", text)[1:]:
        url, method = re.search(r'_url = "([^"]+)"', body), re.search(r'HttpRequest\(method="([A-Z]+)"', body)
        if url and method:
            found.add(f"{method.group(1)} {url.group(1)}")
    return sorted(found)


def shape(path: str) -> str:
    return re.sub(r"\{[^}/]+\}", "{}", path)


def served() -> set[str]:
    doc = json.loads(DOC.read_text(encoding="utf-8"))
    return {f"{m.upper()} {shape(p)}" for p, item in doc["paths"].items() for m in item if m in METHODS}


def figures(client: dict[str, Any], served_ops: set[str]) -> tuple[int, int, int]:
    ops = client["operations"]
    return len(ops), sum(shape(op) in served_ops for op in ops), len(client["passing"])


def table(coverage: dict[str, Any] | None = None) -> str:
    coverage = coverage or json.loads(COVERAGE.read_text(encoding="utf-8"))
    served_ops = served()
    rows = ["| Client (pinned) | Operations it calls | Served by Billow | Pass through it in the tests | Client bugs worked around |",
            "|---|---:|---:|---:|---|"]
    for client in coverage["clients"]:
        total, on_billow, passing = figures(client, served_ops)
        bugs = "; ".join(client["workarounds"]) or "none"
        rows.append(f"| {client['name']} | {total} | {on_billow} | {passing} | {bugs} |")
    return "\n".join(rows)


def readme_table() -> str:
    text = README.read_text(encoding="utf-8")
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[start:end].strip()


def main(argv: list[str]) -> int:
    if "--check" in argv:
        if readme_table() != table():
            print("README.md's client coverage table differs from scripts/client_coverage.py's:\n" + table())
            return 1
        return 0
    print(table())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
