"""Entitlement values and balance history: the balance engine run over usage from the usage store.

A balance is computed from the latest snapshot (the engine state at a reset) forward, never from the start of
time. All the usage one computation needs comes from one usage-store query: the engine's segment boundaries are
found first by a dry run (they depend on grants and resets, never on usage), then one windowed query returns the
usage of every segment. Snapshots are saved only at resets older than SNAPSHOT_GRACE; usage the sink stores for
earlier times deletes the snapshots it makes stale (`usage_arrived_late`)."""

from __future__ import annotations

import threading
import weakref
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from billow.domain import credits
from billow.domain.usage import (
    GroupFilter,
    MeterValue,
    UsageQuery,
    final_value,
    latest_by_subject,
    matches,
    values_by_subject,
)
from billow.errors import NotFound
from billow.exact import exact_sum
from billow.jsonx import plain_decimal
from billow.ports import MetaStore, UsageStore
from billow.services import params
from billow.services.entitlements import (
    EntitlementStore,
    Reset,
    bad,
    current_period,
    minute,
    party_subject_keys,
    period_of,
    reset_schedule,
    resolve,
    subject_key,
)
from billow.services.query import parse_filters
from billow.services.sink import LATE_AFTER
from billow.timeutil import WINDOW_SIZES, format_rfc3339, parse_rfc3339, window_end, window_start, zone

SNAPSHOT_GRACE = LATE_AFTER
MAX_HISTORY_WINDOWS = 2000


def _num(d: Decimal) -> Decimal:
    return plain_decimal(d)


# -- presentation ------------------------------------------------------------------------------------------
def entitlement_json(namespace: str, doc: dict[str, Any], *, store: EntitlementStore, now: datetime) -> dict[str, Any]:
    """The stored entitlement plus what is derived from time: the current usage period and the last reset."""
    out = dict(doc)
    if doc.get("usagePeriod"):
        if doc["type"] == "metered":
            start, end = current_period(doc, store=store, namespace=namespace, at=now)
            out["lastReset"] = format_rfc3339(start)
        else:
            start, end = period_of(doc["usagePeriod"]).containing(minute(now))
        out["currentUsagePeriod"] = {"from": format_rfc3339(start), "to": format_rfc3339(end)}
    if "issueAfterReset" in out:
        out["issueAfterReset"] = _num(Decimal(out["issueAfterReset"]))
    return out


# -- the engine over stored usage ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Summed:
    """The stored values a SUM or COUNT ledger's usage adds up: a balance cache adds those stored since itself."""

    meter_id: str
    count: bool  # COUNT: each value counts one
    subjects: frozenset[str]
    filters: list[list[GroupFilter]]

    def amount(self, v: MeterValue) -> Decimal | None:
        """What `v` adds to this usage (None: nothing)."""
        if v.meter_id != self.meter_id or v.subject not in self.subjects or not matches(self.filters, v.subject,
                                                                                           v.group_by):
            return None
        return Decimal(1) if self.count else v.value


@dataclass
class Ledger:
    """Everything one balance computation reads, loaded once."""

    ent: dict[str, Any]
    grants: list[credits.Grant]
    resets: list[Reset]  # those after the starting snapshot
    start: credits.Snapshot
    usage_query: Callable[[list[datetime]], dict[datetime, Decimal]]
    period: Any  # the usage period in force at `until` (a manual reset may have moved its anchor)
    period_start: datetime  # start of the current usage period at `until`
    summed: Summed | None = None  # what the usage adds up, for SUM and COUNT meters

    def next_change(self, after: datetime) -> datetime | None:
        """The first instant after `after` where the balance can change without usage: a grant starts, ends or
        recurs, or the usage period resets."""
        times = [self.period.next_after(after)]
        for g in self.grants:
            times += [t for t in (g.effective_at, g.ends_at) if t is not None and t > after]
            if g.recurrence is not None:
                times.append(g.recurrence.next_after(after))
        return min(times, default=None)


_GRANT_FIELDS = ("id", "amount", "priority", "effectiveAt", "expiresAt", "createdAt", "maxRolloverAmount",
                 "minRolloverAmount", "voidedAt")
_PARSED_GRANTS: dict[tuple[Any, ...], credits.Grant] = {}  # engine grants (frozen) by every field they are made of


def _engine_grants(docs: list[dict[str, Any]]) -> list[credits.Grant]:
    out = []
    for g in docs:
        if g.get("deletedAt"):
            continue
        key = (*(g.get(f) for f in _GRANT_FIELDS), repr(g.get("recurrence")))
        known = _PARSED_GRANTS.get(key)
        if known is None:
            if len(_PARSED_GRANTS) >= 100_000:
                _PARSED_GRANTS.clear()
            known = _PARSED_GRANTS[key] = _engine_grant(g)
        out.append(known)
    return out


