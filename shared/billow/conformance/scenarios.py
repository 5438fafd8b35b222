"""The metering scenarios. Each one creates its own meter (slug and event type `conf_<run>_<key>`) and subjects
(`conf-<run>-<key>...`), so runs never collide and the suite can be re-run against a live server; each waits for its
expected answer (an OpenMeter server counts asynchronously) and fails with what it saw instead.

Expected values come from the scenario's own arithmetic and from Python's zoneinfo (the IANA database) for windows in
time zones, never from the server. Where OpenMeter's documented behaviour and Billow's differ, the `billow` profile
checks Billow's stricter behaviour and the `openmeter` profile OpenMeter's; the table says which was checked."""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from billow.conformance.http import Client, Response

CE = "application/cloudevents+json"
CE_BATCH = "application/cloudevents-batch+json"
FLOAT_TOLERANCE = Decimal("1e-9")  # relative: what the openmeter profile allows a float64 answer
BERLIN = ZoneInfo("Europe/Berlin")
STEP = {"MINUTE": timedelta(minutes=1), "HOUR": timedelta(hours=1), "DAY": timedelta(days=1)}


class Fail(Exception):
    """The server answered something other than the scenario expects."""


class Skip(Exception):
    """The scenario does not apply (profile, or a phase the caller did not ask for)."""


@dataclass
class Ctx:
    client: Client
    run: str
    profile: str  # "billow" (exact, strict) or "openmeter" (OpenMeter's documented behaviour)
    wait_s: float
    now: datetime
    restart_phase: str | None = None
    state: dict[str, Any] = field(default_factory=dict)  # the restart scenario's, kept in the --state file
    created: list[str] = field(default_factory=list)  # meters to delete afterwards
    notes: list[str] = field(default_factory=list)  # what the current scenario checked

    @property
    def strict(self) -> bool:
        return self.profile == "billow"

    # names -----------------------------------------------------------------------------------------------------
    def slug(self, key: str) -> str:
        return f"conf_{self.run}_{key}"

    def subject(self, key: str, n: int = 0) -> str:
        return f"conf-{self.run}-{key}-{n}"

    # meters and events -----------------------------------------------------------------------------------------
    def meter(self, key: str, aggregation: str, value_property: str | None = None,
              group_by: dict[str, str] | None = None) -> str:
        slug = self.slug(key)
        body: dict[str, Any] = {"slug": slug, "name": slug, "eventType": slug, "aggregation": aggregation,
                                "description": "billow conformance suite (safe to delete)"}
        if value_property:
            body["valueProperty"] = value_property
        if group_by:
            body["groupBy"] = group_by
        got = self.client.request("POST", "/api/v1/meters", body=body)
        if got.status not in (200, 201):
            raise Fail(f"creating meter {slug}: {got.brief()}")
        self.created.append(slug)
        return slug

    def event(self, key: str, eid: str, at: datetime, data: Any = None, *, subject: str | None = None,
              source: str | None = None) -> dict[str, Any]:
        ev: dict[str, Any] = {"specversion": "1.0", "id": f"{self.run}-{key}-{eid}",
                              "source": source or f"billow-conformance-{self.run}", "type": self.slug(key),
                              "subject": subject or self.subject(key), "time": rfc3339(at)}
        if data is not None:
            ev["data"] = data
        return ev

    def ingest(self, payload: Any, content_type: str = CE) -> None:
        if content_type == CE and isinstance(payload, list):
            content_type = CE_BATCH
        got = self.client.request("POST", "/api/v1/events", body=payload, content_type=content_type)
        if got.status != 204:
            raise Fail(f"ingest ({content_type}) answered {got.brief()}, expected 204")

    def post_events(self, raw: bytes | None = None, body: Any = None, content_type: str = CE) -> Response:
        return self.client.request("POST", "/api/v1/events", body=body, raw=raw, content_type=content_type)

    # queries ---------------------------------------------------------------------------------------------------
    def query(self, slug: str, params: list[tuple[str, str]]) -> list[dict[str, Any]]:
        got = self.client.request("GET", f"/api/v1/meters/{slug}/query", query=params)
        if got.status != 200 or "json" not in got.content_type:
            raise Fail(f"query {slug}?{_qs(params)} answered {got.brief()}")
        doc = got.json()
        if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
            raise Fail(f"query {slug}?{_qs(params)}: no data list in {got.text()[:300]!r}")
        return list(doc["data"])

    def expect_rows(self, slug: str, params: list[tuple[str, str]], want: list[Row], what: str) -> None:
        """Poll the query until it answers exactly `want` (then ask once more: a late duplicate must not show)."""
        deadline = time.monotonic() + self.wait_s
        last: list[Row] = []
        for attempt in range(2):
            while True:
                last = [_row(r) for r in self.query(slug, params)]
                last = [r for r in last if r.value != 0] if any(k == "windowSize" for k, _ in params) else last
                if self.rows_equal(last, want):
                    break
                if time.monotonic() > deadline:
                    raise Fail(f"{what}: query{'?' + _qs(params) if params else ''} answered {_show(last)}, expected {_show(want)}"
                               + (" (it matched once, then changed)" if attempt else ""))
                time.sleep(0.25)
        self.notes.append(what)

    def expect_total(self, slug: str, want: Decimal | str | int, what: str,
                     params: list[tuple[str, str]] | None = None) -> None:
        self.expect_rows(slug, params or [], [Row(value=Decimal(want))], what)

    def num_equal(self, got: Decimal | None, want: Decimal | None) -> bool:
        if got is None or want is None:
            return got is want
        if self.strict:
            return got == want
        return abs(got - want) <= FLOAT_TOLERANCE * max(Decimal(1), abs(want))

    def rows_equal(self, got: list[Row], want: list[Row]) -> bool:
        if len(got) != len(want):
            return False
        return all(self._row_match(g, w) for g, w in zip(sorted(got, key=_key), sorted(want, key=_key), strict=True))

    def _row_match(self, g: Row, w: Row) -> bool:
        return (self.num_equal(g.value, w.value)
                and (w.start is None or g.start == w.start) and (w.end is None or g.end == w.end)
                and (w.subject is None or g.subject == w.subject)
                and all(g.group.get(k) == v for k, v in w.group.items()))


