"""Issue 17's all-or-nothing batches on the vectorised ingest path, probed from outside with hostile bodies: a
5,000-event batch whose last event carries a huge or tiny exponent, a lone surrogate in a field or a key, an
impossible or out-of-range date or a wrong type is a 400 problem+json listing exactly that event and field, and
stores nothing (queried before and after); bad events scattered through a batch are all listed; a body nested
deeper than the parser goes is a 400, not a 500; zeros however written count 0; an id twice in one batch counts
once."""

from __future__ import annotations

import http.client
import json
from decimal import Decimal
from typing import Any

import pytest

from tests.e2e.conftest import Server

BATCH = "application/cloudevents-batch+json"
N = 5000


def ev(i: Any, v: str = "1", time: str = "2026-06-03T10:00:00Z", **fields: str) -> str:
    """One event as JSON text; `v` and every value of `fields` are spliced in as raw JSON (escapes kept)."""
    e: dict[str, Any] = {"specversion": "1.0", "id": str(i), "source": "hb", "type": "hb", "subject": "acme",
                         "time": time, "data": {"v": "@V@", "eid": str(i)}}
    text = json.dumps(e).replace('"@V@"', v)
    for name, raw in fields.items():
        if name.startswith("data_"):
            text = text.replace('"data": {', f'"data": {{{raw}, ', 1)
        else:
            text = text.replace(f'"{name}": {json.dumps(e[name])}', f'"{name}": {raw}', 1)
    return text


