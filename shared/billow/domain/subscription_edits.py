"""Subscription edits (OpenMeter's `PATCH /api/v1/subscriptions/{id}`, SubscriptionEdit): operations applied in
order to a running subscription at one effective instant, each refused when it would change what already
happened (a past phase or item is never rewritten). Pure: the subscription document in, the edited document out.

A phase's rate cards may carry their own span (`itemSpans`, parallel to `rateCards`: `{activeFrom, activeTo,
version}` or null for "the whole phase"); billow.domain.subscriptions.items() honours it, so billing and
entitlements follow an edit by themselves (a rate card added mid-period is billed from then on, prorated; one
removed is billed until then).

- `add_item` {phaseKey, rateCard}: in the phase running at the instant, the item starts then, closing the version
  of the same key in force (a new version of it: OpenMeter's item timeline); in a later phase it joins the phase
  (a key already there is a conflict: a future phase's item is never silently replaced);
- `remove_item` {phaseKey, itemKey}: in the running phase the item ends at the instant (versions scheduled to start
  later are dropped); in a later phase it is dropped;
- `stretch_phase` {phaseKey, extendBy}: the phase ends `extendBy` later and the phases after it move with it;
- `remove_phase` {phaseKey, shift: next | prev}: a phase not yet started is removed; `next` moves the later phases
  earlier by its length, `prev` lets the phase before it run on over its time;
- `add_phase` {phase: {key, name, startAfter, duration?}}: a phase without items from subscription start +
  `startAfter` (later than the instant), the phase running then ending there; the later phases move so that the
  next one starts after `duration`;
- `unschedule_edit`: edits of the running phase scheduled after the instant are undone (items added later
  dropped, a scheduled end of the item in force cleared).

Every refused operation is a 400 naming `customizations[i].<field>`, or a 409 for a conflict with the
subscription as it is."""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import datetime
from typing import Any, Final

from billow.domain.periods import Offset, RecurringPeriod, add_offsets, offset, shifted
from billow.errors import Conflict, ValidationFailed
from billow.timeutil import format_rfc3339, parse_rfc3339

OPS: Final = ("add_item", "remove_item", "add_phase", "remove_phase", "stretch_phase", "unschedule_edit")
MAX_OPERATIONS: Final = 100
bad = ValidationFailed.at

RateCardParser = Callable[[Any, str], dict[str, Any]]  # (body, field) -> normalised rate card; raises ValidationFailed


def _t(value: str | None) -> datetime | None:
    return None if value is None else parse_rfc3339(value, "time")


def _start(ph: dict[str, Any]) -> datetime:
    return parse_rfc3339(ph["activeFrom"], "activeFrom")


def _spans(ph: dict[str, Any]) -> list[dict[str, Any] | None]:
    spans = list(ph.get("itemSpans") or [])
    spans += [None] * (len(ph["rateCards"]) - len(spans))
    ph["itemSpans"] = spans
    return spans


def _after(value: Any, field: str, at: datetime) -> datetime:
    """`at` plus an ISO 8601 duration (a 400 naming `field` if it is not one)."""
    if not isinstance(value, str):
        raise bad(field, "must be an ISO 8601 duration such as P1M")
    try:
        return RecurringPeriod(value, at).at(1)
    except ValidationFailed as exc:
        raise bad(field, exc.errors[0]["message"] if exc.errors else str(exc)) from None
    except OverflowError:
        raise bad(field, "too long: the date would fall outside the years 1 to 9999") from None