@dataclass(frozen=True)
class Row:
    value: Decimal | None
    start: datetime | None = None
    end: datetime | None = None
    subject: str | None = None
    group: dict[str, str | None] = field(default_factory=dict)


def _row(r: dict[str, Any]) -> Row:
    v = r.get("value")
    return Row(value=Decimal(str(v)) if v is not None else None, start=_dt(r.get("windowStart")),
               end=_dt(r.get("windowEnd")), subject=r.get("subject"), group=dict(r.get("groupBy") or {}))


def _key(r: Row) -> tuple[str, str, str]:
    return (r.start.isoformat() if r.start else "", r.subject or "", repr(sorted(r.group.items())))


def _show(rows: list[Row]) -> str:
    def one(r: Row) -> str:
        parts = [f"{r.start:%Y-%m-%dT%H:%M}Z..{r.end:%Y-%m-%dT%H:%M}Z" if r.start and r.end else ""]
        parts += [f"subject={r.subject}" if r.subject else "", *(f"{k}={v}" for k, v in sorted(r.group.items()))]
        return " ".join(p for p in [*parts, f"value={r.value}"] if p)
    return "[" + "; ".join(one(r) for r in sorted(rows, key=_key)) + "]"


def _dt(s: Any) -> datetime | None:
    if not isinstance(s, str):
        return None
    return datetime.fromisoformat(s.replace("Z", "+00:00")).astimezone(UTC)


def _qs(params: list[tuple[str, str]]) -> str:
    return "&".join(f"{k}={v}" for k, v in params)


def rfc3339(at: datetime) -> str:
    at = at.astimezone(UTC)
    return at.strftime("%Y-%m-%dT%H:%M:%S") + (f".{at.microsecond // 1000:03d}" if at.microsecond else "") + "Z"


# windows: the oracle ------------------------------------------------------------------------------------------------
def window_of(at: datetime, size: str, tz: ZoneInfo | None = None) -> tuple[datetime, datetime]:
    """The [start, end) of the `size` window holding `at` in time zone `tz` (UTC by default), by wall clock, as
    OpenMeter documents: a DAY in Europe/Berlin is 23 h on the spring-forward day and 25 h on the fall-back day."""
    zone = tz or ZoneInfo("UTC")
    local = at.astimezone(zone)
    if size == "MINUTE":
        start = local.replace(second=0, microsecond=0)
    elif size == "HOUR":
        start = local.replace(minute=0, second=0, microsecond=0)
    elif size == "DAY":
        start = local.replace(hour=0, minute=0, second=0, microsecond=0)
    else:  # MONTH
        start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    if size == "MONTH":
        end_wall = start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)
    else:
        end_wall = start + STEP[size]  # wall-clock arithmetic on an aware datetime: the same local time
    start_utc = start.replace(tzinfo=None).replace(tzinfo=zone).astimezone(UTC)
    end_utc = end_wall.replace(tzinfo=None).replace(tzinfo=zone).astimezone(UTC)
    if size in ("MINUTE", "HOUR"):  # fixed lengths (the scenarios avoid ambiguous local hours)
        end_utc = start_utc + STEP[size]
    return start_utc, end_utc


