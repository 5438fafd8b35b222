"""The prepaid-credit balance engine: grants burnt down by metered usage, with resets, rollover, recurrence,
expiry and voiding. Pure: the only input from outside is the caller's `usage(start, end)` function.

Semantics (OpenMeter's credit engine, `openmeter/credit/engine` and `openmeter/credit/grant`):

- Resolution is one minute. Grant times (effective, expiry, void, recurrence anchor) and reset times are
  truncated to the minute (floored, as OpenMeter's grant connector does with `EffectiveAt.Truncate(time.Minute)`
  and the engine with activity changes). `start.at` and `until` are used as given.
- A grant is active at t when effective_at <= t < expires_at and t < voided_at (`Grant.ActiveAt`). When it
  stops being active its remaining balance leaves (counted as expired or voided).
- Time is cut into segments at every instant where a grant enters, expires or is voided, a grant recurs, or a
  reset happens; `usage` is asked once per segment for [from, to).
- Within a segment, usage burns the active grants in order: priority ascending (1 first), then earlier expiry
  (none last), then earlier created_at, then id (`PrioritizeGrants`). Usage beyond every balance is overage;
  a balance never goes negative.
- Overage is a debt within the usage period: when credit appears later in the same period (a grant becomes
  effective, a recurring grant is topped up), the outstanding overage is burnt from it at once, in priority
  order. OpenMeter does this by burning `usage + overage` in each burn phase (`runBetweenResets`).
- At a reset, each active grant's balance becomes MIN(max_rollover, MAX(balance, min_rollover))
  (`Grant.RolloverBalance`); the overage becomes 0, unless the reset preserves it, in which case it is burnt
  from the rolled-over balances and any rest stays as overage (`engine.reset`).
- At each boundary of its recurrence after effective_at, while active, a grant's balance is set back to its
  amount (`Grant.RecurrenceBalance`; what was left is forfeited).
- A grant active at the start snapshot but missing from it enters with its full amount; grants in the
  snapshot that are unknown or inactive are dropped (`populateBalanceSnapshotWithMissingGrantsActiveAt`,
  `removeInactiveGrantsFromSnapshotAt`, `NewStartingSnapshot`).

Order of changes at one instant t: (1) grants ending at t leave, (2) a reset at t, (3) recurrences at t
(so a recurrence that coincides with a reset tops the grant up to its full amount), (4) grants effective at t
enter with their amount, (5) outstanding overage is burnt. A snapshot at t is the state after all five,
so `run` continues from it with the changes in (t, until]; changes at `until` are applied.

Invariant: after every step, overage > 0 implies every active balance is 0. Hence for non-negative usage a run
split at any instant equals the unsplit run exactly. Negative segment usage (a SUM meter with corrections) only
reduces outstanding overage; credits once burnt are not given back.

All arithmetic is exact (Decimal, 120 digits, rounding traps).
"""

from __future__ import annotations

import decimal
from bisect import insort
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from billow.domain.periods import RecurringPeriod
from billow.errors import ValidationFailed
from billow.exact import EXACT
from billow.timeutil import format_rfc3339, parse_rfc3339

ZERO = Decimal(0)
UsageFn = Callable[[datetime, datetime], Decimal]


_bad = ValidationFailed.at


def to_minute(t: datetime) -> datetime:
    """UTC, truncated to the engine's one-minute resolution."""
    return t.astimezone(UTC).replace(second=0, microsecond=0)


def _aware(value: Any, fld: str) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise _bad(fld, "must be a date-time with a time-zone offset")
    return value


def _decimal(value: Any, fld: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, Decimal | int):
        raise _bad(fld, "must be a Decimal (money is never a float)")
    d = Decimal(value)
    if not d.is_finite():
        raise _bad(fld, "must be a finite number")
    return d


def _plain(d: Decimal) -> Decimal:
    """Without trailing zeros or exponent: 2.50 -> 2.5, 1E+2 -> 100."""
    if d == 0:
        return ZERO
    with decimal.localcontext(EXACT):
        n = d.normalize()
        exp = n.as_tuple().exponent
        return n.quantize(Decimal(1)) if isinstance(exp, int) and exp > 0 else n