class _Edit:
    def __init__(self, doc: dict[str, Any], at: datetime, parse_rate_card: RateCardParser) -> None:
        self.doc, self.at, self.parse_rate_card = doc, at, parse_rate_card
        self.added: list[tuple[str, dict[str, Any]]] = []  # (field, rate card) of every add_item

    @property
    def phases(self) -> list[dict[str, Any]]:
        return self.doc["phases"]

    def phase(self, op: dict[str, Any], f: str) -> tuple[int, dict[str, Any]]:
        key = op.get("phaseKey")
        if not isinstance(key, str) or not key:
            raise bad(f"{f}.phaseKey", "is required")
        for i, ph in enumerate(self.phases):
            if ph["key"] == key:
                return i, ph
        raise bad(f"{f}.phaseKey", f"the subscription has no phase {key[:64]!r}; "
                                   f"its phases: {', '.join(p['key'] for p in self.phases)}")

    def running(self, ph: dict[str, Any]) -> bool:
        end = _t(ph.get("activeTo"))
        return _start(ph) <= self.at and (end is None or self.at < end)

    def not_past(self, ph: dict[str, Any], f: str) -> None:
        end = _t(ph.get("activeTo"))
        if end is not None and end <= self.at:
            raise bad(f"{f}.phaseKey", f"phase {ph['key']!r} ended at {ph['activeTo']}: a past phase is never changed")

    def offset(self, ph: dict[str, Any]) -> Offset:
        """The phase's offset from the subscription's start (OpenMeter's startAfter); a phase laid out before
        offsets were kept has its elapsed one."""
        if ph.get("offset") is not None:
            months, days, seconds = ph["offset"]
            return months, days, seconds
        return 0, 0, int((_start(ph) - _start(self.doc)).total_seconds())

    def shift(self, from_index: int, by: Offset, field: str = "duration") -> None:
        """Add `by` to the offsets of phases[from_index:] (ISO components, as OpenMeter's StartAfter.Add): each
        starts at the subscription's start plus its new offset, ends where the next starts, and its items' own
        spans move with its start."""
        sub_start = _start(self.doc)
        moved = self.phases[from_index:]
        starts = []
        for ph in moved:
            new = add_offsets(self.offset(ph), by)
            starts.append(shifted(sub_start, new, field))
            ph["offset"] = list(new)
        for i, ph in enumerate(moved):
            delta = starts[i] - _start(ph)
            ph["activeFrom"] = format_rfc3339(starts[i])
            if i + 1 < len(moved):
                ph["activeTo"] = format_rfc3339(starts[i + 1])
            elif ph.get("activeTo") is not None:
                ph["activeTo"] = format_rfc3339(parse_rfc3339(ph["activeTo"], "activeTo") + delta)
            for span in ph.get("itemSpans") or []:
                for key in ("activeFrom", "activeTo"):
                    if span is not None and span.get(key) is not None:
                        span[key] = format_rfc3339(parse_rfc3339(span[key], key) + delta)

    # -- operations -----------------------------------------------------------------------------------------
    def add_item(self, op: dict[str, Any], f: str) -> None:
        _, ph = self.phase(op, f)
        self.not_past(ph, f)
        if "rateCard" not in op:
            raise bad(f"{f}.rateCard", "is required")
        rc = self.parse_rate_card(op["rateCard"], f"{f}.rateCard")
        self.added.append((f"{f}.rateCard", rc))
        same = [i for i, other in enumerate(ph["rateCards"]) if other["key"] == rc["key"]]
        spans = _spans(ph)
        if not self.running(ph):
            if same:
                raise Conflict(f"{f}.rateCard.key: phase {ph['key']!r} already has an item {rc['key']!r}; remove it first")
            ph["rateCards"] = [*ph["rateCards"], rc]
            spans.append(None)
            return
        stamp = format_rfc3339(self.at)
        versions = [(spans[i] or {}).get("version") or 0 for i in same]
        drop = set()
        for i in same:  # the version in force ends now; versions scheduled from now on are replaced
            span = spans[i] or {}
            end = _t(span.get("activeTo"))
            if (_t(span.get("activeFrom")) or _start(ph)) >= self.at:
                drop.add(i)
            elif end is None or end > self.at:
                spans[i] = {**span, "activeFrom": span.get("activeFrom") or ph["activeFrom"], "activeTo": stamp}
        keep = [i for i in range(len(ph["rateCards"])) if i not in drop]
        ph["rateCards"] = [*(ph["rateCards"][i] for i in keep), rc]
        ph["itemSpans"] = [*(spans[i] for i in keep),
                           {"activeFrom": stamp, "activeTo": None, "version": max(versions) + 1 if same else 0}]

    def remove_item(self, op: dict[str, Any], f: str) -> None:
        _, ph = self.phase(op, f)
        self.not_past(ph, f)
        key = op.get("itemKey")
        if not isinstance(key, str) or not key:
            raise bad(f"{f}.itemKey", "is required")
        spans = _spans(ph)
        same = [i for i, rc in enumerate(ph["rateCards"]) if rc["key"] == key]
        live = [i for i in same if (spans[i] or {}).get("activeTo") is None
                or (_t((spans[i] or {}).get("activeTo")) or self.at) > self.at]
        if not live:
            raise bad(f"{f}.itemKey", f"phase {ph['key']!r} has no item {key[:64]!r} in force or scheduled")
        if not self.running(ph):
            keep = [i for i in range(len(ph["rateCards"])) if i not in same]
            ph["rateCards"], ph["itemSpans"] = [ph["rateCards"][i] for i in keep], [spans[i] for i in keep]
            return
        drop = set()
        for i in live:
            span = spans[i] or {}
            begin = _t(span.get("activeFrom")) or _start(ph)
            if begin > self.at:
                drop.add(i)  # scheduled to start later: never in force
            else:
                spans[i] = {**span, "activeFrom": span.get("activeFrom") or ph["activeFrom"],
                            "activeTo": format_rfc3339(self.at)}
        keep = [i for i in range(len(ph["rateCards"])) if i not in drop]
        ph["rateCards"], ph["itemSpans"] = [ph["rateCards"][i] for i in keep], [spans[i] for i in keep]

    def stretch_phase(self, op: dict[str, Any], f: str) -> None:
        index, ph = self.phase(op, f)
        self.not_past(ph, f)
        if len(self.phases) < 2:
            raise Conflict(f"{f}.phaseKey: a subscription with one phase has no phase to stretch into")
        end = _t(ph.get("activeTo"))
        if end is None:
            raise bad(f"{f}.phaseKey", f"phase {ph['key']!r} is the last and runs without end: nothing to stretch")
        _after(op.get("extendBy"), f"{f}.extendBy", end)  # a 400 naming extendBy unless a positive duration
        by = offset(op["extendBy"], f"{f}.extendBy")
        if index + 1 < len(self.phases):  # OpenMeter: the later phases' startAfter + extendBy
            new_end = shifted(_start(self.doc), add_offsets(self.offset(self.phases[index + 1]), by), f"{f}.extendBy")
        else:
            new_end = shifted(end, by, f"{f}.extendBy")
        if new_end <= max(self.at, _start(ph)):
            raise bad(f"{f}.extendBy", "would end the phase before it starts or in the past")
        if index + 1 < len(self.phases):
            self.shift(index + 1, by, f"{f}.extendBy")
        ph["activeTo"] = format_rfc3339(new_end)

    def remove_phase(self, op: dict[str, Any], f: str) -> None:
        index, ph = self.phase(op, f)
        if _start(ph) <= self.at:
            raise bad(f"{f}.phaseKey", f"phase {ph['key']!r} has started: only a phase that starts later can be removed")
        shift = op.get("shift")
        if shift not in ("next", "prev"):
            raise bad(f"{f}.shift", "must be next or prev")
        if len(self.phases) < 2:
            raise bad(f"{f}.phaseKey", "the subscription's only phase cannot be removed")
        if shift == "prev" and index == 0:
            raise bad(f"{f}.shift", "the first phase has no phase before it to run on: use next")
        end = _t(ph.get("activeTo"))
        removed = self.offset(ph)
        del self.phases[index]
        if shift == "next" and end is not None and index < len(self.phases):
            # OpenMeter: the later phases' startAfter - (the next one's startAfter - the removed one's)
            self.shift(index, add_offsets(removed, self.offset(self.phases[index]), -1))
            if index > 0:
                self.phases[index - 1]["activeTo"] = self.phases[index]["activeFrom"]
        elif index > 0:
            self.phases[index - 1]["activeTo"] = self.phases[index]["activeFrom"] if index < len(self.phases) \
                else ph.get("activeTo")

    def add_phase(self, op: dict[str, Any], f: str) -> None:
        body = op.get("phase")
        if not isinstance(body, dict):
            raise bad(f"{f}.phase", "is required: {key, name, startAfter, duration?}")
        key, name = body.get("key"), body.get("name")
        if not isinstance(key, str) or not key or len(key) > 64:
            raise bad(f"{f}.phase.key", "must be 1 to 64 of a-z, 0-9 and single underscores between them")
        if any(ph["key"] == key for ph in self.phases):
            raise Conflict(f"{f}.phase.key: the subscription already has a phase {key!r}")
        if not isinstance(name, str) or not name.strip():
            raise bad(f"{f}.phase.name", "is required")
        if body.get("discounts") is not None:
            raise bad(f"{f}.phase.discounts", "phase discounts are not supported; give the rate cards discounts")
        sub_start, sub_end = _start(self.doc), _t(self.doc.get("activeTo"))
        begin = _after(body.get("startAfter") or "PT0S", f"{f}.phase.startAfter", sub_start) \
            if body.get("startAfter") not in (None, "PT0S", "P0D") else sub_start
        if begin <= self.at:
            raise bad(f"{f}.phase.startAfter", "the phase would start in the past or now; it must start later")
        if sub_end is not None and begin >= sub_end:
            raise bad(f"{f}.phase.startAfter", "the phase would start after the subscription ends")
        end = _after(body["duration"], f"{f}.phase.duration", begin) if body.get("duration") is not None else None
        since = offset(body.get("startAfter") or "PT0S", f"{f}.phase.startAfter")
        later = next((i for i, ph in enumerate(self.phases) if _start(ph) >= begin), None)
        if later is not None:
            if end is None:
                raise bad(f"{f}.phase.duration", "is required for a phase that other phases follow")
            # OpenMeter: the later phases' startAfter + (duration - (the next one's startAfter - startAfter))
            gap = add_offsets(self.offset(self.phases[later]), since, -1)
            self.shift(later, add_offsets(offset(body["duration"], f"{f}.phase.duration"), gap, -1),
                       f"{f}.phase.duration")
            end = _start(self.phases[later])
        at = later if later is not None else len(self.phases)
        if at > 0:
            self.phases[at - 1]["activeTo"] = format_rfc3339(begin)
        self.phases.insert(at, {"key": key, "name": name, "description": body.get("description"),
                                "metadata": body.get("metadata"), "activeFrom": format_rfc3339(begin),
                                "activeTo": format_rfc3339(end) if end is not None else None, "rateCards": [],
                                "offset": list(since)})

    def unschedule_edit(self, op: dict[str, Any], f: str) -> None:
        ph = next((p for p in self.phases if self.running(p)), None)
        if ph is None:
            raise Conflict(f"{f}: the subscription has no phase running at {format_rfc3339(self.at)}")
        spans = _spans(ph)
        keep = []
        for i, span in enumerate(spans):
            begin = _t((span or {}).get("activeFrom")) or _start(ph)
            end = _t((span or {}).get("activeTo"))
            if begin > self.at:
                continue  # added to start later: undone
            if span is not None and end is not None and end > self.at:
                spans[i] = {**span, "activeTo": None}  # a scheduled end: cleared
            keep.append(i)
        ph["rateCards"], ph["itemSpans"] = [ph["rateCards"][i] for i in keep], [spans[i] for i in keep]


