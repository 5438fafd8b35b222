"""Schemathesis fuzz over Billow's OpenAPI document, against a live `billow serve`: the metering,
entitlement and portal operations (the catalog's are in test_catalog_fuzz.py).

Whatever a client sends — schema-valid requests, deliberately invalid ones (schemathesis' negative mode),
hostile strings (quotes, `;`, `--`, NUL, path tricks, long unicode) — Billow must answer with a status below
500, and every error response must be RFC 7807 `application/problem+json` (DESIGN.md §3-4)."""

from __future__ import annotations

import requests

from tests.fuzz.harness import DOC, HEAVY, OPERATIONS, FuzzServer, make_tests

test_no_server_errors, test_hostile_strings = make_tests([op for op in OPERATIONS if not op[1].startswith(HEAVY)])


def test_served_document_is_the_fuzzed_one(fuzz_server: FuzzServer, http: requests.Session) -> None:
    srv, _ = fuzz_server
    assert http.get(f"{srv.url}/api/v1/openapi.json", timeout=30).json() == DOC
