"""Fingerprints of the OpenAPI operations each SDK (sdk/python, sdk/node, sdk/go) calls, so that a change to one
of them in shared/billow/web/openapi.json fails until the SDK is reviewed; operations no SDK calls may come and go.

Each SDK keeps `openapi.fingerprint`: one line per operation it calls, `METHOD /path hash`, the hash over the
operation's parameters (path-level ones too), request body and responses with every $ref resolved and
documentation-only keys (description, summary, examples, x-*) left out. The operations an SDK calls are read
from its source: every request goes through one helper called as `("METHOD", "/api/...", ...)`, and a path
literal anywhere else is an error, so a new call cannot slip past.

    .venv/bin/python scripts/sdk_fingerprint.py            # verify; exit 1 naming each SDK and operation
    .venv/bin/python scripts/sdk_fingerprint.py --update   # rewrite the files after updating an SDK
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "shared" / "billow" / "web" / "openapi.json"
FILE = "openapi.fingerprint"
# SDK -> its source files (tests and examples are not the SDK), relative to sdk/<name>.
SOURCES = {"python": "billow_sdk/**/*.py", "node": "src/**/*.ts", "go": "*.go"}
HEADER = ("# The OpenAPI operations this SDK calls, each with a fingerprint of its parameters, request and responses.\n"
          "# Checked by scripts/sdk_fingerprint.py (and tests/sdk); `--update` rewrites this file.\n")

_Q = "[\"'`]"
CALL = re.compile(rf"{_Q}(GET|POST|PUT|PATCH|DELETE){_Q}\s*,\s*{_Q}(/api/[^\"'`]*){_Q}")
PATH_LITERAL = re.compile(rf"{_Q}/api/[^\"'`]*{_Q}")
DOC_ONLY = {"description", "summary", "example", "examples", "externalDocs"}


def _resolve(node: Any, doc: dict[str, Any], seen: tuple[str, ...] = ()) -> Any:
    if isinstance(node, list):
        return [_resolve(n, doc, seen) for n in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        if ref in seen:  # a recursive schema: name it, do not expand it again
            return {"$ref": ref}
        target: Any = doc
        for part in ref[2:].split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        return _resolve(target, doc, (*seen, ref))
    return {k: _resolve(v, doc, seen) for k, v in node.items() if k not in DOC_ONLY and not k.startswith("x-")}


def fingerprint(doc: dict[str, Any], operation: str) -> str | None:
    """`operation` is "METHOD /path"; None when the document has no such operation."""
    method, path = operation.split(" ", 1)
    item = doc.get("paths", {}).get(path) or {}
    op = item.get(method.lower())
    if op is None:
        return None
    shape = {"parameters": [*item.get("parameters", []), *op.get("parameters", [])],
             "requestBody": op.get("requestBody"), "responses": op.get("responses")}
    canonical = json.dumps(_resolve(shape, doc), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def called(sdk_dir: Path, pattern: str) -> tuple[set[str], list[str]]:
    """The operations the SDK's source calls, and the path literals found outside such a call."""
    ops: set[str] = set()
    stray: list[str] = []
    for src in sorted(sdk_dir.glob(pattern)):
        if src.name.endswith("_test.go"):
            continue
        text = src.read_text()
        spans = []
        for m in CALL.finditer(text):
            ops.add(f"{m[1]} {m[2]}")
            spans.append(m.span(2))
        for lit in PATH_LITERAL.finditer(text):
            if not any(a <= lit.start() + 1 < b for a, b in spans):
                stray.append(f"{src.relative_to(sdk_dir)}: {lit[0]}")
    return ops, stray


def declared(sdk_dir: Path) -> dict[str, str] | None:
    f = sdk_dir / FILE
    if not f.exists():
        return None
    rows = (line.split() for line in f.read_text().splitlines() if line.strip() and not line.startswith("#"))
    return {f"{method} {path}": digest for method, path, digest in rows}


def check(doc: dict[str, Any], sdk_root: Path = ROOT / "sdk") -> list[str]:
    """Every way the SDKs and the document disagree, one line each naming the SDK and the operation."""
    problems: list[str] = []
    for name, pattern in SOURCES.items():
        sdk_dir, label = sdk_root / name, f"sdk/{name}"
        ops, stray = called(sdk_dir, pattern)
        problems += [f"{label}: path literal outside a (\"METHOD\", \"/api/...\") call, so the check cannot see "
                     f"it: {s}" for s in stray]
        decl = declared(sdk_dir)
        if decl is None:
            problems.append(f"{label}: no {FILE} (run scripts/sdk_fingerprint.py --update)")
            continue
        for op in sorted(ops - decl.keys()):
            problems.append(f"{label}: calls {op}, which {FILE} does not list (run scripts/sdk_fingerprint.py --update)")
        for op in sorted(decl.keys() - ops):
            problems.append(f"{label}: {FILE} lists {op}, which the source no longer calls (run --update)")
        for op in sorted(decl.keys() & ops):
            now = fingerprint(doc, op)
            if now is None:
                problems.append(f"{label}: calls {op}, which the OpenAPI document no longer has")
            elif now != decl[op]:
                problems.append(f"{label}: {op} changed in the OpenAPI document; update the SDK for it, then run "
                                "scripts/sdk_fingerprint.py --update")
    return problems


def update(doc: dict[str, Any], sdk_root: Path = ROOT / "sdk") -> None:
    for name, pattern in SOURCES.items():
        ops, _ = called(sdk_root / name, pattern)
        lines = []
        for op in sorted(ops):
            digest = fingerprint(doc, op)
            if digest is None:
                raise SystemExit(f"sdk/{name}: calls {op}, which the OpenAPI document does not have")
            lines.append(f"{op} {digest}\n")
        (sdk_root / name / FILE).write_text(HEADER + "".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--update", action="store_true", help="rewrite each SDK's openapi.fingerprint")
    parser.add_argument("--doc", type=Path, default=DOC, help="the OpenAPI document (default: the one Billow serves)")
    args = parser.parse_args(argv)
    doc = json.loads(args.doc.read_text())
    if args.update:
        update(doc)
    problems = check(doc)
    for p in problems:
        print(p, file=sys.stderr)
    for name in SOURCES:
        decl = declared(ROOT / "sdk" / name) or {}
        print(f"sdk/{name}: {len(decl)} operations: {', '.join(sorted(decl))}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