def _engine_grant(g: dict[str, Any]) -> credits.Grant:
    return credits.Grant(
        id=g["id"], amount=Decimal(g["amount"]), priority=int(g.get("priority", 1)),
        effective_at=parse_rfc3339(g["effectiveAt"], "effectiveAt"),
        expires_at=parse_rfc3339(g["expiresAt"], "expiresAt") if g.get("expiresAt") else None,
        created_at=parse_rfc3339(g["createdAt"], "createdAt"),
        max_rollover_amount=Decimal(g.get("maxRolloverAmount", 0)),
        min_rollover_amount=Decimal(g.get("minRolloverAmount", 0)),
        recurrence=period_of(g["recurrence"]) if g.get("recurrence") else None,
        voided_at=parse_rfc3339(g["voidedAt"], "voidedAt") if g.get("voidedAt") else None,
    )


def feature_filters(feature: dict[str, Any]) -> list[list[GroupFilter]]:
    conj = parse_filters(feature["advancedMeterGroupByFilters"]) if feature.get("advancedMeterGroupByFilters") else []
    simple = [GroupFilter(k, "$eq", v) for k, v in (feature.get("meterGroupByFilters") or {}).items()]
    if simple:
        conj = [c + simple for c in conj] if conj else [simple]
    return conj


# A feature's meter and group-by filters, per entitlement store, by (namespace, feature id): a feature never changes
# but for its archival (features.archive_feature) and is never deleted, so every process may keep what it read.
_FEATURE_METERS: weakref.WeakKeyDictionary[Any, dict[tuple[str, str], tuple[str, str, list[list[GroupFilter]]]]] = \
    weakref.WeakKeyDictionary()


def _feature_meter(namespace: str, ent: dict[str, Any], store: EntitlementStore) -> tuple[str, str, list[list[GroupFilter]]]:
    """(feature key, meter slug, filters) of the entitlement's feature."""
    known = _FEATURE_METERS.setdefault(store, {})
    found = known.get((namespace, ent["featureId"]))
    if found is None:
        feature = store.get_feature(namespace, ent["featureId"], include_archived=True)
        if feature is None or not feature.get("meterSlug"):
            raise NotFound(f"feature {ent['featureKey']!r} of the entitlement has no meter")
        if len(known) >= 100_000:
            known.clear()
        found = known[(namespace, ent["featureId"])] = (feature["key"], feature["meterSlug"], feature_filters(feature))
    return found


