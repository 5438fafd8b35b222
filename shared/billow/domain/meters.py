"""Meters: how events turn into numbers (OpenMeter semantics), and exact value extraction."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from billow.domain.events import CloudEvent
from billow.domain.ingest_policy import DEFAULT as DEFAULT_POLICY
from billow.domain.ingest_policy import IngestionPolicy
from billow.errors import ValidationFailed
from billow.exact import parse_decimal

SLUG_RE = re.compile(r"^[a-z0-9]+(?:_[a-z0-9]+)*$")
GROUP_KEY_RE = re.compile(r"^[a-zA-Z_][0-9a-zA-Z_]*$")
_SIMPLE_PATH_RE = re.compile(r"^\$(?:\.[A-Za-z_][A-Za-z0-9_]*)+$")
AGGREGATIONS = ("SUM", "COUNT", "UNIQUE_COUNT", "AVG", "MIN", "MAX", "LATEST")

# Values are stored as Decimal(38, 18) in ClickHouse: 20 integer digits, 18 fractional.
VALUE_SCALE = 18
VALUE_INT_DIGITS = 20
VALUE_LIMIT = Decimal(10) ** VALUE_INT_DIGITS


class Path:
    """A compiled JSONPath into `data`. `$.a.b` takes a fast dict walk; anything else uses python-jsonpath."""

    __slots__ = ("text", "_keys", "_compiled")

    def __init__(self, text: str, field_name: str) -> None:
        if not isinstance(text, str) or not text.startswith("$"):
            raise ValidationFailed(f"{field_name}: must be a JSONPath starting with '$'", [{"field": field_name, "message": "must be a JSONPath starting with '$'"}])
        self.text = text
        self._keys: tuple[str, ...] | None = tuple(text[2:].split(".")) if _SIMPLE_PATH_RE.match(text) else None
        self._compiled = None
        if self._keys is None:
            import jsonpath  # only for paths beyond $.a.b (keeps handler cold start small)

            try:
                self._compiled = jsonpath.compile(text)
            except Exception as exc:  # python-jsonpath raises several syntax error types
                raise ValidationFailed(f"{field_name}: invalid JSONPath {text!r}: {exc}", [{"field": field_name, "message": "invalid JSONPath"}]) from None

    def find(self, data: dict[str, Any] | None) -> tuple[bool, Any]:
        """(found, value) — the first match of the path in `data`."""
        if data is None:
            return False, None
        if self._keys is not None:
            node: Any = data
            for key in self._keys:
                if not isinstance(node, dict) or key not in node:
                    return False, None
                node = node[key]
            return True, node
        assert self._compiled is not None
        match = self._compiled.match(data)
        if match is None:
            return False, None
        return True, match.obj


@dataclass(slots=True)
class Meter:
    id: str
    slug: str
    aggregation: str
    event_type: str
    name: str
    description: str | None
    value_property: str | None
    group_by: dict[str, str]
    event_from: datetime | None
    created_at: datetime
    updated_at: datetime
    metadata: dict[str, str] | None = None
    deleted_at: datetime | None = None
    policy: IngestionPolicy = DEFAULT_POLICY  # Billow's ingestionPolicy (billow.domain.ingest_policy)
    _value_path: Path | None = field(default=None, repr=False, compare=False)
    _group_paths: dict[str, Path] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._value_path = Path(self.value_property, "valueProperty") if self.value_property else None
        self._group_paths = {k: Path(v, f"groupBy.{k}") for k, v in self.group_by.items()}

    def applies_to(self, event: CloudEvent) -> bool:
        if event.type != self.event_type:
            return False
        return self.event_from is None or event.time >= self.event_from

    def extract(self, event: CloudEvent) -> tuple[Decimal, str, dict[str, str]]:
        """(numeric value, string value, group-by values) of one event; raises ValueError with the reason."""
        groups = {k: group_value(p.find(event.data)) for k, p in self._group_paths.items()}
        if self.aggregation == "COUNT":
            return Decimal(1), "", groups
        assert self._value_path is not None
        found, raw = self._value_path.find(event.data)
        if not found or raw is None:
            raise ValueError(f"valueProperty {self.value_property} is missing in data")
        if self.aggregation == "UNIQUE_COUNT":
            if isinstance(raw, bool) or not isinstance(raw, str | int | Decimal | float):
                raise ValueError(f"valueProperty {self.value_property} must be a string or a number")
            text = raw if isinstance(raw, str) else str(raw)
            return Decimal(0), text, groups
        return to_value(raw, self.value_property or ""), "", groups

    def reader(self) -> Callable[[dict[str, Any] | None], MeterValueRow]:
        """extract(), compiled once for a batch: an event's `data` -> (meter id, exact decimal text of the value, text
        value, group-by values), i.e. (self.id, str(value), text, groups) of extract, raising the same ValueError.
        Paths of one key ($.tokens, most meters) are a dict look-up each; the others walk as Path.find does."""
        mid, agg, prop = self.id, self.aggregation, self.value_property or ""
        groups = [(k, _getter(p)) for k, p in self._group_paths.items()]
        vpath = self._value_path if agg != "COUNT" else None
        value = _getter(vpath) if vpath is not None else None
        missing = f"valueProperty {prop} is missing in data"
        limit = 10**VALUE_INT_DIGITS
        paths = [*self._group_paths.values(), *([vpath] if vpath is not None else [])]
        if agg != "UNIQUE_COUNT" and all(p._keys is not None and len(p._keys) == 1 for p in paths):
            keys = [(k, p._keys[0]) for k, p in self._group_paths.items() if p._keys is not None]
            vkey = vpath._keys[0] if vpath is not None and vpath._keys else None  # None: COUNT
            empty: dict[str, Any] = {}

            def read_keys(data: dict[str, Any] | None) -> MeterValueRow:  # the same as read, a dict look-up per path
                d = empty if data is None else data
                got: dict[str, str] = {}
                for k, key in keys:
                    v = d.get(key)
                    got[k] = v if type(v) is str else group_value((True, v))
                if vkey is None:
                    return mid, "1", "", got  # COUNT
                raw = d.get(vkey)
                if raw is None:
                    raise ValueError(missing)
                if type(raw) is int and -limit < raw < limit:
                    return mid, str(raw), "", got
                return mid, str(to_value(raw, prop)), "", got

            return read_keys

        def read(data: dict[str, Any] | None) -> MeterValueRow:
            got: dict[str, str] = {}
            for k, get in groups:
                v = get(data)
                got[k] = v if type(v) is str else group_value((True, v))  # None (also: not found) is ""
            if value is None:
                return mid, "1", "", got  # COUNT
            raw = value(data)
            if raw is None:
                raise ValueError(missing)
            if type(raw) is int and -limit < raw < limit:
                return mid, str(raw), "", got  # the common JSON integer: its text is Decimal(raw)'s
            return mid, str(to_value(raw, prop)), "", got

        if agg == "UNIQUE_COUNT":  # the value's text is what counts there, not a number
            def read_unique(data: dict[str, Any] | None) -> MeterValueRow:
                got: dict[str, str] = {}
                for k, get in groups:
                    v = get(data)
                    got[k] = v if type(v) is str else group_value((True, v))
                assert value is not None
                raw = value(data)
                if raw is None:
                    raise ValueError(missing)
                if isinstance(raw, bool) or not isinstance(raw, str | int | Decimal | float):
                    raise ValueError(f"valueProperty {prop} must be a string or a number")
                return mid, "0", raw if isinstance(raw, str) else str(raw), got

            return read_unique
        return read


# One meter's value of one event: (meter id, exact decimal text, text value, group-by values), as the bus carries it.
MeterValueRow = tuple[str, str, str, dict[str, str]]


def _getter(path: Path) -> Callable[[dict[str, Any] | None], Any]:
    """`data` -> the value at `path`, None when absent (as Path.find, whose (False, None) and (True, None) extract and
    group_value treat alike)."""
    keys = path._keys
    if keys is not None and len(keys) == 1:
        key = keys[0]
        return lambda data: None if data is None else data.get(key)
    return lambda data: path.find(data)[1]


def group_value(found: tuple[bool, Any]) -> str:
    ok, value = found
    if not ok or value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | Decimal):
        return str(value)
    from billow import jsonx

    return jsonx.dumps(value)


def to_value(raw: Any, path: str) -> Decimal:
    """A meter value: a JSON number or a plain ASCII decimal string (billow.exact.DECIMAL_TEXT: "1_000", "١٢" and
    "５" are not numbers), finite, within Decimal(38, 18) (|value| < 1e20, at most 18 decimal places), never rounded."""
    try:
        return parse_decimal(raw, int_digits=VALUE_INT_DIGITS, scale=VALUE_SCALE)
    except ValueError as exc:
        raise ValueError(f"valueProperty {path} {exc}") from None


def validate_meter_definition(body: dict[str, Any]) -> None:
    """OpenMeter's rules for MeterCreate; raises ValidationFailed naming every bad field."""
    errors: list[dict[str, Any]] = []

    def fail(f: str, msg: str) -> None:
        errors.append({"field": f, "message": msg})

    slug = body.get("slug")
    if not isinstance(slug, str) or not slug:
        fail("slug", "required")
    elif len(slug) > 64 or not SLUG_RE.match(slug):
        fail("slug", "must match ^[a-z0-9]+(?:_[a-z0-9]+)*$ and be at most 64 characters")
    agg = body.get("aggregation")
    if agg not in AGGREGATIONS:
        fail("aggregation", f"must be one of {', '.join(AGGREGATIONS)}")
    et = body.get("eventType")
    if not isinstance(et, str) or not et.strip():
        fail("eventType", "required")
    elif len(et) > 1024:
        fail("eventType", "longer than 1024 characters")
    vp = body.get("valueProperty")
    if agg == "COUNT":
        if vp not in (None, ""):
            fail("valueProperty", "COUNT meters take no valueProperty")
    elif agg in AGGREGATIONS:
        if not isinstance(vp, str) or not vp:
            fail("valueProperty", f"required for {agg} meters")
        elif not vp.startswith("$"):
            fail("valueProperty", "must be a JSONPath starting with '$'")
    gb = body.get("groupBy") or {}
    if not isinstance(gb, dict):
        fail("groupBy", "must be an object of key -> JSONPath")
    else:
        for k, v in gb.items():
            if not GROUP_KEY_RE.match(k) or k == "subject":
                fail(f"groupBy.{k}", "key must match ^[a-zA-Z_][0-9a-zA-Z_]*$ and not be 'subject'")
            elif not isinstance(v, str) or not v.startswith("$"):
                fail(f"groupBy.{k}", "must be a JSONPath starting with '$'")
    # OpenMeter's MeterCreate and MeterUpdate: a name of 1 to 256 characters (an empty one was taken for none, and
    # the slug shown), a description of at most 1,024.
    for name, least, limit in (("name", 1, 256), ("description", 0, 1024)):
        v = body.get(name)
        if v is not None and (not isinstance(v, str) or not least <= len(v) <= limit):
            fail(name, f"must be a string of {least} to {limit} characters" if least else
                 f"must be a string of at most {limit} characters")
    md = body.get("metadata")
    if md is not None and (not isinstance(md, dict) or not all(isinstance(x, str) for x in md.values())):
        fail("metadata", "must be an object of string values")
    if errors:
        raise ValidationFailed(f"invalid meter: {errors[0]['field']}: {errors[0]['message']}", errors)