def post(server: Server, body: str) -> tuple[int, str | None, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    try:
        conn.request("POST", "/api/v1/events", body.encode(), {"Content-Type": BATCH})
        resp = conn.getresponse()
        payload = resp.read()
        ctype = resp.getheader("Content-Type")
        return resp.status, ctype, json.loads(payload) if payload else None
    finally:
        conn.close()


def counted(server: Server) -> tuple[Decimal, Decimal]:
    """(COUNT, SUM) of every hb event stored."""
    out = []
    for slug in ("hb_count", "hb_sum"):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        conn.request("GET", f"/api/v1/meters/{slug}/query")
        resp = conn.getresponse()
        body = json.loads(resp.read(), parse_float=Decimal, parse_int=Decimal)
        conn.close()
        assert resp.status == 200, body
        out.append(sum((r["value"] for r in body["data"]), Decimal(0)))
    return out[0], out[1]


@pytest.fixture(scope="module")
def hb(server: Server) -> Server:
    for meter in ({"slug": "hb_sum", "eventType": "hb", "aggregation": "SUM", "valueProperty": "$.v"},
                  {"slug": "hb_count", "eventType": "hb", "aggregation": "COUNT"}):
        status, _, body = server.request("POST", "/api/v1/meters", meter)
        assert status == 201, body
    return server


def refused(server: Server, body: str) -> list[tuple[int | None, str]]:
    before = counted(server)
    status, ctype, problem = post(server, body)
    assert status == 400 and ctype == "application/problem+json", (status, ctype, problem)
    assert counted(server) == before  # nothing of it stored
    return [(e.get("index"), e["field"]) for e in problem["validationErrors"]]


# (bad event's value, time and fields; the field the refusal names)
HOSTILE = {
    "exponent_number": (dict(v="1e999999"), "data ($.v)"),
    "exponent_string": (dict(v='"1e999999"'), "data ($.v)"),
    "exponent_negative": (dict(v="-1E+20"), "data ($.v)"),
    "tiny_number": (dict(v="1E-400"), "data ($.v)"),
    "tiny_string": (dict(v='"1E-400"'), "data ($.v)"),
    "nan_string": (dict(v='"NaN"'), "data ($.v)"),
    "infinity_string": (dict(v='"-Infinity"'), "data ($.v)"),
    "boolean": (dict(v="true"), "data ($.v)"),
    "surrogate_source": (dict(source='"hb\\ud800"'), "source"),
    "surrogate_subject": (dict(subject='"\\udfffacme"'), "subject"),
    "surrogate_id": (dict(id='"\\ud800"'), "id"),
    "surrogate_type": (dict(type='"hb\\udbff"'), "type"),
    "surrogate_data_value": (dict(data_x='"x": "\\ud800"'), "data.x"),
    "surrogate_data_key": (dict(data_x='"k\\udc00": 1'), "data.k\\udc00"),
    "before_1970": (dict(time="1969-12-31T23:59:59.999Z"), "time"),
    "after_2105": (dict(time="2106-01-01T00:00:00Z"), "time"),
    "year_10000": (dict(time="10000-01-01T00:00:00Z"), "time"),
    "year_0": (dict(time="0000-01-01T00:00:00Z"), "time"),
    "february_30": (dict(time="2026-02-30T00:00:00Z"), "time"),
    "hour_24": (dict(time="2026-06-03T24:00:00Z"), "time"),
    "leap_second": (dict(time="2026-06-30T23:59:60Z"), "time"),
    "offset_24h": (dict(time="2026-06-03T10:00:00+24:00"), "time"),
    "no_offset": (dict(time="2026-06-03T10:00:00"), "time"),
    "specversion_number": (dict(specversion="1.0"), "specversion"),
    "id_number": (dict(id="5"), "id"),
    "empty_subject": (dict(subject='""'), "subject"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_5000_event_batch_with_one_bad_event_at_the_end_is_refused_naming_it(hb: Server, case: str) -> None:
    fields, field = HOSTILE[case]
    fields = dict(fields)
    v, time = fields.pop("v", "1"), fields.pop("time", "2026-06-03T10:00:00Z")
    body = "[" + ",".join([ev(f"{case}-{i}", str(i % 10)) for i in range(N - 1)]
                          + [ev(f"{case}-bad", v, time, **fields)]) + "]"
    assert refused(hb, body) == [(N - 1, field)]


def test_every_bad_event_of_a_5000_event_batch_is_listed_and_nothing_stored(hb: Server) -> None:
    bad = {7: (dict(v="1e999999"), "data ($.v)"), 1234: (dict(time="2026-02-30T00:00:00Z"), "time"),
           2500: (dict(v='"1_000"'), "data ($.v)"), 4000: (dict(specversion='"0.3"'), "specversion"),
           N - 1: (dict(v="1E-400"), "data ($.v)")}
    parts = []
    for i in range(N):
        fields, _ = bad.get(i, ({}, ""))
        fields = dict(fields)
        parts.append(ev(f"many-{i}", fields.pop("v", "1"), fields.pop("time", "2026-06-03T10:00:00Z"), **fields))
    assert refused(hb, "[" + ",".join(parts) + "]") == [(i, field) for i, (_, field) in sorted(bad.items())]


def test_a_lone_surrogate_does_not_hide_the_batchs_other_bad_events(hb: Server) -> None:
    body = "[" + ",".join([ev("mix-0"), ev("mix-1", '"ten"'), ev("mix-2", subject='"acme\\ud800"')]) + "]"
    assert refused(hb, body) == [(1, "data ($.v)"), (2, "subject")]


@pytest.mark.parametrize("depth", [1500, 10_000, 100_000])
def test_a_body_nested_deeper_than_the_parser_goes_is_a_400(hb: Server, depth: int) -> None:
    arrays = ev("deep-a", data_n='"n": ' + "[" * depth + "]" * depth)
    objects = ev("deep-o", data_n='"n": ' + '{"a":' * depth + "1" + "}" * depth)
    for body in (f"[{ev('deep-ok')},{arrays}]", f"[{ev('deep-ok')},{objects}]"):
        assert refused(hb, body) == [(None, "body")]


def test_zeros_however_written_count_zero_and_an_id_twice_in_a_batch_counts_once(hb: Server) -> None:
    count, total = counted(hb)
    zeros = ["-0", '"-0"', "0E-400", "0e999999", '"-0.000E+5"', "0.000000000000000000000000"]
    body = "[" + ",".join([ev(f"zero-{i}", z) for i, z in enumerate(zeros)]
                          + [ev("twice", "2"), ev("twice", "3"), ev("tiny", '"0.000000000000000001"')]) + "]"
    status, _, problem = post(hb, body)
    assert status == 204, problem
    new_count, new_total = counted(hb)
    assert new_count - count == len(zeros) + 2
    assert new_total - total in (Decimal("2.000000000000000001"), Decimal("3.000000000000000001"))
    assert post(hb, body)[0] == 204  # the same batch again: nothing moves
    assert counted(hb) == (new_count, new_total)
