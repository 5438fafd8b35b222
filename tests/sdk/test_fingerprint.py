"""The SDKs follow the OpenAPI document: each SDK's openapi.fingerprint lists exactly the operations its source
calls, with the fingerprint of each operation as the document has it now (scripts/sdk_fingerprint.py)."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from scripts.sdk_fingerprint import DOC, FILE, ROOT, SOURCES, check

QUERY = "GET /api/v1/meters/{meterIdOrSlug}/query"


@pytest.fixture
def doc() -> dict[str, Any]:
    return json.loads(DOC.read_text())


@pytest.fixture
def sdk_copy(tmp_path: Path) -> Path:
    """The SDKs' sources and fingerprint files (what the check reads), to edit freely."""
    for name, pattern in SOURCES.items():
        src, dst = ROOT / "sdk" / name, tmp_path / name
        for f in [*src.glob(pattern), src / FILE]:
            (dst / f.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, dst / f.relative_to(src))
    return tmp_path


def test_every_sdk_is_up_to_date_with_the_openapi_document(doc: dict[str, Any]) -> None:
    problems = check(doc)
    assert not problems, "\n".join(problems)


def test_the_script_verifies_and_names_the_operations() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "sdk_fingerprint.py")], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for name in SOURCES:
        # 5: every SDK also reads ingestion receipts (issue 21)
        assert f"sdk/{name}: 5 operations: " in proc.stdout and QUERY in proc.stdout


def test_a_changed_operation_fails_naming_each_sdk_and_the_operation(doc: dict[str, Any]) -> None:
    changed = copy.deepcopy(doc)
    params = changed["paths"]["/api/v1/meters/{meterIdOrSlug}/query"]["get"]["parameters"]
    params[:] = [p for p in params if p.get("$ref") != "#/components/parameters/MeterQuery.windowTimeZone"]
    assert check(changed) == [f"sdk/{name}: {QUERY} changed in the OpenAPI document; update the SDK for it, then "
                              "run scripts/sdk_fingerprint.py --update" for name in SOURCES]


def test_a_change_behind_a_ref_is_seen_and_documentation_is_not(doc: dict[str, Any]) -> None:
    reworded = copy.deepcopy(doc)
    reworded["components"]["schemas"]["PortalToken"]["description"] = "Reworded."
    assert check(reworded) == []
    changed = copy.deepcopy(doc)
    changed["components"]["schemas"]["PortalToken"]["properties"]["subject"]["maxLength"] = 64
    problems = check(changed)
    assert len(problems) == 3 and all("POST /api/v1/portal/tokens changed" in p for p in problems)


def test_operations_no_sdk_calls_may_come_and_go(doc: dict[str, Any]) -> None:
    grown = copy.deepcopy(doc)
    grown["paths"]["/api/v1/widgets"] = {"post": {"operationId": "createWidget", "requestBody": {"content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/Widget"}}}}, "responses": {"201": {}}}}
    grown["components"]["schemas"]["Widget"] = {"type": "object"}
    del grown["paths"]["/api/v1/features"]
    assert check(grown) == []


def test_a_removed_operation_fails(doc: dict[str, Any]) -> None:
    gone = copy.deepcopy(doc)
    del gone["paths"]["/api/v1/portal/tokens"]["post"]
    assert "sdk/go: calls POST /api/v1/portal/tokens, which the OpenAPI document no longer has" in check(gone)


def test_a_call_the_fingerprint_does_not_list_fails(doc: dict[str, Any], sdk_copy: Path) -> None:
    go = sdk_copy / "go" / "billow.go"
    go.write_text(go.read_text() + '\nfunc (c *Client) features(ctx context.Context) error {\n'
                  '\treturn c.do(ctx, "GET", "/api/v1/features", nil, nil, nil, "", true, nil)\n}\n')
    assert check(doc, sdk_copy) == ["sdk/go: calls GET /api/v1/features, which openapi.fingerprint does not list "
                                    "(run scripts/sdk_fingerprint.py --update)"]


def test_a_path_outside_the_call_helper_fails(doc: dict[str, Any], sdk_copy: Path) -> None:
    py = sdk_copy / "python" / "billow_sdk" / "client.py"
    py.write_text(py.read_text() + '\nFEATURES = "/api/v1/features"\n')
    node = sdk_copy / "node" / "src" / "index.ts"
    node.write_text(node.read_text().replace('this.call("POST", "/api/v1/portal/tokens"', 'this.call("GET", "/x"'))
    assert check(doc, sdk_copy) == [
        'sdk/python: path literal outside a ("METHOD", "/api/...") call, so the check cannot see it: '
        'billow_sdk/client.py: "/api/v1/features"',
        "sdk/node: openapi.fingerprint lists POST /api/v1/portal/tokens, which the source no longer calls (run --update)"]