def _ledger(namespace: str, ent: dict[str, Any], until: datetime, *, store: EntitlementStore, meta: MetaStore,
            usage: UsageStore, snapshot_not_after: datetime | None = None, party: list[str] | None = None) -> Ledger:
    """`party`: the entitlement's subject's party (party_subject_keys of [ent["subjectKey"]]) if the caller has it."""
    feature_key, meter_slug, filters = _feature_meter(namespace, ent, store)
    meter = meta.get_meter(namespace, meter_slug)
    if meter is None:
        raise NotFound(f"meter {meter_slug!r} of feature {feature_key!r} was deleted")
    stored_resets, snap, grants = store.ledger_rows(namespace, ent["id"],
                                                    until if snapshot_not_after is None else snapshot_not_after)
    resets, period = reset_schedule(ent, stored_resets, until)
    measure = parse_rfc3339(ent["measureUsageFrom"], "measureUsageFrom")
    period_start = max(period.containing(minute(until))[0], resets[-1].at if resets else measure, measure)
    if snap is not None:
        start = credits.Snapshot.from_json(snap)
        resets = [r for r in resets if r.at > start.at]
    else:
        start = credits.Snapshot.empty(measure)
    # the customer's usage, all its subjects
    subjects = party if party is not None else party_subject_keys(namespace, [ent["subjectKey"]], meta)

    def whole(s: datetime, e: datetime) -> Decimal:
        """The meter's value over [s, e) as one span: its distinct values (UNIQUE_COUNT), its last value (LATEST)."""
        if e <= s:
            return Decimal(0)
        rows = usage.aggregate(UsageQuery(
            namespace=namespace, meter_id=meter.id, aggregation=meter.aggregation, start=s,
            end=e - timedelta(milliseconds=1), window_size=None, window_tz="UTC", subjects=subjects, group_by=[],
            by_subject=False, subject_customers=None, filters=filters))
        return exact_sum(final_value(meter.aggregation, r) or Decimal(0) for r in rows)

    def query(bounds: list[datetime]) -> dict[datetime, Decimal]:
        if len(bounds) < 2:
            return {}
        if meter.aggregation in ("SUM", "COUNT"):  # the sums of the segments, and nothing else (issue 17 item 5)
            return dict(zip(bounds, usage.bounded_usage(namespace, meter.id, meter.aggregation, subjects, filters,
                                                        bounds), strict=False))
        if meter.aggregation in ("UNIQUE_COUNT", "LATEST"):
            # These values do not add up across segments (a user seen before and after a grant starts is one user;
            # a gauge read 10 then 12 stands at 12, not 22): a segment's usage is what it adds to its usage
            # period's value so far, so the segments of a period sum to that period's value. Periods start at the
            # ledger's start (its measureUsageFrom or the reset of its snapshot) and at each reset, and every
            # reset is a bound. (A gauge that goes down gives a negative segment: it only cancels overage.)
            starts = sorted({start.at, *(r.at for r in resets)})
            # A span between two neighbouring bounds is a window of one query over all of them (most periods are
            # one segment: a first check since measureUsageFrom may span thousands, a query each took seconds).
            # On a UNIQUE_COUNT meter each window counts the distinct values of its period so far (running_from).
            # The value of a span from a period start is then that of its last window with usage: no read of its
            # own (a read per bound inside a period: an hourly history through a monthly period, 600 windows, took
            # 6.5 s on chdb).
            windows = windowed(bounds, starts if meter.aggregation == "UNIQUE_COUNT" else None)
            at = {b: i for i, b in enumerate(bounds)}
            used: list[datetime | None] = []  # by bound index: the latest window at or before it with usage
            for b in bounds:
                used.append(b if b in windows else used[-1] if used else None)
            seen: dict[tuple[datetime, datetime], Decimal] = {}

            def upto(p: datetime, t: datetime) -> Decimal:
                if (p, t) not in seen:
                    if p in at and t in at:
                        last = used[at[t] - 1]
                        seen[(p, t)] = windows[last] if last is not None and last >= p else Decimal(0)
                    else:
                        seen[(p, t)] = whole(p, t)
                return seen[(p, t)]

            out: dict[datetime, Decimal] = {}
            for s, e in zip(bounds, bounds[1:], strict=False):
                p = starts[max(bisect_right(starts, s) - 1, 0)]
                out[s] = upto(p, e) - (upto(p, s) if s > p else Decimal(0))
            return out
        return windowed(bounds)

    def windowed(bounds: list[datetime], running_from: list[datetime] | None = None) -> dict[datetime, Decimal]:
        """The meter's value over each [bounds[i], bounds[i + 1]) with usage, by its start: one query."""
        rows = usage.aggregate(UsageQuery(
            namespace=namespace, meter_id=meter.id, aggregation=meter.aggregation, start=bounds[0],
            end=bounds[-1] - timedelta(milliseconds=1), window_size="BOUNDS", window_tz="UTC",
            subjects=subjects, group_by=[], by_subject=False, subject_customers=None, filters=filters,
            bounds=bounds, running_from=running_from))
        return {r.window_start: final_value(meter.aggregation, r) for r in rows if r.window_start is not None}

    summed = (Summed(meter.id, meter.aggregation == "COUNT", frozenset(subjects), filters)
              if meter.aggregation in ("SUM", "COUNT") else None)
    return Ledger(ent, _engine_grants(grants), resets, start, query, period,
                  max(period_start, start.at), summed)


class _Usage:
    """Usage of [s, e) for any s, e among the bounds: the sum of the buckets between them (`values[i]`: the usage
    of [bounds[i], bounds[i + 1]); the last is 0)."""

    def __init__(self, bounds: list[datetime], values: list[Decimal]) -> None:
        self.bounds = bounds
        self.values = values

    @classmethod
    def read(cls, ledger: Ledger, bounds: list[datetime]) -> _Usage:
        got = ledger.usage_query(bounds)
        return cls(bounds, [got.get(b, Decimal(0)) for b in bounds])

    def __call__(self, s: datetime, e: datetime) -> Decimal:
        i, j = bisect_left(self.bounds, s), bisect_left(self.bounds, e)
        if i >= len(self.bounds) or self.bounds[i] != s or (j < len(self.bounds) and self.bounds[j] != e) or (
                j == len(self.bounds) and e != self.bounds[-1]):
            raise AssertionError(f"usage asked for [{s}, {e}) off the segment bounds")
        return exact_sum(self.values[i:j])