def windowed(events: list[tuple[datetime, Decimal]], size: str, tz: ZoneInfo | None = None) -> list[Row]:
    """The SUM of `events` per `size` window in `tz`."""
    buckets: dict[tuple[datetime, datetime], Decimal] = {}
    for at, v in events:
        w = window_of(at, size, tz)
        buckets[w] = buckets.get(w, Decimal(0)) + v
    return [Row(value=v, start=s, end=e) for (s, e), v in sorted(buckets.items())]


def last_day_of_length(now: datetime, hours: int, tz: ZoneInfo = BERLIN) -> date:
    """The most recent local day before `now` that lasts `hours` hours in `tz` (a DST change day)."""
    d = now.astimezone(tz).date() - timedelta(days=1)
    for _ in range(800):
        start = datetime(d.year, d.month, d.day, tzinfo=tz)
        nxt = d + timedelta(days=1)
        end = datetime(nxt.year, nxt.month, nxt.day, tzinfo=tz)
        if end.astimezone(UTC) - start.astimezone(UTC) == timedelta(hours=hours):
            return d
        d -= timedelta(days=1)
    raise Skip(f"no {hours} h day in {tz.key} in the last two years")


D = Decimal


# the scenarios ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    run: Callable[[Ctx], None]


SCENARIOS: list[Scenario] = []


def scenario(key: str, title: str) -> Callable[[Callable[[Ctx], None]], Callable[[Ctx], None]]:
    def deco(fn: Callable[[Ctx], None]) -> Callable[[Ctx], None]:
        SCENARIOS.append(Scenario(key, title, fn))
        return fn
    return deco


def _base(ctx: Ctx) -> datetime:
    """A fixed hour three days ago: recent enough for any late-event policy, far from every window edge."""
    return (ctx.now - timedelta(days=3)).replace(minute=0, second=0, microsecond=0)


@scenario("ingest_cloudevent", "one event, application/cloudevents+json")
def _ingest_one(ctx: Ctx) -> None:
    slug = ctx.meter("ingest_cloudevent", "SUM", "$.v")
    ctx.ingest(ctx.event("ingest_cloudevent", "1", _base(ctx), {"v": "2.5"}))
    ctx.expect_total(slug, "2.5", "204, then counted")


@scenario("ingest_batch", "a batch, application/cloudevents-batch+json")
def _ingest_batch(ctx: Ctx) -> None:
    slug = ctx.meter("ingest_batch", "SUM", "$.v")
    b = _base(ctx)
    ctx.ingest([ctx.event("ingest_batch", str(i), b + timedelta(minutes=i), {"v": i}) for i in (1, 2, 3)], CE_BATCH)
    ctx.expect_total(slug, 6, "3 events, sum 6")


@scenario("ingest_json_array", "a JSON array as application/json")
def _ingest_json_array(ctx: Ctx) -> None:
    slug = ctx.meter("ingest_json_array", "SUM", "$.v")
    b = _base(ctx)
    ctx.ingest([ctx.event("ingest_json_array", "1", b, {"v": "1"}),
                ctx.event("ingest_json_array", "2", b, {"v": 4})], "application/json")
    ctx.expect_total(slug, 5, "2 events, sum 5")


@scenario("ingest_json_single", "one event as application/json")
def _ingest_json_single(ctx: Ctx) -> None:
    slug = ctx.meter("ingest_json_single", "SUM", "$.v")
    ctx.ingest(ctx.event("ingest_json_single", "1", _base(ctx), {"v": "100"}), "application/json")
    ctx.expect_total(slug, 100, "counted (OpenMeter's e2e sends this)")


@scenario("batch_1000", "1,000 events in one batch, numbers and decimal strings")
def _batch_1000(ctx: Ctx) -> None:
    slug = ctx.meter("batch_1000", "SUM", "$.v")
    b = _base(ctx)
    events = [ctx.event("batch_1000", str(i), b + timedelta(seconds=i), {"v": i if i % 2 else str(i)})
              for i in range(1, 1001)]
    ctx.ingest(events, CE_BATCH)
    ctx.expect_total(slug, 500500, "sum 1..1000 = 500500")
    ctx.expect_rows(slug, [("windowSize", "MINUTE")], windowed([(b + timedelta(seconds=i), D(i))
                                                                 for i in range(1, 1001)], "MINUTE"),
                    "per minute")


