"""The domain/services rule (docs/architecture.md, issue 19 item 3), checked on the source itself: the domain
imports only the standard library and the pure billow modules; no service imports an adapter or an
infrastructure library (fpdf2 included: rendering is an adapter behind ports.DocumentRenderer)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import billow

PACKAGE = Path(billow.__file__).resolve().parent
# Besides the standard library: the pure billow modules and python-jsonpath (meters' JSONPath, pure Python).
DOMAIN_MAY_IMPORT = ("billow.domain", "billow.errors", "billow.exact", "billow.timeutil", "billow.ids", "billow.jsonx",
                     "jsonpath")
INFRASTRUCTURE = ("fpdf", "sqlalchemy", "boto3", "botocore", "stripe", "confluent_kafka", "clickhouse_connect", "chdb",
                  "pg8000", "aws_msk_iam_sasl_signer", "standardwebhooks", "billow.adapters", "billow.bootstrap")


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module or module.name) of every absolute import in the file, also those inside functions (lazy imports)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def _within(module: str, roots: tuple[str, ...]) -> bool:
    return any(module == r or module.startswith(r + ".") for r in roots)


def test_the_domain_imports_only_the_standard_library_and_pure_billow_modules() -> None:
    wrong = [f"{path.name}:{line} imports {module}" for path in sorted((PACKAGE / "domain").glob("*.py"))
             for line, module in imports(path)
             if not (module.split(".")[0] in sys.stdlib_module_names or _within(module, DOMAIN_MAY_IMPORT))]
    assert wrong == []


def test_no_service_imports_an_adapter_or_an_infrastructure_library() -> None:
    wrong = [f"{path.name}:{line} imports {module}" for path in sorted((PACKAGE / "services").glob("*.py"))
             for line, module in imports(path) if _within(module, INFRASTRUCTURE)]
    assert wrong == []