def _run(ledger: Ledger, start: credits.Snapshot, until: datetime,
         usage: Callable[[datetime, datetime], Decimal], *, keep_history: bool = False) -> credits.Result:
    """The engine from `start` through `until`; its segments only with `keep_history` (a balance needs none)."""
    resets = [r for r in ledger.resets if start.at < r.at <= until]
    return credits.run(ledger.grants, start, [credits.ResetAt(r.at, r.preserve_overage) for r in resets], usage,
                       until, keep_history=keep_history)


def _bounds(ledger: Ledger, stops: list[datetime]) -> list[datetime]:
    """Every instant a segment of a run from the ledger's start through `stops` begins or ends."""
    seen: set[datetime] = {ledger.start.at, *stops}

    def record(s: datetime, e: datetime) -> Decimal:
        seen.update((s, e))
        return Decimal(0)

    cur = ledger.start
    for stop in stops:
        if stop < cur.at:
            continue
        cur = _run(ledger, cur, stop, record).end
    return sorted(t for t in seen if ledger.start.at <= t <= stops[-1])


@dataclass
class _Live:
    """A metered value's computation (SUM or COUNT usage), kept to bring it forward to a later instant with the
    usage stored since added here, without reading the store again (BalanceCache)."""

    ledger: Ledger
    marks: tuple[datetime, ...]  # the run's stops other than `until`: the reset a snapshot is taken at, the period start
    used: _Usage  # its last bound is `until`
    soft: bool
    counts_from: datetime  # measureUsageFrom: usage before it never counts
    # The engine's state after each mark and at the start of the last segment, as the run reached it: usage stored
    # since for times at or after one of them leaves the run up to it as it was, so bringing the value forward runs
    # the engine from there only (usage for the last segment: that segment alone).
    at_marks: dict[datetime, credits.Snapshot] = field(default_factory=dict)

    def advance(self, until: datetime, added: Sequence[tuple[datetime, Decimal]]) -> tuple[_Live, dict[str, Any]] | None:
        """The value at `until` (no earlier than this one's) with `added` usage, and the computation it makes: the
        same run as a fresh read at `until`, its segments' usage summed from this one's and `added`. None if that is
        not possible (usage between measureUsageFrom and the ledger's start, usage at or after `until`, a segment
        this one split differently): read then.
        The caller makes sure nothing but usage changed (the cache's generation, versions and valid_until)."""
        old = self.used.bounds
        if until < old[-1]:
            return None
        stops = sorted({*self.marks, until})
        # The same stops as this computation's (the clock has not moved): the same segments, which usage does not move.
        # The clock moved with no change of the balance and no mark since the last segment's start: that segment
        # runs on to `until` (the bounds the engine's dry run would give, without running it).
        if until == old[-1]:
            bounds = old
        elif len(old) > 1 and all(m <= old[-2] for m in self.marks) and all(
                not old[-2] < r.at <= until for r in self.ledger.resets) and (
                (change := self.ledger.next_change(old[-2])) is None or change > until):
            bounds = [*old[:-1], until]
        else:
            bounds = _bounds(self.ledger, stops)
        known = set(old)
        if bounds[-1] != until or bounds[0] != old[0] or any(b not in known for b in bounds[:-1]):
            return None
        parts: list[list[Decimal]] = [[] for _ in bounds]
        for b, v in zip(old, self.used.values, strict=True):  # each old segment lies within one new segment
            parts[bisect_right(bounds, b) - 1].append(v)
        earliest = until
        for t, amount in added:
            if t < self.counts_from:
                continue
            if not bounds[0] <= t < until:
                return None
            earliest = min(earliest, t)
            parts[bisect_right(bounds, t) - 1].append(amount)
        # The latest mark no added usage precedes, whose segments before it are the same: the run resumes there.
        resume = next((self.at_marks[m] for m in sorted(self.at_marks, reverse=True)
                       if m <= earliest and bounds[:bisect_right(bounds, m)] == old[:bisect_right(old, m)]), None)
        live = _Live(self.ledger, self.marks, _Usage(bounds, [exact_sum(p) for p in parts]), self.soft, self.counts_from)
        live.at_marks = {m: snap for m, snap in self.at_marks.items() if resume is not None and m <= resume.at}
        return live, _settle(self.ledger, sorted({*stops, bounds[-2]}) if len(bounds) > 1 else stops, live.used,
                             self.soft, until, reached=live.at_marks, resume=resume)