@scenario("dedup_resend", "the same event resent counts once")
def _dedup_resend(ctx: Ctx) -> None:
    k = "dedup_resend"
    slug = ctx.meter(k, "COUNT")
    b = _base(ctx)
    first = ctx.event(k, "a", b, {})
    for _ in range(4):
        ctx.ingest(first)
    ctx.ingest({**first, "time": rfc3339(b + timedelta(hours=2)), "data": {"other": 1}})  # same key, other content
    ctx.ingest(ctx.event(k, "b", b + timedelta(minutes=1), {}))
    ctx.expect_total(slug, 2, "6 sends of 2 ids count 2")


@scenario("dedup_batch", "a resent batch and duplicates inside a batch count once")
def _dedup_batch(ctx: Ctx) -> None:
    k = "dedup_batch"
    slug = ctx.meter(k, "SUM", "$.v")
    b = _base(ctx)
    batch = [ctx.event(k, n, b, {"v": v}) for n, v in (("a", 1), ("b", 2), ("c", 4))]
    ctx.ingest(batch)
    ctx.ingest(batch)
    d = ctx.event(k, "d", b, {"v": 8})
    ctx.ingest([batch[0], d, d])
    ctx.expect_total(slug, 15, "a+b+c+d = 15 after resends")


@scenario("dedup_source", "the same id from two sources counts twice")
def _dedup_source(ctx: Ctx) -> None:
    k = "dedup_source"
    slug = ctx.meter(k, "COUNT")
    b = _base(ctx)
    ctx.ingest(ctx.event(k, "same", b, {}, source=f"conf-{ctx.run}-one"))
    ctx.ingest(ctx.event(k, "same", b, {}, source=f"conf-{ctx.run}-two"))
    ctx.expect_total(slug, 2, "dedup key is (source, id)")


@scenario("dedup_restart", "events resent after a server restart count once")
def _dedup_restart(ctx: Ctx) -> None:
    if ctx.restart_phase is None:
        raise Skip("run with --restart-phase before, restart the server, then --restart-phase after")
    if ctx.restart_phase == "before":
        k = "dedup_restart"
        slug = ctx.meter(k, "SUM", "$.v")
        ctx.created.remove(slug)  # kept for the after phase
        b = _base(ctx)
        events = [ctx.event(k, str(i), b + timedelta(minutes=i), {"v": i}) for i in (1, 2, 3)]
        ctx.ingest(events)
        ctx.expect_total(slug, 6, "before: sum 6")
        ctx.state.update(slug=slug, events=events)
        ctx.notes.append("state saved: restart the server, then run --restart-phase after")
        return
    saved_slug, saved = ctx.state.get("slug"), ctx.state.get("events")
    if not isinstance(saved_slug, str) or not isinstance(saved, list) or not saved:
        raise Fail("--restart-phase after: the --state file holds no before phase (run that first)")
    ctx.expect_total(saved_slug, 6, "after restart: the events before it are still counted")
    ctx.ingest(saved)
    for ev in saved:
        ctx.ingest(ev)
    ctx.ingest({**saved[0], "id": saved[0]["id"] + "-new", "data": {"v": 10}})
    ctx.expect_total(saved_slug, 16, "after restart: resent batch and singles count once, a new event counts")
    ctx.created.append(saved_slug)


@scenario("windows_utc", "MINUTE, HOUR, DAY and MONTH windows (UTC)")
def _windows_utc(ctx: Ctx) -> None:
    k = "windows_utc"
    slug = ctx.meter(k, "SUM", "$.v")
    b = _base(ctx)
    pts = [(b, D(1)), (b + timedelta(seconds=30), D(2)), (b + timedelta(seconds=61), D(4)),
           (b + timedelta(hours=1, minutes=5), D(8)), (b + timedelta(days=1), D(16)), (b - timedelta(days=40), D(32))]
    ctx.ingest([ctx.event(k, str(i), at, {"v": str(v)}) for i, (at, v) in enumerate(pts)])
    for size in ("MINUTE", "HOUR", "DAY", "MONTH"):
        ctx.expect_rows(slug, [("windowSize", size)], windowed(pts, size), size)
    ctx.expect_rows(slug, [("windowSize", "DAY"), ("windowTimeZone", "UTC")], windowed(pts, "DAY"), "DAY in UTC")