def apply(doc: dict[str, Any], body: object, at: datetime,
          parse_rate_card: RateCardParser) -> tuple[dict[str, Any], list[tuple[str, dict[str, Any]]]]:
    """The subscription after `body.customizations`, applied in order at `at`, and the rate cards added (with their
    field). `doc` is not changed."""
    if not isinstance(body, dict):
        raise bad("body", "must be {customizations, timing?}")
    ops = body.get("customizations")
    if not isinstance(ops, list):
        raise bad("customizations", "is required: a list of edit operations")
    if len(ops) > MAX_OPERATIONS:
        raise bad("customizations", f"at most {MAX_OPERATIONS} operations")
    edit = _Edit(copy.deepcopy(doc), at, parse_rate_card)
    for i, op in enumerate(ops):
        f = f"customizations[{i}]"
        if not isinstance(op, dict):
            raise bad(f, "must be an operation object")
        name = op.get("op")
        if name not in OPS:
            raise bad(f"{f}.op", f"must be one of {', '.join(OPS)}")
        getattr(edit, name)(op, f)
    for ph in edit.doc["phases"]:
        if ph.get("itemSpans") is not None and not any(ph["itemSpans"]):
            del ph["itemSpans"]
        end = _t(ph.get("activeTo"))
        if end is not None and end <= _start(ph):
            raise Conflict(f"phase {ph['key']!r} would disappear (it would end when it starts)")
    return edit.doc, edit.added