class _Item:
    __slots__ = ("generation", "versions", "computed_at", "valid_until", "result", "live", "added")

    def __init__(self, generation: int, versions: tuple[int, ...], computed_at: datetime, valid_until: datetime | None,
                 result: dict[str, Any], live: _Live | None) -> None:
        self.generation, self.versions, self.computed_at = generation, versions, computed_at
        self.valid_until, self.result, self.live = valid_until, result, live
        self.added: list[tuple[datetime, Decimal]] = []  # usage stored since, for `live` (in the order told)


_NEVER = datetime.min.replace(tzinfo=UTC)


class BalanceCache:
    """Entitlement values of one process that hosts its own usage sink (`billow serve` on the in-process bus):
    a value stays right until usage for its subject is stored, an entitlement/grant/reset is written, or the
    balance's next change without usage (a grant starting, ending or recurring; a reset) comes due. The sink tells
    `usage_added` of every value it stores: a SUM or COUNT value takes it in (the next check adds it to the
    segment it falls in and runs the engine again, no store read); any other value is dropped and computed again.
    Usage stored for a time still ahead of the clock (`now`) counts from that time on: no value of its subjects is
    kept until the clock has passed it. The entitlement store counts its writes (`generation`). Not for Lambda,
    where the sink runs elsewhere: there every check reads the snapshot plus the usage since."""

    MAX_ADDED = 4096  # usage values held for one cached value before it is read afresh instead

    def __init__(self, now: Callable[[], datetime], max_items: int = 100_000) -> None:
        self._now = now
        self._lock = threading.Lock()
        self._adding = threading.Lock()  # one usage_added at a time
        self._writing: dict[tuple[str, str], int] = {}  # subjects of writes under way (usage_writing), how many
        self._versions: dict[tuple[str, str], int] = {}
        self._ahead: dict[tuple[str, str], datetime] = {}  # the latest usage time stored ahead of the clock
        self._items: dict[tuple[str, tuple[str, ...], str], _Item] = {}
        self._by_subject: dict[tuple[str, str], list[tuple[str, tuple[str, ...], str]]] = {}  # the keys of a subject
        self._parties: dict[tuple[str, tuple[str, ...]], tuple[int, list[str]]] = {}
        self._subjects: dict[tuple[str, str], tuple[tuple[int, int], str]] = {}
        self.max_items = max_items

    def party(self, namespace: str, subjects: list[str], meta: MetaStore) -> list[str]:
        """`party_subject_keys`, remembered until this process writes a customer (`meta.customers_generation`)."""
        key, generation = (namespace, tuple(subjects)), meta.customers_generation
        hit = self._parties.get(key)
        if hit is not None and hit[0] == generation:
            return hit[1]
        out = party_subject_keys(namespace, subjects, meta)
        with self._lock:
            if len(self._parties) >= self.max_items:
                self._parties.clear()
            self._parties[key] = (generation, out)
        return out

    def subject_key(self, namespace: str, id_or_key: str, meta: MetaStore) -> str:
        """`entitlements.subject_key`, remembered until this process writes a subject or a customer: a cached check
        then reads nothing from the meta database (that SELECT was most of its time)."""
        key, generation = (namespace, id_or_key), (meta.subjects_generation, meta.customers_generation)
        hit = self._subjects.get(key)
        if hit is not None and hit[0] == generation:
            return hit[1]
        out = subject_key(namespace, id_or_key, meta)  # NotFound is not remembered
        with self._lock:
            if len(self._subjects) >= self.max_items:
                self._subjects.clear()
            self._subjects[key] = (generation, out)
        return out

    def usage_writing(self, namespace: str, subjects: set[str]) -> None:
        """sink.UsageListener: a write of these subjects' usage begins. Until `usage_written`, no value of them is kept:
        a read may see the write before the cache is told of it (`usage_added` would then add it twice)."""
        with self._lock:
            for s in subjects:
                self._writing[(namespace, s)] = self._writing.get((namespace, s), 0) + 1

    def usage_written(self, namespace: str, subjects: set[str]) -> None:
        """sink.UsageListener: the write `usage_writing` announced is over (told, or failed and told)."""
        with self._lock:
            for s in subjects:
                left = self._writing.get((namespace, s), 0) - 1
                if left > 0:
                    self._writing[(namespace, s)] = left
                else:
                    self._writing.pop((namespace, s), None)

    def usage_added(self, namespace: str, values: Sequence[MeterValue], changed: Iterable[str] = ()) -> None:
        """sink.UsageListener: `values` joined the stored sums (each once); `changed` subjects' sums changed otherwise.
        Every value computed before this call and cached after it is stale: `versions`, read before computing, tell.
        The values are matched to the cached ones outside the lock that checks take (a large batch does not hold
        them up); calls take turns."""
        latest = latest_by_subject(values)  # (the sink's ValueColumns: no object made per value for this)
        now = self._now()
        ahead = {s: t for s, t in latest.items() if t > now}
        with self._adding:
            touched: list[tuple[str, tuple[str, tuple[str, ...], str], _Item, Summed]] = []
            with self._lock:
                if ahead and len(self._ahead) >= self.max_items:
                    self._ahead = {k: t for k, t in self._ahead.items() if t > now}
                for s, t in ahead.items():
                    self._ahead[(namespace, s)] = max(t, self._ahead.get((namespace, s), t))
                for s in {*latest, *changed}:
                    self._versions[(namespace, s)] = self._versions.get((namespace, s), 0) + 1
                    for key in self._by_subject.pop((namespace, s), ()):
                        item = self._items.get(key)
                        if item is None:
                            continue
                        summed = item.live.ledger.summed if item.live is not None else None
                        if s in changed or summed is None:
                            del self._items[key]
                        else:
                            touched.append((s, key, item, summed))
            # (until the last step, these items' versions are behind: no check answers from them, none writes them)
            of = values_by_subject(values, {s for s, _, _, _ in touched}) if touched else {}
            found = [(s, key, item, [(v.time, a) for v in of.get(s, ()) if (a := summed.amount(v)) is not None])
                     for s, key, item, summed in touched]
            with self._lock:
                for s, key, item, amounts in found:
                    if self._items.get(key) is not item:  # computed afresh meanwhile (from a read that saw these)
                        continue
                    item.added.extend(amounts)
                    if len(item.added) > self.MAX_ADDED:
                        del self._items[key]
                        continue
                    item.versions = self.versions(namespace, list(key[1]))
                    self._by_subject.setdefault((namespace, s), []).append(key)

    def _key(self, namespace: str, subjects: list[str], ref: str) -> tuple[str, tuple[str, ...], str]:
        return namespace, tuple(subjects), ref

    def versions(self, namespace: str, subjects: list[str]) -> tuple[int, ...]:
        return tuple(self._versions.get((namespace, s), 0) for s in subjects)

    def get(self, namespace: str, subjects: list[str], ref: str, generation: int, t: datetime) -> dict[str, Any] | None:
        key = self._key(namespace, subjects, ref)
        item = self._items.get(key)
        if item is None:
            return None
        with self._lock:
            versions, live, added = item.versions, item.live, list(item.added)
        if item.generation != generation or versions != self.versions(namespace, subjects) or t < item.computed_at or (
                item.valid_until is not None and t >= item.valid_until):
            return None
        if not added:
            return dict(item.result)
        assert live is not None  # usage_added keeps `added` only beside a computation to add it to
        moved = live.advance(t, added)
        if moved is None:
            return None
        live, result = moved
        with self._lock:  # what was added meanwhile stays for the next check
            if self._items.get(key) is item and item.versions == versions:
                del item.added[:len(added)]
                item.live, item.result, item.computed_at = live, result, t
        return dict(result)

    def put(self, namespace: str, subjects: list[str], ref: str, generation: int, versions: tuple[int, ...],
            computed_at: datetime, valid_until: datetime | None, result: dict[str, Any], live: _Live | None) -> None:
        """Keep a value computed from the store with `versions` read before it began. If usage was stored for its
        subjects meanwhile, the read may or may not have seen it: nothing is kept; nor while a write of their usage is
        under way (the read may have seen it, and the cache will be told of it), nor while usage for them is stored
        for a time not yet counted."""
        key = self._key(namespace, subjects, ref)
        with self._lock:
            if versions != self.versions(namespace, subjects) or any(
                    (namespace, s) in self._writing or self._ahead.get((namespace, s), _NEVER) >= computed_at
                    for s in subjects):
                return
            if len(self._items) >= self.max_items:
                self._items.clear()
                self._by_subject.clear()
            self._items[key] = _Item(generation, versions, computed_at, valid_until, dict(result), live)
            for s in subjects:
                keys = self._by_subject.setdefault((namespace, s), [])
                if key not in keys:
                    keys.append(key)