@scenario("timezone_offset", "HOUR and DAY windows in Asia/Kolkata (+05:30)")
def _tz_offset(ctx: Ctx) -> None:
    k = "timezone_offset"
    slug = ctx.meter(k, "SUM", "$.v")
    tz = ZoneInfo("Asia/Kolkata")
    b = _base(ctx)
    pts = [(b + timedelta(minutes=10), D(1)), (b + timedelta(minutes=40), D(2)), (b + timedelta(hours=20), D(4))]
    ctx.ingest([ctx.event(k, str(i), at, {"v": str(v)}) for i, (at, v) in enumerate(pts)])
    for size in ("HOUR", "DAY"):
        ctx.expect_rows(slug, [("windowSize", size), ("windowTimeZone", tz.key)], windowed(pts, size, tz),
                        f"{size} windows start at :30 UTC" if size == "HOUR" else "DAY from 18:30 UTC")


def _dst(ctx: Ctx, k: str, hours: int) -> None:
    slug = ctx.meter(k, "SUM", "$.v")
    day = last_day_of_length(ctx.now, hours)
    start = datetime(day.year, day.month, day.day, tzinfo=BERLIN).astimezone(UTC)
    end = start + timedelta(hours=hours)
    pts = [(start - timedelta(seconds=1), D(1)), (start, D(2)), (start + timedelta(hours=12), D(4)),
           (end - timedelta(seconds=1), D(8)), (end, D(16))]
    ctx.ingest([ctx.event(k, str(i), at, {"v": str(v)}) for i, (at, v) in enumerate(pts)])
    want = windowed(pts, "DAY", BERLIN)
    if not any(r.start == start and r.end == end and r.value == 14 for r in want):  # the oracle itself
        raise Fail(f"internal: zoneinfo gave no {hours} h window for {day}")
    ctx.expect_rows(slug, [("windowSize", "DAY"), ("windowTimeZone", "Europe/Berlin")], want,
                    f"{day} is one {hours} h DAY window {rfc3339(start)}..{rfc3339(end)}")
    ctx.expect_rows(slug, [("windowSize", "MONTH"), ("windowTimeZone", "Europe/Berlin")],
                    windowed(pts, "MONTH", BERLIN), "MONTH in Europe/Berlin")
    ctx.expect_rows(slug, [("windowSize", "DAY")], windowed(pts, "DAY"), "the same events by UTC day")


@scenario("dst_spring_berlin", "DST: the 23-hour day in Europe/Berlin")
def _dst_spring(ctx: Ctx) -> None:
    _dst(ctx, "dst_spring_berlin", 23)


@scenario("dst_autumn_berlin", "DST: the 25-hour day in Europe/Berlin")
def _dst_autumn(ctx: Ctx) -> None:
    _dst(ctx, "dst_autumn_berlin", 25)


@scenario("from_to_inclusive", "from and to are inclusive (as OpenMeter's v1 spec documents)")
def _from_to(ctx: Ctx) -> None:
    k = "from_to_inclusive"
    slug = ctx.meter(k, "COUNT")
    t0 = _base(ctx)
    t1 = t0 + timedelta(hours=1)
    pts = [t0 - timedelta(seconds=1), t0, t0 + timedelta(minutes=30), t1, t1 + timedelta(seconds=1)]
    ctx.ingest([ctx.event(k, str(i), at, {}) for i, at in enumerate(pts)])
    ctx.expect_total(slug, 3, "from=t0&to=t1 counts t0, t0+30m and t1 (2 would mean `to` is treated as exclusive)",
                     [("from", rfc3339(t0)), ("to", rfc3339(t1))])
    ctx.expect_total(slug, 5, "no from/to: all time")


def _two_days(ctx: Ctx, k: str, values: list[Any], agg: str, vp: str | None = "$.v") -> tuple[str, list[datetime]]:
    slug = ctx.meter(k, agg, vp)
    b = _base(ctx).replace(hour=6)
    times = [b + timedelta(hours=i) for i in range(len(values) - 1)] + [b + timedelta(days=1)]
    ctx.ingest([ctx.event(k, str(i), at, {"v": v} if v is not None else {}) for i, (at, v)
                in enumerate(zip(times, values, strict=True))])
    return slug, times


@scenario("agg_sum", "SUM")
def _agg_sum(ctx: Ctx) -> None:
    slug, t = _two_days(ctx, "agg_sum", ["1.5", 2, "-0.25"], "SUM")
    ctx.expect_total(slug, "3.25", "1.5 + 2 - 0.25")
    ctx.expect_rows(slug, [("windowSize", "DAY")], windowed(list(zip(t, [D("1.5"), D(2), D("-0.25")],
                                                                      strict=True)), "DAY"), "per day")


@scenario("agg_count", "COUNT")
def _agg_count(ctx: Ctx) -> None:
    slug, t = _two_days(ctx, "agg_count", [None, None, None, None], "COUNT", None)
    ctx.expect_total(slug, 4, "4 events")
    ctx.expect_rows(slug, [("windowSize", "DAY")], windowed([(at, D(1)) for at in t], "DAY"), "3 + 1 per day")


