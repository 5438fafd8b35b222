"""Schemathesis fuzz over every operation of Billow's OpenAPI document, against a live `billow serve`.

Whatever a client sends — schema-valid requests, deliberately invalid ones (schemathesis' negative mode),
hostile strings (quotes, `;`, `--`, NUL, path tricks, long unicode) — Billow must answer with a status below
500, and every error response must be RFC 7807 `application/problem+json` (DESIGN.md §3-4)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from tests.e2e.conftest import Server

CONFIG = """
meters:
  - slug: requests
    eventType: request
    aggregation: SUM
    valueProperty: $.tokens
    groupBy: {route: $.route, model: $.model}
"""

DOC_PATH = Path(__file__).parents[2] / "shared/billow/api/openapi.json"
DOC = json.loads(DOC_PATH.read_text(encoding="utf-8"))
METHODS = ("get", "put", "post", "delete", "patch")
OPERATIONS = [(m.upper(), p) for p, item in DOC["paths"].items() for m in item if m in METHODS]

# Strings that have broken parsers, SQL builders, JSONPath evaluators and URL routing elsewhere.
HOSTILE = [
    "'", '"', "`", "\\", "';--", "'; DROP TABLE meters; --", "\" OR 1=1 --", "a;b", "--", "/*", "*/",
    "a\x00b", "\x00", "%00", "%", "%2F", "../../etc/passwd", "..", ".", "/", "?", "#", "&", "=",
    "{{x}}", "${x}", "$.a", "$..*", "$[?(@.a)]", "[", "]", "{", "}", "null", "true", "-1", "1e309", "NaN",
    " ", "\t", "\n", "\r\n", "\u202e", "\ufeff", "\ud7ff", "😀" * 64, "ü" * 2000, "Ω≈ç√∫" * 300, "a" * 10000,
]

MAX_EXAMPLES = 6

# Loaded from the shipped file rather than with `schemathesis.pytest.from_fixture` (its lazy loader reads
# `Function._nodeid`, which pytest 9 removed); test_served_document_is_the_fuzzed_one ties the two together.
schema = schemathesis.openapi.from_path(DOC_PATH)
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE])


def _drain(srv: Server, sink: list[str]) -> None:
    """Keep reading the server's output: an undrained pipe would block its logging (and so the server)."""
    assert srv.proc is not None and srv.proc.stdout is not None
    for line in srv.proc.stdout:
        sink.append(line)


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, list[str]]]:
    root = tmp_path_factory.mktemp("fuzz")
    (root / "billow.yaml").write_text(CONFIG)
    srv = Server(root / "data", root / "billow.yaml").start()
    log: list[str] = []
    threading.Thread(target=_drain, args=(srv, log), daemon=True).start()
    yield srv, log
    assert srv.stop() == 0


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


def test_served_document_is_the_fuzzed_one(fuzz_server: tuple[Server, list[str]], http: requests.Session) -> None:
    srv, _ = fuzz_server
    assert http.get(f"{srv.url}/api/v1/openapi.json", timeout=30).json() == DOC


def assert_sound(resp: Any, label: str, log: list[str]) -> None:
    """Status < 500; every 4xx/5xx is problem+json with the matching status."""
    detail = f"{label} -> {resp.status_code} {resp.text[:500]!r}"
    if resp.status_code >= 500:
        tail = "".join(log[-40:])
        raise AssertionError(f"server error: {detail}\n--- server log tail ---\n{tail}")
    if resp.status_code >= 400:
        # schemathesis' Response keeps headers as {name: [values]}; requests' as a case-insensitive dict.
        raw = {k.lower(): v for k, v in resp.headers.items()}.get("content-type", "")
        ctype = raw[0] if isinstance(raw, list) else raw
        assert ctype.split(";")[0].strip() == "application/problem+json", f"error not problem+json: {detail}"
        body = resp.json()
        assert body.get("status") == resp.status_code, f"problem status mismatch: {detail}"
        assert body.get("title"), f"problem without title: {detail}"


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture])
def test_no_server_errors(case: Any, fuzz_server: tuple[Server, list[str]], http: requests.Session) -> None:
    srv, log = fuzz_server
    resp = case.call(base_url=srv.url, session=http, timeout=30)
    assert_sound(resp, f"{case.method} {case.formatted_path} query={case.query!r} body={case.body!r}"[:2000], log)


# --- hostile strings, placed deliberately: in each path parameter, each query parameter, each body string ---

def _string_leaves(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(value, str):
        return [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _string_leaves(v, (*path, k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _string_leaves(v, (*path, i))]
    return []


def _replace(value: Any, path: tuple[Any, ...], new: str) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: _replace(value[head], rest, new)}
    out = list(value)
    out[head] = _replace(out[head], rest, new)
    return out


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_hostile_strings(method: str, path: str, fuzz_server: tuple[Server, list[str]],
                         http: requests.Session) -> None:
    srv, log = fuzz_server
    operation = schema[path][method]
    strategy = operation.as_strategy(generation_mode=GenerationMode.POSITIVE)

    @given(case=strategy, data=st.data())
    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                     HealthCheck.function_scoped_fixture])
    def run(case: Any, data: st.DataObject) -> None:
        hostile = data.draw(st.sampled_from(HOSTILE) | st.text(min_size=1, max_size=50), label="hostile")
        # Path parameters: either the real meter (so the handler gets past the lookup) or the hostile string.
        for name in case.path_parameters or {}:
            case.path_parameters[name] = data.draw(st.sampled_from(["requests", hostile]), label=name)
        targets: list[tuple[str, tuple[Any, ...]]] = [("query", (k,)) for k in (case.query or {})]
        targets += [("body", p) for p in _string_leaves(case.body)] if case.body is not None else []
        if targets:
            where, leaf = data.draw(st.sampled_from(targets), label="target")
            if where == "query":
                case.query = {**case.query, leaf[0]: hostile}
            else:
                case.body = _replace(case.body, leaf, hostile)
        resp = case.call(base_url=srv.url, session=http, timeout=30)
        assert_sound(resp, f"{case.method} {case.formatted_path} query={case.query!r} body={case.body!r}"[:2000], log)

    run()