def value(namespace: str, subject_keys: list[str], id_or_feature_key: str, at: datetime | None, *,
          store: EntitlementStore, meta: MetaStore, usage: UsageStore, now: datetime,
          cache: BalanceCache | None = None) -> dict[str, Any]:
    asked = subject_keys
    live = cache is not None and at is None
    if live:
        assert cache is not None
        subject_keys = cache.party(namespace, subject_keys, meta)
        generation = store.generation
        versions = cache.versions(namespace, subject_keys)
        hit = cache.get(namespace, subject_keys, id_or_feature_key, generation, now)
        if hit is not None:
            return hit
    else:
        subject_keys = party_subject_keys(namespace, subject_keys, meta)
    out, valid_until, computed = _value(namespace, subject_keys, id_or_feature_key, at, store=store, meta=meta,
                                        usage=usage, now=now, asked=asked)
    if live:
        assert cache is not None
        cache.put(namespace, subject_keys, id_or_feature_key, generation, versions, now, valid_until, out, computed)
    return out


def _value(namespace: str, subject_keys: list[str], id_or_feature_key: str, at: datetime | None, *,
           store: EntitlementStore, meta: MetaStore, usage: UsageStore, now: datetime, asked: list[str] | None = None
           ) -> tuple[dict[str, Any], datetime | None, _Live | None]:
    """The value, until when it holds if no usage arrives and nothing is written, and (a metered value) what it was
    computed from. `subject_keys` is the party of the subjects `asked` for: when that was the entitlement's own
    subject alone, it is that subject's party too, not looked up again."""
    ent = resolve(namespace, subject_keys, id_or_feature_key, store=store)
    if ent["type"] == "boolean":
        return {"hasAccess": True}, None, None
    if ent["type"] == "static":
        return {"hasAccess": True, "config": ent["config"]}, None, None
    until = (at or now).astimezone(UTC)
    soft = bool(ent.get("isSoftLimit"))
    measure = parse_rfc3339(ent["measureUsageFrom"], "measureUsageFrom")
    if until < measure:
        return {"hasAccess": soft, "balance": 0, "usage": 0, "overage": 0, "totalAvailableGrantAmount": 0}, measure, None
    party = subject_keys if asked == [ent["subjectKey"]] else None
    ledger = _ledger(namespace, ent, until, store=store, meta=meta, usage=usage, party=party)
    # The snapshot is taken at the latest reset older than the grace, not only at the last reset: a period shorter
    # than the grace (an hourly one) has its last reset always within it, and every check then ran the engine (and
    # read the usage of every period) from measureUsageFrom on, more each hour.
    snapshot_at = next((r.at for r in reversed(ledger.resets) if r.at <= now - SNAPSHOT_GRACE), None)
    stops = sorted({t for t in (snapshot_at, ledger.period_start, until) if t is not None})
    bounds = _bounds(ledger, stops)
    read_at = now
    used = _Usage.read(ledger, bounds)

    def save(stop: datetime, cur: credits.Snapshot) -> None:
        if stop == snapshot_at:
            store.save_snapshot(namespace, ent["id"], ent["subjectKey"], stop, cur.to_json(), computed_from=read_at)

    at_marks: dict[datetime, credits.Snapshot] = {}  # the stops but `until` are the marks
    # The run also stops where its last segment begins (the same run: a run split where a segment begins is the run
    # unsplit), so that a cached check told of usage in that segment, the usual case, runs the engine over that
    # segment alone (`_Live.advance`).
    out = _settle(ledger, sorted({*stops, bounds[-2]}) if len(bounds) > 1 else stops, used, soft, until, save,
                  reached=at_marks)
    marks = tuple(t for t in (snapshot_at, ledger.period_start) if t is not None)
    # What the engine needs of the ledger, kept: not the entitlement's document nor the store read (a cache holds many)
    kept = replace(ledger, ent={}, usage_query=_read_nothing)
    return out, ledger.next_change(until), (_Live(kept, marks, used, soft, measure, at_marks) if bounds[-1] == until
                                            else None)