@scenario("agg_unique_count", "UNIQUE_COUNT")
def _agg_unique(ctx: Ctx) -> None:
    slug, t = _two_days(ctx, "agg_unique_count", ["a", "b", "a", "a", "c"], "UNIQUE_COUNT")
    ctx.expect_total(slug, 3, "a, b, c")
    day1, day2 = window_of(t[0], "DAY"), window_of(t[-1], "DAY")
    ctx.expect_rows(slug, [("windowSize", "DAY")], [Row(D(2), *day1), Row(D(1), *day2)],
                    "distinct per window (a, b | c)")


@scenario("agg_avg", "AVG")
def _agg_avg(ctx: Ctx) -> None:
    slug, t = _two_days(ctx, "agg_avg", [1, "2", 2], "AVG")
    if ctx.strict:
        ctx.expect_total(slug, "1.666666666666666667", "5/3 = 1.666666666666666667 (Billow: Decimal, 18 places, half-even)")
    else:
        ctx.expect_total(slug, D(5) / D(3), "5/3 within 1e-9 (OpenMeter: float64)")
    ctx.expect_rows(slug, [("windowSize", "DAY")], [Row(D("1.5"), *window_of(t[0], "DAY")),
                                                    Row(D(2), *window_of(t[-1], "DAY"))], "1.5 | 2 per day")


@scenario("agg_min", "MIN")
def _agg_min(ctx: Ctx) -> None:
    slug, _ = _two_days(ctx, "agg_min", ["-1.5", "2.25", 0], "MIN")
    ctx.expect_total(slug, "-1.5", "min(-1.5, 2.25, 0)")


@scenario("agg_max", "MAX")
def _agg_max(ctx: Ctx) -> None:
    slug, _ = _two_days(ctx, "agg_max", ["-1.5", "2.25", 0], "MAX")
    ctx.expect_total(slug, "2.25", "max(-1.5, 2.25, 0)")


@scenario("agg_latest", "LATEST (by event time, not arrival)")
def _agg_latest(ctx: Ctx) -> None:
    k = "agg_latest"
    slug = ctx.meter(k, "LATEST", "$.v")
    b = _base(ctx)
    for i, (h, v) in enumerate([(3, "6"), (1, "7"), (2, "5")]):  # the latest by time arrives first
        ctx.ingest(ctx.event(k, str(i), b + timedelta(hours=h), {"v": v}))
    ctx.expect_total(slug, 6, "the value of the event with the latest time")
    ctx.expect_rows(slug, [("windowSize", "HOUR")],
                    [Row(D(v), *window_of(b + timedelta(hours=h), "HOUR")) for h, v in ((1, 7), (2, 5), (3, 6))],
                    "per hour")


@scenario("exact_decimals", "exact decimals: 0.1 + 0.2 = 0.3")
def _exact(ctx: Ctx) -> None:
    k = "exact_decimals"
    slug = ctx.meter(k, "SUM", "$.v", {"case": "$.case"})
    b = _base(ctx)
    cases = {"tenth": ["0.1", "0.2"], "big": ["12345678901234567.89", "0.01"], "ten": ["0.1"] * 10,
             "tiny": ["0.000000000000000001"] * 3}
    want = {"tenth": "0.3", "big": "12345678901234567.9", "ten": "1", "tiny": "0.000000000000000003"}
    ctx.ingest([ctx.event(k, f"{c}{i}", b, {"v": v, "case": c}) for c, vs in cases.items() for i, v in enumerate(vs)])
    ctx.expect_rows(slug, [("groupBy", "case")], [Row(D(v), group={"case": c}) for c, v in want.items()],
                    "exact Decimal sums" if ctx.strict else "float64 sums within 1e-9 relative (OpenMeter documents "
                    "double values; the billow profile requires them exact)")


@scenario("late_events", "late events: 40 and 400 days old are accepted and counted")
def _late(ctx: Ctx) -> None:
    k = "late_events"
    slug = ctx.meter(k, "SUM", "$.v")
    pts = [(_base(ctx) - timedelta(days=40), D(5)), (_base(ctx) - timedelta(days=400), D(7)), (_base(ctx), D(1))]
    for i, (at, v) in enumerate(pts):
        ctx.ingest(ctx.event(k, str(i), at, {"v": int(v)}))
    ctx.expect_total(slug, 13, "all counted")
    ctx.expect_rows(slug, [("windowSize", "DAY")], windowed(pts, "DAY"), "in the windows of their event time")