# -- inputs -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Grant:
    """A grant of credits. Times are normalised to UTC and truncated to the minute on construction.

    Errors name the API field (amount, priority, effectiveAt, expiresAt, maxRolloverAmount, ...)."""

    id: str
    amount: Decimal
    priority: int = 1
    effective_at: datetime
    expires_at: datetime | None = None
    created_at: datetime
    max_rollover_amount: Decimal = ZERO
    min_rollover_amount: Decimal = ZERO
    recurrence: RecurringPeriod | None = None
    voided_at: datetime | None = None
    # min(expires_at, voided_at): the first instant the grant is no longer active (None: never)
    ends_at: datetime | None = field(init=False, repr=False, compare=False)
    sort_key: tuple[Any, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise _bad("id", "must be a non-empty string")
        amount = _decimal(self.amount, "amount")
        if amount <= 0:
            raise _bad("amount", "must be greater than 0")
        if isinstance(self.priority, bool) or not isinstance(self.priority, int) or not 1 <= self.priority <= 255:
            raise _bad("priority", "must be an integer from 1 to 255")
        effective = to_minute(_aware(self.effective_at, "effectiveAt"))
        expires = to_minute(_aware(self.expires_at, "expiresAt")) if self.expires_at is not None else None
        if expires is not None and expires <= effective:
            raise _bad("expiresAt", "must be after effectiveAt")
        voided = to_minute(_aware(self.voided_at, "voidedAt")) if self.voided_at is not None else None
        created = _aware(self.created_at, "createdAt").astimezone(UTC)
        max_roll = _decimal(self.max_rollover_amount, "maxRolloverAmount")
        min_roll = _decimal(self.min_rollover_amount, "minRolloverAmount")
        if max_roll < 0:
            raise _bad("maxRolloverAmount", "must not be negative")
        if min_roll < 0:
            raise _bad("minRolloverAmount", "must not be negative")
        if min_roll > max_roll:
            raise _bad("minRolloverAmount", "must not be greater than maxRolloverAmount")
        rec = self.recurrence
        if rec is not None:
            if not isinstance(rec, RecurringPeriod):
                raise _bad("recurrence", "must be a recurring period")
            if rec.anchor != to_minute(rec.anchor):
                rec = RecurringPeriod(interval=rec.interval, anchor=to_minute(rec.anchor), tz=rec.tz)
        ends = min((t for t in (expires, voided) if t is not None), default=None)
        s = object.__setattr__
        s(self, "amount", amount)
        s(self, "effective_at", effective)
        s(self, "expires_at", expires)
        s(self, "voided_at", voided)
        s(self, "created_at", created)
        s(self, "max_rollover_amount", max_roll)
        s(self, "min_rollover_amount", min_roll)
        s(self, "recurrence", rec)
        s(self, "ends_at", ends)
        s(self, "sort_key", (self.priority, expires is None, expires or datetime.max.replace(tzinfo=UTC),
                             created, self.id))

    def active_at(self, t: datetime) -> bool:
        return self.effective_at <= t and (self.ends_at is None or t < self.ends_at)

    def rollover(self, balance: Decimal) -> Decimal:
        """The balance carried over a reset: MIN(max_rollover, MAX(balance, min_rollover))."""
        return min(self.max_rollover_amount, max(balance, self.min_rollover_amount))

    def _ended_by_void(self) -> bool:
        return self.voided_at is not None and (self.expires_at is None or self.voided_at <= self.expires_at)


@dataclass(frozen=True)
class ResetAt:
    """A reset instant (usage-period boundary or manual reset). `preserve_overage` None: the run's default."""

    at: datetime
    preserve_overage: bool | None = None


@dataclass(frozen=True)
class Snapshot:
    """The engine state at `at`, after every change at `at`: enough to continue without reading history.
    `balances` holds the grants that have entered and are still active (a fully burnt grant stays, at 0)."""

    at: datetime
    balances: dict[str, Decimal]
    overage: Decimal = ZERO

    def __post_init__(self) -> None:
        object.__setattr__(self, "at", _aware(self.at, "at").astimezone(UTC))
        balances = {str(k): _decimal(v, f"balances.{k}") for k, v in self.balances.items()}
        if any(v < 0 for v in balances.values()):
            raise _bad("balances", "must not be negative")
        object.__setattr__(self, "balances", balances)
        overage = _decimal(self.overage, "overage")
        if overage < 0:
            raise _bad("overage", "must not be negative")
        object.__setattr__(self, "overage", overage)

    @classmethod
    def empty(cls, at: datetime) -> Snapshot:
        """The start of an entitlement with no history (at = measureUsageFrom): no balances, no overage.
        Grants active at `at` enter with their full amount when a run starts; later ones at effective_at."""
        return cls(at=at, balances={}, overage=ZERO)

    @property
    def balance(self) -> Decimal:
        with decimal.localcontext(EXACT):
            return sum(self.balances.values(), ZERO)

    def to_json(self) -> dict[str, Any]:
        """Exact: amounts as decimal strings."""
        return {"at": format_rfc3339(self.at), "balances": {k: str(v) for k, v in sorted(self.balances.items())},
                "overage": str(self.overage)}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Snapshot:
        at = doc["at"]
        return cls(at=parse_rfc3339(at, "at") if isinstance(at, str) else at,
                   balances={k: Decimal(v) if isinstance(v, str) else v for k, v in doc.get("balances", {}).items()},
                   overage=Decimal(doc["overage"]) if isinstance(doc.get("overage"), str) else doc.get("overage", ZERO))


# -- outputs ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Segment:
    """One row of burn-down history over [start, end): no grant enters, leaves, recurs or resets inside it.
    `*_at_start` is the state after every change at `start`; `grant_usages` is what this segment's usage burnt,
    in burn order. balance_at_end = balance_at_start - sum(grant_usages); overage = overage_at_start + usage -
    sum(grant_usages) for non-negative usage."""

    start: datetime
    end: datetime
    usage: Decimal
    overage_at_start: Decimal
    overage: Decimal
    grant_balances_at_start: dict[str, Decimal]
    grant_balances_at_end: dict[str, Decimal]
    grant_usages: tuple[tuple[str, Decimal], ...]
    reset_at_end: bool = False

    @property
    def balance_at_start(self) -> Decimal:
        with decimal.localcontext(EXACT):
            return sum(self.grant_balances_at_start.values(), ZERO)

    @property
    def balance_at_end(self) -> Decimal:
        with decimal.localcontext(EXACT):
            return sum(self.grant_balances_at_end.values(), ZERO)

    def to_json(self) -> dict[str, Any]:
        """OpenMeter's GrantBurnDownHistorySegment."""
        return {
            "period": {"from": format_rfc3339(self.start), "to": format_rfc3339(self.end)},
            "usage": _plain(self.usage),
            "overage": _plain(self.overage),
            "balanceAtStart": _plain(self.balance_at_start),
            "grantBalancesAtStart": {k: _plain(v) for k, v in self.grant_balances_at_start.items()},
            "balanceAtEnd": _plain(self.balance_at_end),
            "grantBalancesAtEnd": {k: _plain(v) for k, v in self.grant_balances_at_end.items()},
            "grantUsages": [{"grantId": g, "usage": _plain(u)} for g, u in self.grant_usages],
        }


@dataclass
class Flows:
    """Where credit came from and went during a run. Conservation (credits are never created or lost):
        start balance + granted + rolled_in == burned + expired + voided + forfeited + end balance.
    granted: amounts of grants entering and of recurrences; rolled_in: raised to min_rollover at a reset;
    forfeited: cut to max_rollover at a reset, or left over at a recurrence; burned: eaten by usage (including
    overage burnt later). Usage: usage + start overage == burned + overage_forgiven + end overage, where
    overage_forgiven is overage dropped at resets (and negative usage)."""

    granted: Decimal = ZERO
    rolled_in: Decimal = ZERO
    burned: Decimal = ZERO
    expired: Decimal = ZERO
    voided: Decimal = ZERO
    forfeited: Decimal = ZERO
    overage_forgiven: Decimal = ZERO


@dataclass(frozen=True)
class Result:
    end: Snapshot
    segments: list[Segment]
    flows: Flows

    @property
    def balance(self) -> Decimal:
        return self.end.balance

    @property
    def overage(self) -> Decimal:
        return self.end.overage

    def segments_json(self) -> list[dict[str, Any]]:
        return [s.to_json() for s in self.segments]


# -- the engine -------------------------------------------------------------------------------------------------
class _State:
    """Balances of the entered, active grants, kept in burn order."""

    def __init__(self, flows: Flows) -> None:
        self.bal: dict[str, Decimal] = {}
        self.order: list[Grant] = []
        self.overage = ZERO
        self.flows = flows

    def enter(self, g: Grant, balance: Decimal) -> None:
        self.bal[g.id] = balance
        insort(self.order, g, key=lambda x: x.sort_key)

    def leave(self, g: Grant) -> None:
        b = self.bal.pop(g.id, None)
        if b is None:
            return
        self.order = [x for x in self.order if x.id != g.id]
        if g._ended_by_void():
            self.flows.voided += b
        else:
            self.flows.expired += b

    def burn(self, amount: Decimal, uses: list[tuple[str, Decimal]] | None) -> Decimal:
        """Burn `amount` from the balances in order; returns what no balance covered."""
        bal = self.bal
        for g in self.order:
            if amount <= 0:
                break
            b = bal[g.id]
            if b <= 0:
                continue
            take = b if b <= amount else amount
            bal[g.id] = b - take
            amount -= take
            self.flows.burned += take
            if uses is not None:
                uses.append((g.id, take))
        return amount

    def settle_overage(self) -> None:
        if self.overage > 0:
            self.overage = self.burn(self.overage, None)


def _as_usage(value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, Decimal | int):
        raise TypeError(f"usage must return a Decimal, got {type(value).__name__}")
    return Decimal(value)


def run(grants: Iterable[Grant], start: Snapshot, resets: Iterable[ResetAt | datetime], usage: UsageFn,
        until: datetime, preserve_overage_at_reset: bool = False, *, keep_history: bool = True) -> Result:
    """Burn the grants down from `start` through `until` (changes at `until` included).

    `resets`: instants (or ResetAt) in (start.at, until] — others are ignored; a plain datetime (or a ResetAt
    with preserve_overage None) preserves overage per `preserve_overage_at_reset`. Two resets in the same
    minute act as one, preserving overage only if both do. `usage(a, b)` is called once per segment.
    `keep_history=False` skips the per-segment rows (the balance-only path)."""
    until = _aware(until, "until").astimezone(UTC)
    s_at = start.at
    if until < s_at:
        raise ValueError(f"until ({until}) is before the starting snapshot ({s_at})")
    grant_list = list(grants)
    by_id: dict[str, Grant] = {}
    for g in grant_list:
        if g.id in by_id:
            raise ValueError(f"grant {g.id!r} appears twice")
        by_id[g.id] = g

    with decimal.localcontext(EXACT):
        flows = Flows()
        st = _State(flows)
        st.overage = start.overage
        for gid, b in start.balances.items():
            known = by_id.get(gid)
            if known is not None and known.active_at(s_at):
                st.enter(known, b)
            elif known is not None and not known._ended_by_void():
                flows.expired += b
            else:  # voided, or unknown (deleted) grants contribute nothing from here on
                flows.voided += b

        # -- the changes in (start, until], by instant --------------------------------------------------------
        ends: dict[datetime, list[Grant]] = {}
        entries: dict[datetime, list[Grant]] = {}
        recurs: dict[datetime, list[Grant]] = {}
        reset_at: dict[datetime, bool] = {}
        for g in grant_list:
            if g.id in st.bal:
                enters_at = s_at
            elif g.active_at(s_at):
                st.enter(g, g.amount)
                flows.granted += g.amount
                enters_at = s_at
            elif s_at < g.effective_at <= until and g.active_at(g.effective_at):
                entries.setdefault(g.effective_at, []).append(g)
                enters_at = g.effective_at
            else:
                continue
            if g.ends_at is not None and g.ends_at <= until:
                ends.setdefault(g.ends_at, []).append(g)
            if g.recurrence is not None:
                last = until if g.ends_at is None else min(until, g.ends_at)
                for rb in g.recurrence.boundaries(enters_at, last):
                    if rb > enters_at and rb > g.effective_at and (g.ends_at is None or rb < g.ends_at):
                        recurs.setdefault(rb, []).append(g)
        for r in resets:
            at, pres = (r.at, r.preserve_overage) if isinstance(r, ResetAt) else (r, None)
            at = to_minute(_aware(at, "resets"))
            if s_at < at <= until:
                keep = preserve_overage_at_reset if pres is None else pres
                reset_at[at] = reset_at.get(at, True) and keep
        st.settle_overage()

        instants = sorted({*ends, *entries, *recurs, *reset_at, until} - {s_at})
        segments: list[Segment] = []
        seg_start = s_at
        for t in instants:
            # -- the segment [seg_start, t) ---------------------------------------------------------------------
            u = _as_usage(usage(seg_start, t))
            at_start = dict(st.bal) if keep_history else {}
            overage_at_start = st.overage
            uses: list[tuple[str, Decimal]] | None = [] if keep_history else None
            if u >= 0:
                st.overage += st.burn(u, uses)
            else:
                forgiven = min(-u, st.overage)
                st.overage -= forgiven
                flows.overage_forgiven += forgiven + u  # the part of -u that had no overage to cancel: < 0
            if keep_history:
                segments.append(Segment(seg_start, t, u, overage_at_start, st.overage, at_start, dict(st.bal),
                                        tuple(uses or ()), reset_at_end=t in reset_at))
            seg_start = t
            # -- the changes at t, in order ----------------------------------------------------------------------
            for g in ends.get(t, ()):
                st.leave(g)
            if t in reset_at:
                if not reset_at[t]:
                    flows.overage_forgiven += st.overage
                    st.overage = ZERO
                for g in st.order:
                    b = st.bal[g.id]
                    nb = g.rollover(b)
                    if nb < b:
                        flows.forfeited += b - nb
                    elif nb > b:
                        flows.rolled_in += nb - b
                    st.bal[g.id] = nb
            for g in recurs.get(t, ()):
                if g.id in st.bal:
                    flows.forfeited += st.bal[g.id]
                    flows.granted += g.amount
                    st.bal[g.id] = g.amount
            for g in entries.get(t, ()):
                st.enter(g, g.amount)
                flows.granted += g.amount
            st.settle_overage()

        return Result(end=Snapshot(at=until, balances=dict(st.bal), overage=st.overage), segments=segments,
                      flows=flows)