def _read_nothing(bounds: list[datetime]) -> dict[datetime, Decimal]:
    raise AssertionError("a kept computation reads no usage")


def _settle(ledger: Ledger, stops: list[datetime], used: _Usage, soft: bool, until: datetime,
            save: Callable[[datetime, credits.Snapshot], None] | None = None, *,
            reached: dict[datetime, credits.Snapshot] | None = None,
            resume: credits.Snapshot | None = None) -> dict[str, Any]:
    """The value at `until` (the last of `stops`): the engine run from the ledger's start through every stop, or from
    `resume` (the state the same run reached after the stop at its instant) through the stops after it. `reached`
    gets the state after each stop run but `until`."""
    cur = ledger.start if resume is None else resume
    for stop in stops:
        if stop < cur.at or (resume is not None and stop == resume.at):
            continue
        cur = _run(ledger, cur, stop, used).end
        if reached is not None and stop != until:
            reached[stop] = cur
        if save is not None:
            save(stop, cur)
    balance, overage = cur.balance, cur.overage
    in_period = used(ledger.period_start, until)
    # What the grants held for this period: what is left plus what usage burned of it.
    available = balance + in_period - overage
    return {"hasAccess": balance > 0 or soft, "balance": _num(balance), "usage": _num(in_period),
            "overage": _num(overage), "totalAvailableGrantAmount": _num(max(available, Decimal(0)))}