@scenario("meter_after_events", "a meter created after its events counts them")
def _meter_after(ctx: Ctx) -> None:
    k = "meter_after_events"
    b = _base(ctx)
    ctx.ingest([ctx.event(k, str(i), b + timedelta(minutes=i), {"v": i}) for i in (1, 2)])
    slug = ctx.meter(k, "SUM", "$.v")
    ctx.expect_total(slug, 3, "events ingested before the meter existed")


@scenario("subject_group_by", "subject filter and groupBy")
def _subject(ctx: Ctx) -> None:
    k = "subject_group_by"
    slug = ctx.meter(k, "SUM", "$.v", {"model": "$.model"})
    s1, s2 = ctx.subject(k, 1), ctx.subject(k, 2)
    b = _base(ctx)
    rows = [(s1, "m1", 1), (s1, "m2", 2), (s2, "m1", 4), (s2, "m1", 8)]
    ctx.ingest([ctx.event(k, str(i), b, {"v": v, "model": m}, subject=s) for i, (s, m, v) in enumerate(rows)])
    ctx.expect_rows(slug, [("groupBy", "model")], [Row(D(13), group={"model": "m1"}),
                                                   Row(D(2), group={"model": "m2"})], "groupBy=model")
    ctx.expect_rows(slug, [("subject", s1)], [Row(D(3), subject=s1)], "subject filter")
    ctx.expect_rows(slug, [("subject", s1), ("subject", s2)], [Row(D(3), subject=s1), Row(D(12), subject=s2)],
                    "two subjects: one row each")
    ctx.expect_rows(slug, [("subject", s2), ("groupBy", "model")], [Row(D(12), subject=s2, group={"model": "m1"})],
                    "subject and groupBy")


@scenario("invalid_events", "invalid events: 400 application/problem+json, nothing counted")
def _invalid(ctx: Ctx) -> None:
    k = "invalid_events"
    slug = ctx.meter(k, "COUNT")
    good = ctx.event(k, "x", _base(ctx), {})
    bad: dict[str, Any] = {
        "no id": {kk: v for kk, v in good.items() if kk != "id"},
        "no source": {kk: v for kk, v in good.items() if kk != "source"},
        "no type": {kk: v for kk, v in good.items() if kk != "type"},
        "no subject": {kk: v for kk, v in good.items() if kk != "subject"},
        "specversion 0.3": {**good, "specversion": "0.3"},
        "time not RFC 3339": {**good, "time": "yesterday"},
        "data a string": {**good, "data": "string"},
    }
    wrong = []
    for i, (what, ev) in enumerate(bad.items()):
        ev = {**ev, "id": f"{good['id']}-{i}"} if "id" in ev else ev
        got = ctx.post_events(body=ev)
        if got.status != 400 or not got.is_problem():
            wrong.append(f"{what}: {got.status} {got.content_type}")
    got = ctx.post_events(raw=b'{"specversion": "1.0", "id": ', content_type=CE)
    if got.status != 400 or not got.is_problem():
        wrong.append(f"malformed JSON: {got.status} {got.content_type}")
    if wrong:
        raise Fail("expected 400 application/problem+json for " + "; ".join(wrong))
    if ctx.strict:  # Billow: a batch is all-or-nothing
        got = ctx.post_events(body=[ctx.event(k, "batch-ok", _base(ctx), {}), bad["no source"]],
                              content_type=CE_BATCH)
        if got.status != 400 or not got.is_problem() or "source" not in got.text():
            raise Fail(f"a batch with one event without source: {got.brief()}, expected 400 naming source")
    ctx.ingest(good)
    ctx.expect_total(slug, 1, f"{len(bad) + 1} invalid bodies refused, only the valid event counts"
                     + ("; a batch with one bad event stores nothing (billow profile)" if ctx.strict else ""))


@scenario("invalid_value", "an event whose value is not a number")
def _invalid_value(ctx: Ctx) -> None:
    k = "invalid_value"
    slug = ctx.meter(k, "SUM", "$.v")
    b = _base(ctx)
    for i, v in enumerate(["abc", "NaN", {"nested": 1}]):
        got = ctx.post_events(body=ctx.event(k, f"bad{i}", b, {"v": v}))
        if ctx.strict and (got.status != 400 or not got.is_problem() or "$.v" not in got.text()):
            raise Fail(f"value {v!r}: {got.brief()}; billow profile expects 400 problem+json naming $.v")
        if not ctx.strict and got.status != 204:
            raise Fail(f"value {v!r}: {got.brief()}; OpenMeter documents 204 (stored with a validation error)")
    ctx.ingest(ctx.event(k, "good", b, {"v": "100"}))
    ctx.expect_total(slug, 100, "refused with 400 naming $.v (billow profile: refuse, never guess)" if ctx.strict
                     else "accepted, counted as nothing (OpenMeter: stored with a validation error)")