# No hour is longer than 90 minutes (Python's, at a half-hour DST change), a day than 26 hours nor a month than 32
# days: a range longer than this many of them has too many windows.
_LONGEST = {"MINUTE": timedelta(minutes=1), "HOUR": timedelta(minutes=90), "DAY": timedelta(hours=26),
            "MONTH": timedelta(days=32)}


def _history_windows(start: datetime, end: datetime, size: str, tz: ZoneInfo, usage: UsageStore) -> list[datetime]:
    """The starts of the windows of `size` in `tz` that hold an instant of [start, end) (the first may be before
    `start`), more than MAX_HISTORY_WINDOWS when there are too many. Hours, days and months outside UTC are the
    usage store's (its calendar draws the meter query's windows; Python's time-zone data can be another version: on
    Vancouver from November 2026 each day was an hour off the meter query's; chdb's hours after Lord Howe's
    half-hour DST change are aligned otherwise than Python's), in at most one statement."""
    if (end - start) / _LONGEST[size] > MAX_HISTORY_WINDOWS + 1:
        return [start] * (MAX_HISTORY_WINDOWS + 1)
    if size != "MINUTE" and tz.key != "UTC":
        return usage.window_starts(start, end, size, tz.key)
    out = [window_start(start, size, tz)]
    while len(out) <= MAX_HISTORY_WINDOWS and (nxt := window_end(out[-1], size, tz)) < end:
        out.append(nxt)
    return out


def history(namespace: str, subject_keys: list[str], entitlement_id: str, qs: dict[str, list[str]], *,
            store: EntitlementStore, meta: MetaStore, usage: UsageStore, now: datetime) -> dict[str, Any]:
    ent = resolve(namespace, party_subject_keys(namespace, subject_keys, meta), entitlement_id, store=store)
    if ent["type"] != "metered":
        raise bad("entitlementId", "only metered entitlements have a balance history")
    size = params.one(qs, "windowSize", blank=True)
    if size not in WINDOW_SIZES:
        raise bad("windowSize", f"required, one of {', '.join(WINDOW_SIZES)}")
    raw_tz = params.one(qs, "windowTimeZone", blank=True)
    tz = zone("UTC" if raw_tz is None else raw_tz)
    measure = parse_rfc3339(ent["measureUsageFrom"], "measureUsageFrom")
    raw_from, raw_to = params.one(qs, "from", blank=True), params.one(qs, "to", blank=True)
    start = parse_rfc3339(raw_from, "from") if raw_from is not None else measure
    end = parse_rfc3339(raw_to, "to") if raw_to is not None else now
    if end > now:
        end = now
    start = max(start, measure)
    if start >= end:
        raise bad("from", "must be before to (and before now)")
    windows = _history_windows(start, end, size, tz, usage)
    if len(windows) > MAX_HISTORY_WINDOWS:
        raise bad("windowSize", f"more than {MAX_HISTORY_WINDOWS} windows; use a larger window or a shorter range")
    windows[0] = max(windows[0], start)
    # Start from a snapshot no later than the first window, so that a range spanning resets keeps its earlier windows.
    ledger = _ledger(namespace, ent, end, store=store, meta=meta, usage=usage, snapshot_not_after=start)
    # A window that starts where the ledger starts (measureUsageFrom, a snapshot) is a window too.
    stops = sorted({t for t in (*windows, end) if t >= ledger.start.at})
    bounds = _bounds(ledger, stops)
    used = _Usage.read(ledger, bounds)
    cur = ledger.start
    windowed, burndown = [], []
    for i, stop in enumerate(stops):
        if stop < cur.at:
            continue
        res = _run(ledger, cur, stop, used, keep_history=True)
        if cur.at >= start:
            burndown.extend(res.segments_json())
        cur = res.end
        if stop in windows:
            w_end = stops[i + 1] if i + 1 < len(stops) else end
            windowed.append({"period": {"from": format_rfc3339(stop), "to": format_rfc3339(w_end)},
                             "usage": _num(used(stop, w_end)), "balanceAtStart": _num(cur.balance)})
    return {"windowedHistory": windowed, "burndownHistory": burndown}