@scenario("csv", "CSV: Accept: text/csv")
def _csv(ctx: Ctx) -> None:
    k = "csv"
    slug = ctx.meter(k, "SUM", "$.v", {"model": "$.model"})
    b = _base(ctx)
    pts = [(b, "m1", "0.1"), (b + timedelta(minutes=5), "m1", "0.2"), (b + timedelta(hours=1), "m2", "7")]
    ctx.ingest([ctx.event(k, str(i), at, {"v": v, "model": m}) for i, (at, m, v) in enumerate(pts)])
    want = {(window_of(b, "HOUR")[0], "m1"): D("0.3"), (window_of(b + timedelta(hours=1), "HOUR")[0], "m2"): D(7)}
    params = [("windowSize", "HOUR"), ("groupBy", "model")]
    ctx.expect_rows(slug, params, [Row(v, start=s, group={"model": m}) for (s, m), v in want.items()], "JSON first")
    got = ctx.client.request("GET", f"/api/v1/meters/{slug}/query", query=params, accept="text/csv")
    if got.status != 200 or got.content_type != "text/csv":
        raise Fail(f"Accept: text/csv answered {got.brief()}")
    table = list(csv.DictReader(io.StringIO(got.text())))
    head = next(csv.reader(io.StringIO(got.text())), [])
    for col in ("window_start", "window_end", "model", "value"):
        if col not in head:
            raise Fail(f"CSV header {head} has no {col!r} column")
    seen = {(_dt(r["window_start"]), r["model"]): r["value"] for r in table}
    if set(seen) != set(want) or not all(ctx.num_equal(D(seen[x]), want[x]) for x in want):
        raise Fail(f"CSV rows {table} differ from {want}")
    if ctx.strict and any(D(seen[x]) != want[x] or "e" in seen[x].lower() for x in want):
        raise Fail(f"CSV values not exact decimals: {seen}")
    ctx.notes.append(f"header {','.join(head)}; values " + ", ".join(seen.values()))


@scenario("bad_input", "bad query and meter input: 4xx application/problem+json")
def _bad_input(ctx: Ctx) -> None:
    slug = ctx.meter("bad_input", "COUNT")
    q = f"/api/v1/meters/{slug}/query"
    t = rfc3339(_base(ctx))
    checks: list[tuple[str, str, str, dict[str, Any], set[int], str]] = [
        ("windowSize=FORTNIGHT", "GET", q, {"query": [("windowSize", "FORTNIGHT")]}, {400}, "windowSize"),
        ("windowTimeZone=Mars/Olympus", "GET", q, {"query": [("windowSize", "DAY"),
                                                            ("windowTimeZone", "Mars/Olympus")]}, {400},
         "windowTimeZone"),
        ("from=yesterday", "GET", q, {"query": [("from", "yesterday")]}, {400}, "from"),
        ("from after to", "GET", q, {"query": [("from", t), ("to", rfc3339(_base(ctx) - timedelta(days=1)))]},
         {400}, "from"),
        ("unknown meter", "GET", f"/api/v1/meters/conf_{ctx.run}_no_such_meter/query", {}, {404}, ""),
        ("meter aggregation MEDIAN", "POST", "/api/v1/meters",
         {"body": {"slug": ctx.slug("bad_input_median"), "eventType": "x", "aggregation": "MEDIAN",
                   "valueProperty": "$.v"}}, {400}, "aggregation"),
        ("meter slug with spaces", "POST", "/api/v1/meters",
         {"body": {"slug": "no spaces allowed", "eventType": "x", "aggregation": "COUNT"}}, {400}, "slug"),
        ("events as text/plain", "POST", "/api/v1/events", {"raw": b"hello", "content_type": "text/plain"},
         {400, 415}, ""),
        ("events: a JSON number", "POST", "/api/v1/events", {"raw": b"42", "content_type": CE}, {400}, ""),
    ]
    wrong = []
    for what, method, path, kw, codes, names in checks:
        got = ctx.client.request(method, path, **kw)
        if got.status not in codes or not got.is_problem():
            wrong.append(f"{what}: {got.status} {got.content_type or '-'}")
        elif ctx.strict and names and names not in got.text():
            wrong.append(f"{what}: the problem does not name {names} ({got.text()[:160]!r})")
    if wrong:
        raise Fail("; ".join(wrong))
    ctx.notes.append(f"{len(checks)} bad inputs refused" + (", each naming its field" if ctx.strict else ""))
