"""UsageStore on ClickHouse through clickhouse-connect: the HTTP client in Lambda, the chdb backend embedded.

Both run the same SQL (schema in `clickhouse_schema.py`). Every value from a request reaches ClickHouse as a
bound parameter, but in the entitlement check's read (`bounded_usage`, where chdb charges each parameter): there the
namespace, meter id and subjects are string literals whose every byte but letters, digits and a few plain signs is a
\\xHH escape (`_sql_string`). The only identifiers in the SQL text are this module's own constants.
"""

from __future__ import annotations

import bisect
import functools
import json
import math
import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import repeat
from pathlib import Path
from typing import Any

import xxhash

from billow import jsonx
from billow.adapters.clickhouse_schema import (
    FIRST_LAST_BY_SUBJECT,
    LATEST_BACKFILL,
    LATEST_KEY,
    MIGRATIONS,
    ROLLUPS,
    latest_value,
)
from billow.domain.events import CloudEvent
from billow.domain.lineage import LineEvent, UsageDigest
from billow.domain.usage import (
    AggRow,
    EventColumns,
    GroupFilter,
    MeterValue,
    RatedLine,
    RatedSums,
    RateKey,
    Rating,
    StoredEvent,
    UsageQuery,
    ValueColumns,
    rate_rows,
)
from billow.exact import exact_sum
from billow.timeutil import python_window_starts, zone

_VALUE_COLUMNS = ["namespace", "meter_id", "subject", "time", "value", "value_str", "group_by", "source", "id"]
_EVENT_COLUMNS = ["namespace", "source", "id", "type", "subject", "time", "data", "ingested_at", "validation_error"]
_KEY_COLUMNS = ["namespace", "key_hash", "source", "id", "state"]
# Their types as the inserts send them: given with each insert, clickhouse-connect does not DESCRIBE the table first
# (one statement less per insert; chdb charges each statement a fixed cost). Times go as epoch milliseconds
# (`_ticks`). In process (chdb 26.9), the LowCardinality(String) columns of clickhouse_schema go as String: the
# engine converts the column, where clickhouse-connect would build a dictionary row by row in Python; a server,
# whose version this code does not pin, gets them as declared.
_T64 = "DateTime64(3, 'UTC')"


def _insert_types(lc: str) -> dict[str, list[str]]:
    # In process, values go as their exact text, which the engine parses into the Decimal128(18) column (every value
    # the sink writes has at most 18 places: parse_decimal): clickhouse-connect's Decimal writer re-parses str(value)
    # and multiplies in Python, ~1.4 us a value, where str() is ~0.2 us and the engine's parse is native.
    value = "String" if lc == "String" else "Decimal(38, 18)"
    return {"meter_values": [lc, lc, "String", _T64, value, "String", "Map(String, String)", "String",
                             "String"],
            "events": [lc, "String", "String", lc, "String", _T64, "String", _T64, "String"],
            "event_keys": [lc, "UInt64", "String", "String", "UInt8"]}


# The values insert feeds five rollup views (and the events insert one): the engine runs them side by side instead
# of one after another (each is a GROUP BY of the whole block). Same CPU, about a third less wall time per values
# insert on two cores (issue 17). Crash repair does not depend on the order their parts land in (`_torn_cells`
# compares counts both ways).
_VIEWS_SIDE_BY_SIDE = {"parallel_view_processing": 1}
# In process, every insert also skips the merge of equal sorting keys within its block (optimize_on_insert = 0): no
# block of these inserts has two rows of one key. A view's block is its GROUP BY of exactly its table's sorting key;
# the ledger's is a set of keys; the raw events' has each (source, id) once (the sink keeps the first copy of a
# delivery). What is stored is the same; the values insert with its views costs about a tenth less CPU (issue 17).
_IN_PROCESS_INSERT = {"optimize_on_insert": 0}
_INSERT_TYPES = {True: _insert_types("String"), False: _insert_types("LowCardinality(String)")}  # by in-process

_WINDOW_EXPR = {
    None: "0",
    "MINUTE": "toUnixTimestamp(t)",
    "HOUR": "toUnixTimestamp(toStartOfHour(t, {tz:String}))",
    "DAY": "toUnixTimestamp(toStartOfDay(t, {tz:String}))",
    # toStartOfMonth gives a Date; turn it back into the local midnight of that date.
    "MONTH": "toUnixTimestamp(toDateTime(toStartOfMonth(t, {tz:String}), {tz:String}))",
    # The last bound at or before t (bounds are ascending whole minutes).
    "BOUNDS": "{bounds:Array(Int64)}[arrayFirstIndex(b -> b > toUnixTimestamp(t), arrayPushBack({bounds:Array(Int64)}, "
              "toInt64(9223372036854775807))) - 1]",
}
# Decimal results come back as their exact text, read with Decimal(text) (~0.2 us a value; clickhouse-connect reads a
# Decimal256 column value by value through int.from_bytes and scaleb, ~2 us each: a third of an hourly query over a
# month of 8 groups, 5,760 rows).
_AGG_EXPR = {
    "SUM": "toString(sum(s))", "COUNT": "sum(c)", "AVG": "toString(sum(s)), sum(c)", "MIN": "toString(min(mn))",
    "MAX": "toString(max(mx))", "UNIQUE_COUNT": "uniqExactMerge(u)", "LATEST": latest_value("max(l)"),
}
_NEEDS = {"SUM": ("s",), "COUNT": ("c",), "AVG": ("s", "c"), "MIN": ("mn",), "MAX": ("mx",),
          "UNIQUE_COUNT": ("u",), "LATEST": ("l",)}
_ROLLUP_COL = {"s": "sum_value AS s", "c": "cnt AS c", "mn": "min_value AS mn", "mx": "max_value AS mx",
               "u": "uniq_state AS u", "l": "latest_key AS l"}
_RAW_COL = {"s": "sum(toDecimal256(value, 18)) AS s", "c": "count() AS c", "mn": "min(value) AS mn",
            "mx": "max(value) AS mx", "u": "uniqExactState(value_str) AS u", "l": LATEST_KEY + " AS l"}
_FILTER_SQL = {
    "$eq": "{col} = {p:String}", "$ne": "{col} != {p:String}",
    "$in": "{col} IN {p:Array(String)}", "$nin": "{col} NOT IN {p:Array(String)}",
    "$like": "like({col}, {p:String})", "$nlike": "NOT like({col}, {p:String})",
    "$ilike": "ilike({col}, {p:String})", "$nilike": "NOT ilike({col}, {p:String})",
    "$gt": "{col} > {p:String}", "$gte": "{col} >= {p:String}",
    "$lt": "{col} < {p:String}", "$lte": "{col} <= {p:String}",
}
_MS = timedelta(milliseconds=1)
_MINUTE = timedelta(minutes=1)


def _floor_minute(t: datetime) -> datetime:
    return t.replace(second=0, microsecond=0)


def _ceil_minute(t: datetime) -> datetime:
    f = _floor_minute(t)
    return f if f == t else f + _MINUTE


class ClickHouseUsageStore:
    def __init__(self, client: Any, journal: Path | None = None, reader: Callable[[], Any] | None = None,
                 readers: int = 4, queries: int | None = None) -> None:
        """`journal`: where this process, the only one writing the store (embedded chdb), notes the rollup
        cells of the write in progress; `migrate` then also repairs a write a crash tore (`recover`).
        `reader`: opens another client of the same engine or server; reads outside a write then run on a pool of
        up to `readers` of them, side by side (a chdb handle, like an HTTP session, runs one query at a time),
        instead of one at a time on `client` behind the write lock. Without it every call takes turns.
        `queries`: at most this many of those pooled reads run at once, the others wait their turn in the order they
        came (`_turn`); None: as many as there are pooled clients. An engine in this process (chdb) shares the CPUs
        with the process's Python: bootstrap gives it one fewer than the CPUs (`engine_queries`)."""
        self._client = client
        self._reader, self._max_readers, self._open_readers = reader, readers, 0
        self._max_queries = queries
        self._turns = threading.Condition()  # admission of pooled reads: those running, those waiting in order
        self._running_queries = 0
        self._waiting: deque[object] = deque()
        self._idle: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._gate = threading.Condition()  # pooled reads in flight, and whether a rollup rebuild excludes them
        self._reading, self._exclusive = 0, False
        self._journal = os.open(journal, os.O_RDWR | os.O_CREAT, 0o600) if journal is not None else None
        self._lock = threading.RLock()
        # chdb runs the engine in this process: a kill can land between the values part and its views' parts.
        # A ClickHouse server writes an INSERT's views itself within that query, whatever happens to the client.
        self._in_process = type(client).__name__ == "ChdbClient"
        self._filter: _KeyFilter | None = None  # in-process only: built from the ledger at the first look-up
        self._hashed: dict[tuple[str, str], int] = {}  # the key hashes of the last look-up (written_keys)
        self._latest_filled: set[tuple[str, str]] = set()  # (namespace, meter id): LATEST_BACKFILL done (`fill_latest`)
        self._filling: dict[tuple[str, str], threading.Lock] = {}  # (namespace, meter id): held while it is filled
        self._whole_hours: dict[str, bool] = {}  # time zone: whole-hour offsets only, by the engine (`_whole_hour_zone`)

    def _key_filter(self) -> _KeyFilter:
        """A Bloom filter of every ledger key hash, read once from `event_keys` and kept up to date by `write` (this
        process is the engine's only writer); rebuilt larger when it fills. Call with the lock held."""
        f = self._filter
        if f is None or f.full():
            import numpy as np  # chdb's own dependency (pandas): present wherever this path runs

            count = int(self._query("SELECT count() FROM event_keys", {})[0][0])
            f = _KeyFilter(count)
            f.add(np.asarray(self._client.query_np("SELECT key_hash FROM event_keys"), dtype=np.uint64).reshape(-1))
            self._filter = f
        return f

    # -- plumbing ---------------------------------------------------------------------------------
    def _query(self, sql: str, params: dict[str, Any], admit: bool = True) -> list[tuple[Any, ...]]:
        """`admit`: False for the short point reads of latency-bound paths (an entitlement check's usage, ingest's
        dedup look-up), which do not queue behind the meter queries and reports `_turn` admits one by one."""
        return self._run_query(sql, params, _rows, admit)

    def _query_columns(self, sql: str, params: dict[str, Any]) -> Sequence[Sequence[Any]]:
        """The result column by column (clickhouse-connect decodes columns; rows are a transposition of them)."""
        return self._run_query(sql, params, _columns)

    def _run_query(self, sql: str, params: dict[str, Any], read: Callable[[Any], Any], admit: bool = True) -> Any:
        return self._on_client(lambda client: read(client.query(sql, parameters=params)), admit=admit)

    def _on_client(self, use: Callable[[Any], Any], admit: bool = False) -> Any:
        """`use(client)` on a pooled client, or on the store's own client under its lock when there is no pool or
        the caller holds the lock (a write, repair or migration). `admit`: a query, which takes its turn among the
        `queries` allowed at once (`_turn`); a LATEST fill, minutes long on a large meter, does not hold one."""
        if self._reader is None or self._lock._is_owned():  # type: ignore[attr-defined]
            with self._lock:  # no pool, or inside a write / repair / migration: on its client, in turn
                return use(self._client)
        with self._turn() if admit else nullcontext():
            client = self._checkout()
            try:
                return use(client)
            finally:
                self._idle.put(client)
                with self._gate:
                    self._reading -= 1
                    self._gate.notify_all()

    @contextmanager
    def _turn(self) -> Iterator[None]:
        """Hold one of the `queries` pooled reads allowed at once, waiting for it behind those that came first."""
        if self._max_queries is None:
            yield
            return
        me = object()
        with self._turns:
            self._waiting.append(me)
            try:
                while self._waiting[0] is not me or self._running_queries >= self._max_queries:
                    self._turns.wait()
            except BaseException:  # interrupted while waiting: out of the line, which moves on without it
                self._waiting.remove(me)
                self._turns.notify_all()
                raise
            self._waiting.popleft()
            self._running_queries += 1
            self._turns.notify_all()  # the next in line goes too if there is room
        try:
            yield
        finally:
            with self._turns:
                self._running_queries -= 1
                self._turns.notify_all()

    def _checkout(self) -> Any:
        """An idle pooled client (opened if fewer than `readers` are), once no rollup rebuild is under way."""
        with self._gate:
            while self._exclusive:
                self._gate.wait()
            self._reading += 1
            opening = self._idle.empty() and self._open_readers < self._max_readers
            if opening:
                self._open_readers += 1
        if not opening:
            return self._idle.get()
        try:
            assert self._reader is not None
            return self._reader()
        except BaseException:
            with self._gate:
                self._open_readers -= 1
                self._reading -= 1
                self._gate.notify_all()
            raise

    def _alone(self) -> Any:
        """Context: no pooled read runs meanwhile (a rebuild deletes rollup cells before re-deriving them)."""
        store = self

        class _Alone:
            def __enter__(self) -> None:
                with store._gate:
                    store._exclusive = True  # callers hold store._lock: one at a time
                    while store._reading:
                        store._gate.wait()

            def __exit__(self, *exc: object) -> None:
                with store._gate:
                    store._exclusive = False
                    store._gate.notify_all()

        return _Alone()

    def _command(self, sql: str, params: dict[str, Any] | None = None) -> None:
        with self._lock:
            # A statement may write keys around `write` (a migration's backfill, a bulk load): the key filter is
            # read again from the ledger at the next look-up.
            self._filter = None
            self._client.command(sql, parameters=params or None)

    def migrate(self) -> None:
        """Apply the versioned migrations not yet recorded; re-running is a no-op."""
        with self._lock:
            self._command(
                "CREATE TABLE IF NOT EXISTS billow_migrations (version UInt32, name String, "
                "applied_at DateTime64(3, 'UTC')) ENGINE = MergeTree ORDER BY version"
            )
            done = {r[0] for r in self._query("SELECT version FROM billow_migrations", {})}
            for version, name, statements in MIGRATIONS:
                if version in done:
                    continue
                for stmt in statements:
                    self._command(stmt)
                self._latest_filled.clear()  # (a migration may empty latest_backfills: migration 5)
                # (a statement: clickhouse-connect's insert would import pandas on every first open)
                self._client.command("INSERT INTO billow_migrations (version, name, applied_at) VALUES "
                                     "({v:UInt32}, {n:String}, now64(3))", parameters={"v": version, "n": name})
            if self._journal is not None:
                self.recover()

    def pending_migrations(self) -> list[int]:
        """The versions of MIGRATIONS not applied yet, read without DDL (a Lambda cold start checks this
        instead of migrating: billow.migrations)."""
        with self._lock:
            if not self._query("SELECT 1 FROM system.tables WHERE database = currentDatabase() "
                               "AND name = 'billow_migrations'", {}):
                return [m[0] for m in MIGRATIONS]
            done = {r[0] for r in self._query("SELECT version FROM billow_migrations", {})}
        return [m[0] for m in MIGRATIONS if m[0] not in done]

    def ping(self) -> None:
        self._query("SELECT 1", {})

    def close(self) -> None:
        with self._lock:
            while not self._idle.empty():
                self._idle.get().close()
            self._client.close()
            if self._journal is not None:
                os.close(self._journal)
                self._journal = None

    # -- writes ------------------------------------------------------------------------------------
    def present_keys(self, namespace: str, keys: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        return self.written_keys(namespace, keys)[0]

    def written_keys(self, namespace: str, keys: Sequence[tuple[str, str]]) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
        """(stored, begun) from the key-ordered ledger (`event_keys`): a point look-up per key, so its cost does not
        grow with the store. Keys whose write began but whose raw event the ledger does not show (a write that died
        midway, or whose ledger row the crash cut off) are checked against the events table itself: rare."""
        if not keys:
            return set(), set()
        wanted = set(keys)
        hashed = {k: _key_hash(k) for k in wanted}
        self._hashed = hashed  # the write that usually follows hashes these keys again: it reuses them
        hashes = set(hashed.values())
        if self._in_process:  # the only writer: a filter in memory answers "never written" for most keys
            with self._lock:
                hashes = self._key_filter().maybe(hashes)
            if not hashes:
                return set(), set()
        rows = self._query(
            "SELECT source, id, max(state) FROM event_keys WHERE namespace = {ns:String} "
            "AND key_hash IN {hashes:Array(UInt64)} GROUP BY source, id",
            # one array literal: clickhouse-connect would format the parameter hash by hash in Python
            {"ns": namespace, "hashes": "[" + ",".join(map(str, sorted(hashes))) + "]"}, admit=False)
        stored: set[tuple[str, str]] = set()
        begun: set[tuple[str, str]] = set()
        for r in rows:
            k = (r[0], r[1])
            if k in wanted:  # exact: a hash only picks candidates
                (stored if r[2] else begun).add(k)
        if begun:
            found = self._query(
                "SELECT source, id FROM events WHERE namespace = {ns:String} "
                "AND source IN {sources:Array(String)} AND id IN {ids:Array(String)}", _key_params(namespace, sorted(begun)),
                admit=False)
            raw = {k for k in ((r[0], r[1]) for r in found) if k in begun}
            stored |= raw
            begun -= raw
        return stored, begun

    def valued_keys(self, namespace: str, meter_ids: Sequence[str], start: datetime | None, end: datetime | None,
                    keys: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        """See ports.UsageStore. Without a time bound the look-up finds the ids through the values' bloom filter
        index (`idx_event_id`), not the sorting key: the sink's check after a crash (a resend's times may not be the
        dead write's)."""
        if not keys or not meter_ids:
            return set()
        params: dict[str, Any] = {**_key_params(namespace, keys), "mids": list(meter_ids)}
        when = ""
        if start is not None:
            when += " AND time >= {start:DateTime64(3, 'UTC')}"
            params["start"] = start
        if end is not None:
            when += " AND time <= {end:DateTime64(3, 'UTC')}"
            params["end"] = end
        rows = self._query(
            "SELECT DISTINCT source, id FROM meter_values WHERE namespace = {ns:String} "  # noqa: S608 (constant text)
            "AND meter_id IN {mids:Array(String)}" + when
            + " AND source IN {sources:Array(String)} AND id IN {ids:Array(String)}", params)
        wanted = set(keys)
        return {k for k in ((r[0], r[1]) for r in rows) if k in wanted}

    def write(self, namespace: str, values: Sequence[MeterValue], events: Sequence[StoredEvent]) -> None:
        """Columns (the sink's ValueColumns and EventColumns) go to the inserts as they are, times as epoch
        milliseconds; values and events given as objects are read into columns first."""
        vals = values if isinstance(values, ValueColumns) else _value_columns(values)
        evs = events if isinstance(events, EventColumns) else _event_columns(events)
        with self._lock:
            # The ledger first: a key any part of whose write may be stored is never taken for new (written_keys).
            types = _INSERT_TYPES[self._in_process]
            begun = set(zip(vals.sources, vals.event_ids, strict=True)) | set(zip(evs.sources, evs.ids, strict=True))
            insert = self._insert_arrow if self._in_process else self._insert_columns
            if begun:
                ordered = list(begun)  # (the ledger's part is sorted by the engine)
                # From the look-up of this batch (written_keys), if it was the last one; dropped now, so that its
                # keys die with the batch (thousands of tuples the next young collection would otherwise scan).
                known, self._hashed = self._hashed, {}
                hashes = [h if (h := known.get(k)) is not None else _key_hash(k) for k in ordered]
                if self._filter is not None:
                    self._filter.add(hashes)
                insert("event_keys", _KEY_COLUMNS, types["event_keys"], [
                    [namespace] * len(ordered), hashes, [k[0] for k in ordered],
                    [k[1] for k in ordered], [0] * len(ordered)], None)
            journal = self._journal if vals else None
            if journal is not None:
                # The views' parts land after the values part: if the process dies in between, the next open
                # rebuilds these (meter, UTC hour) cells (`recover`). Writes take turns under the lock, so the
                # file holds at most the write in progress: "1" + its cells, then "0" once its raw events are
                # in (one pwrite each, no truncation: a few microseconds).
                os.pwrite(journal, b"1" + jsonx.dumps({"namespace": namespace, "cells": _hour_cells(vals)}).encode(), 0)
            if vals:
                insert("meter_values", _VALUE_COLUMNS, types["meter_values"], [
                    [namespace] * len(vals), vals.meter_ids, vals.subjects, vals.ms,
                    list(map(str, vals.values)) if self._in_process else vals.values, vals.value_strs,
                    vals.group_bys, vals.sources, vals.event_ids,
                ], _VIEWS_SIDE_BY_SIDE)
            if evs:
                insert("events", _EVENT_COLUMNS, types["events"], [
                    [namespace] * len(evs), evs.sources, evs.ids, evs.types, evs.subjects, evs.ms, evs.data,
                    evs.ingested_ms, evs.errors,
                ], None)
            if journal is not None:
                os.pwrite(journal, b"0", 0)

    def _insert_columns(self, table: str, names: list[str], types: list[str], columns: list[Sequence[Any]],
                        settings: dict[str, Any] | None) -> None:
        """A column-oriented insert through clickhouse-connect (a ClickHouse server): it encodes each column in one
        pass."""
        self._client.insert(table, columns, column_names=names, column_type_names=types, column_oriented=True,
                            settings=settings)

    def _insert_arrow(self, table: str, names: list[str], types: list[str], columns: list[Sequence[Any]],
                      settings: dict[str, Any] | None) -> None:
        """The same insert in process, as one Arrow stream (pyarrow encodes each column natively) that the engine reads
        FROM INFILE: no clickhouse-connect insert context per statement. Write CPU per event of 10,000-event writes
        (2026-12-07, merges stopped, alternating, medians of 8, two runs, load 2.6), all with optimize_on_insert = 0:
        clickhouse-connect's insert 13.49 / 13.33 us, Arrow 13.01 / 12.77, a Native block encoded by hand 12.40 /
        12.27: within 5 %, so the library does it. (pyarrow imports pandas at its first conversion, once per process,
        as clickhouse-connect's insert did.)"""
        self._client.raw_insert(table, names, _arrow_stream(names, types, columns),
                                settings={**_IN_PROCESS_INSERT, **(settings or {})}, fmt="ArrowStream")

    # -- repair of rollups torn by a crash -----------------------------------------------------------
    def repair(self, namespace: str, keys: Sequence[tuple[str, str]]) -> None:
        """Rebuild the rollup cells that hold these events' values (found valued but without their raw event:
        the write that stored them died, maybe before the views' parts landed). Only for the in-process engine:
        on a ClickHouse server the values INSERT returned with its views written (a sink that died after it left
        whole rollups), and a delete-and-rebuild there could straddle another sink's insert into the same cells
        and count it twice, so a server store leaves the rollups alone."""
        if not keys or not self._in_process:
            return
        with self._lock:
            rows = self._query(
                "SELECT DISTINCT source, id, meter_id, toStartOfHour(time) FROM meter_values WHERE namespace = {ns:String} "
                "AND source IN {sources:Array(String)} AND id IN {ids:Array(String)}", _key_params(namespace, keys))
            wanted = set(keys)
            cells = {(r[2], _utc(r[3])) for r in rows if (r[0], r[1]) in wanted}
            torn = self._torn_cells(namespace, cells)
            if torn:
                self._rebuild(namespace, set().union(*torn.values()), tables=torn)

    def _torn_cells(self, namespace: str, cells: set[tuple[str, datetime]]) -> dict[str, set[tuple[str, datetime]]]:
        """Of these (meter, UTC hour) cells, those each rollup does not hold whole: table -> cells. One read: a
        rollup cell is whole when it counts as many values as meter_values holds in it. Exact in one process: rollup
        rows only ever come from meter_values rows (their views, or `_rebuild` under the lock), each once, so a cell
        that lacks a view's part counts fewer; no statement deletes values. A retry after a failed raw events insert
        (the values insert returned, its views with it) then rewrites nothing."""
        if not cells:
            return {}
        hours = [h for _, h in cells]
        params = {"ns": namespace, "mids": sorted({m for m, _ in cells}), "cells": sorted(cells),
                  "lo": min(hours), "hi": max(hours) + _HOUR}
        parts = [f"SELECT '' AS t, meter_id, toDateTime(toStartOfHour(time), 'UTC') AS h, count() AS n "  # noqa: S608
                 f"FROM meter_values WHERE {_CELLS_WHERE.replace('{col}', 'time')} GROUP BY meter_id, h"]
        parts += [f"SELECT '{table}' AS t, meter_id, toDateTime(toStartOfHour(minute), 'UTC') AS h, "  # noqa: S608
                  f"toUInt64(sum(cnt)) AS n FROM {table} WHERE {_CELLS_WHERE.replace('{col}', 'minute')} GROUP BY meter_id, h"
                  for table, _, _ in _ROLLUPS]
        counts: dict[str, dict[tuple[str, datetime], int]] = {}
        for t, m, h, n in self._query(" UNION ALL ".join(parts), params):
            counts.setdefault(t, {})[(m, _utc(h))] = int(n)
        values = counts.get("", {})
        torn = {table: {c for c in cells if counts.get(table, {}).get(c, 0) != values.get(c, 0)} for table, _, _ in _ROLLUPS}
        return {table: found for table, found in torn.items() if found}

    def recover(self) -> bool:
        """At open: rebuild the rollup cells of the journalled write a crash interrupted (those a rollup does not
        hold whole: `_torn_cells`), then clear the journal. True if there was one. Idempotent: a crash inside it
        leaves the journal for the next open."""
        fd = self._journal
        if fd is None:
            return False
        with self._lock:
            text = os.pread(fd, os.fstat(fd).st_size, 0).decode("utf-8", "replace")
            entry = None
            if text.startswith("1"):
                try:  # a longer earlier entry may trail it
                    entry = json.JSONDecoder().raw_decode(text, 1)[0]
                except ValueError:  # cut short by the crash: the values insert had not begun
                    entry = None
            if entry:
                cells = {(m, datetime.fromtimestamp(h, UTC)) for m, h in entry["cells"]}
                torn = self._torn_cells(entry["namespace"], cells)  # the views may all have landed before the crash
                if torn:
                    self._rebuild(entry["namespace"], set().union(*torn.values()), tables=torn)
            os.pwrite(fd, b"0", 0)
            return bool(entry)

    def _rebuild(self, namespace: str, cells: set[tuple[str, datetime]],
                 tables: dict[str, set[tuple[str, datetime]]] | None = None) -> None:
        """Re-derive the (meter, UTC hour) cells of every rollup (or of `tables` only: table -> its cells) from
        meter_values: delete them, then aggregate the values as the views do. Idempotent. Exact while no other
        writer (or repair) touches those cells meanwhile: the store's lock ensures it in one process; on a ClickHouse
        server written by several sinks at once it does not (a write or repair racing this one into the same cells
        could count twice)."""
        if not cells:
            return
        with self._lock, self._alone():
            for table, start_of, keys in _ROLLUPS:
                mine = cells if tables is None else tables.get(table, set())
                if not mine:
                    continue
                hours = [h for _, h in mine]
                params = {"ns": namespace, "mids": sorted({m for m, _ in mine}), "cells": sorted(mine),
                          "lo": min(hours), "hi": max(hours) + _HOUR}
                self._command(f"DELETE FROM {table} WHERE " + _CELLS_WHERE.replace("{col}", "minute"), params)
                # (the subject-first hours also their first and last instants: without them a cell reads as straddling)
                first_last = table == "meter_rollup_1h_by_subject"
                self._command(
                    f"INSERT INTO {table} (namespace, meter_id, minute, {keys}, sum_value, cnt, min_value, max_value, "
                    f"uniq_state, latest_key{', first_ms, last_ms' if first_last else ''}) SELECT namespace, meter_id, "
                    f"toDateTime({start_of}(time), 'UTC') AS minute, {keys}, sum(toDecimal256(value, 18)), count(), "
                    f"min(value), max(value), uniqExactState(value_str), {LATEST_KEY}"
                    f"{', ' + FIRST_LAST_BY_SUBJECT if first_last else ''} FROM meter_values WHERE "
                    + _CELLS_WHERE.replace("{col}", "time") + f" GROUP BY namespace, meter_id, minute, {keys}", params)

    def fill_latest(self, namespace: str, meter_id: str) -> None:
        """Give the meter's cells stored before migration 5 their LATEST key (clickhouse_schema.LATEST_BACKFILL),
        once per meter (recorded in `latest_backfills`; a run cut short, or two at once, only repeat what changes
        nothing), before its first LATEST read. `billow serve` runs it for its LATEST meters at start, in the
        background (billow.local.server), so that no request waits for it."""
        key = (namespace, meter_id)
        if key in self._latest_filled:
            return
        params = {"ns": namespace, "mid": meter_id}

        def fill(client: Any) -> None:
            def rows(table: str) -> int:  # (identifiers only, from LATEST_BACKFILL)
                return int(client.query(f"SELECT count() FROM {table} WHERE namespace = {{ns:String}} "  # noqa: S608
                                        "AND meter_id = {mid:String}", parameters=params).result_rows[0][0])

            values = rows("meter_values")
            for from_values, finer, from_finer in LATEST_BACKFILL:
                # from a finer rollup, filled by now, when it holds fewer of the meter's rows than the stored values
                client.command(from_finer if finer and from_finer and rows(finer) < values else from_values,
                               parameters=params)
            client.insert("latest_backfills", [[namespace, meter_id, datetime.now(UTC)]],
                          column_names=["namespace", "meter_id", "done_at"])

        with self._gate:
            filling = self._filling.setdefault(key, threading.Lock())
        with filling:  # another LATEST read of the meter waits for its fill, then reads; other meters' do not
            if key in self._latest_filled:
                return
            # ('', ''): the store held no values when migration 5 changed the views, so no cell lacks the key.
            if not self._query("SELECT 1 FROM latest_backfills WHERE (namespace, meter_id) IN (('', ''), "
                               "({ns:String}, {mid:String})) LIMIT 1", params):
                # On a pooled client, outside the store's lock: writes go on meanwhile (a meter with millions of
                # values takes minutes), as nothing the fill writes changes what they write or read.
                self._on_client(fill)
            self._latest_filled.add(key)

    # -- reads -------------------------------------------------------------------------------------
    def aggregate(self, q: UsageQuery) -> list[AggRow]:
        if q.running_from is not None:
            return self._running_distinct(q)
        if q.aggregation == "LATEST":
            self.fill_latest(q.namespace, q.meter_id)
        params: dict[str, Any] = {"mid": q.meter_id}
        sql = self._grouped_sql(q, "meter_id = {mid:String}", _NEEDS[q.aggregation],
                                [_AGG_EXPR[q.aggregation], "toUnixTimestamp(min(t)), toUnixTimestamp(max(te))"], params)
        # Column by column: the rows are built by map() over the result's columns (AggRow's field order), with no
        # Python loop per row nor row tuples in between: about half the cost of a loop over result rows, per row of
        # a large answer (issue 17: an hourly month of 8 groups, 5,760 rows).
        return self._agg_rows(q, self._query_columns(sql, params))

    def aggregate_each(self, q: UsageQuery, filter_sets: Sequence[list[list[GroupFilter]]]) -> list[list[AggRow]]:
        """See ports.UsageStore. One statement: the values are read once (where no set is unfiltered, only those
        passing one of the sets: their OR), each row is repeated once per set it passes (ARRAY JOIN of the indexes of
        the sets whose filters, the same SQL `aggregate` filters with, hold for it) and grouped by that index too:
        each set's rows are exactly what `aggregate` would return for it."""
        if not filter_sets:
            return []
        union = [] if any(not f for f in filter_sets) else [c for f in filter_sets for c in f]
        by_subject = any(f.key == "subject" for fs in filter_sets for c in fs for f in c)
        if q.running_from is not None or q.window_size == "BOUNDS" or len(filter_sets) == 1 or (
                by_subject and _layout(replace(q, filters=union)) == "all"):  # (rows without their subject)
            return [self.aggregate(replace(q, filters=filters)) for filters in filter_sets]
        if q.aggregation == "LATEST":
            self.fill_latest(q.namespace, q.meter_id)
        params: dict[str, Any] = {"mid": q.meter_id}
        each, union = self._each_sql(filter_sets, params)
        sql = self._grouped_sql(replace(q, filters=union), "meter_id = {mid:String}", _NEEDS[q.aggregation],
                                [_AGG_EXPR[q.aggregation], "toUnixTimestamp(min(t)), toUnixTimestamp(max(te))", "fi"],
                                params, each=each)
        cols = self._query_columns(sql, params)
        out: list[list[AggRow]] = [[] for _ in filter_sets]
        if not cols or not len(cols[0]):
            return out
        for row, fi in zip(self._agg_rows(q, cols[:-1]), cols[-1], strict=True):
            out[int(fi)].append(row)
        return out

    def _each_sql(self, filter_sets: Sequence[list[list[GroupFilter]]],
                  params: dict[str, Any]) -> tuple[str, list[list[GroupFilter]]]:
        """An array of the indexes of the sets in `filter_sets` a row (its `subject` and `group_by`) passes, and the
        filters of their OR ([] when a set is unfiltered: every row). Sets that only compare one key with values
        ($eq, $in, an OR of them: a feature per model) are found by looking the row's value up (its position among
        their values, then that position's array of indexes): one expression for all of them, where a condition per
        set cost chdb ~2 ms per set and row batch (150 sets: ~400 ms against ~40 ms on a month of one customer);
        every other set is its own condition (the SQL `aggregate` filters with)."""
        keyed: dict[str, dict[int, set[str]]] = {}  # key -> set index -> the values it takes
        for i, filters in enumerate(filter_sets):
            if filters and all(len(c) == 1 and c[0].op in ("$eq", "$in") for c in filters) and \
                    len({c[0].key for c in filters}) == 1:
                values = [v for c in filters for v in ([c[0].value] if c[0].op == "$eq" else c[0].value)]
                if all(isinstance(v, str) for v in values):
                    keyed.setdefault(filters[0][0].key, {})[i] = set(values)
        key = max(keyed, key=lambda k: len(keyed[k])) if keyed else None
        sets_of: dict[str, list[int]] = {}
        for i, taken in keyed.get(key, {}).items() if key is not None else ():
            for v in taken:
                sets_of.setdefault(v, []).append(i)
        if key is not None and (len(keyed[key]) < 2 or not sets_of):
            key = None
        parts: list[str] = []
        union: list[list[GroupFilter]] = []
        if key is not None:
            by_value = dict(sorted(sets_of.items()))
            params.update({"ek": key, "ev": list(by_value), "ep": list(range(1, len(by_value) + 1)),
                           "ea": [sorted(ix) for ix in by_value.values()]})
            col = "subject" if key == "subject" else "group_by[{ek:String}]"
            parts.append("{ea:Array(Array(Int32))}[transform(" + col + ", {ev:Array(String)}, {ep:Array(UInt32)}, "
                         "toUInt32(0))]")
            union.append([GroupFilter(key, "$in", list(by_value))])
        terms = []
        for i, filters in enumerate(filter_sets):
            if key is not None and i in keyed[key]:
                continue
            terms.append(f"if({self._filters_sql(filters, params, f'e{i}_')}, {i}, -1)" if filters else str(i))
            union += filters
        if terms:
            parts.append("arrayFilter(i -> i >= 0, [" + ", ".join(terms) + "])")
        each = parts[0] if len(parts) == 1 else "arrayConcat(" + ", ".join(parts) + ")"
        return each, [] if any(not f for f in filter_sets) else union

    def _agg_rows(self, q: UsageQuery, cols: Sequence[Sequence[Any]]) -> list[AggRow]:
        """AggRows from the columns of `_grouped_sql`'s answer (window, [subject], [customer], groups, the aggregate,
        first and last times)."""
        n = len(cols[0]) if cols else 0
        if not n:
            return []
        agg, customers = q.aggregation, q.subject_customers is not None
        first = 1 + q.by_subject + customers  # index of the first group value
        value = first + len(q.group_by)  # index of the aggregate (two for AVG), then the first and last times
        # epoch second -> UTC datetime, made once per distinct window or time
        fromtimestamp = datetime.fromtimestamp
        windows = cols[0] if q.window_size is not None else ()
        instant = {e: fromtimestamp(e, UTC) for e in {*windows, *cols[-2], *cols[-1]}}.__getitem__
        keys, found = list(q.group_by), cols[first:value]
        groups = ([{keys[0]: g} for g in found[0]] if len(keys) == 1 else
                  [dict(zip(keys, g, strict=True)) for g in zip(*found, strict=True)] if keys else [{} for _ in range(n)])
        v = cols[value]
        as_dec = (lambda a: map(Decimal, v) if agg == a else repeat(None))  # noqa: E731
        return list(map(
            AggRow,
            map(instant, windows) if windows else repeat(None),  # window_start
            cols[1] if q.by_subject else repeat(None),  # subject
            [c or None for c in cols[first - 1]] if customers else repeat(None),  # customer_id
            groups,
            map(Decimal, v) if agg in ("SUM", "AVG") else repeat(Decimal(0)),  # sum
            map(int, cols[value + 1]) if agg == "AVG" else map(int, v) if agg == "COUNT" else repeat(0),  # count
            as_dec("MIN"), as_dec("MAX"),  # min, max
            map(int, v) if agg == "UNIQUE_COUNT" else repeat(0), as_dec("LATEST"),  # uniq, latest
            map(instant, cols[-2]), map(instant, cols[-1]),  # first_time, last_time (the end of the last unit counted)
        ))

    def _running_distinct(self, q: UsageQuery) -> list[AggRow]:
        """`aggregate` with `running_from`: each BOUNDS window's distinct state, merged over the windows of its run so
        far by a window function (one statement for every span of every run)."""
        if q.window_size != "BOUNDS" or q.aggregation != "UNIQUE_COUNT" or q.group_by or q.by_subject or \
                q.subject_customers is not None:
            raise ValueError("running_from counts a UNIQUE_COUNT meter's BOUNDS windows, without groups")
        assert q.running_from is not None
        params: dict[str, Any] = {"mid": q.meter_id, "runs": [int(r.timestamp()) for r in q.running_from]}
        inner = self._grouped_sql(q, "meter_id = {mid:String}", ("u",),
                                  ["uniqExactMergeState(u) AS st", "min(t) AS t0", "max(te) AS t1"], params)
        rows = self._query(
            "SELECT w, uniqExactMerge(st) OVER (PARTITION BY arrayCount(r -> r <= w, {runs:Array(Int64)}) ORDER BY w "
            "ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW), toUnixTimestamp(t0), toUnixTimestamp(t1) "
            "FROM (" + inner + ") ORDER BY w", params)  # noqa: S608 (this module's SQL; values are parameters)
        at = functools.partial(datetime.fromtimestamp, tz=UTC)
        return [AggRow(at(w), None, None, {}, Decimal(0), 0, None, None, int(n), None, at(t0), at(t1))
                for w, n, t0, t1 in rows]

    def bounded_usage(self, namespace: str, meter_id: str, aggregation: str, subjects: Sequence[str],
                      filters: list[list[GroupFilter]], bounds: Sequence[datetime]) -> list[Decimal]:
        """See ports.UsageStore. Usually one statement reading one table: the subject-first hourly rollup's cells over
        the hours the bounds span, as stored (no GROUP BY: a cell still in two parts comes twice, and its sums add
        up), each whole hour's sum added to its segment here, and each hour a bound cuts (now, mid-hour; a grant
        entering at 10:37) kept apart with the first and last instant it holds (migration 6). Such a cell whose
        values all lie in one segment (nothing stored after now in the current hour) is counted there whole; one that
        straddles a bound, or holds rows written before migration 6, is read again in a second statement, from the
        minute rollup for its whole minutes and the raw values for the partial minutes (to the millisecond).
        Shaped for chdb, which charges each expression of a statement more than the few rows it reads (issue 17 item
        5): the namespace, meter, subjects and times are literals (`_sql_string`, epoch seconds, millisecond text)
        rather than parameters, the conditions a PREWHERE, no expression on the rows and one thread (max_threads = 1:
        a subject's hours are a granule or two). Before (2026-12-07), the hourly read grouped its rows by segment, a
        sum of comparisons with the bounds: 10 M stored values for 10,000 subjects, 2 cores, the two alternated
        (600 checks each, load 3-4), the read p50 6.20 -> 4.81 ms, the check 8.22 -> 6.76 (p99 29.3 -> 20.8: a loaded
        machine); a month's period returns ~750 cells at most. A span longer than _CELLS_SPAN with few bounds (a
        year's period: thousands of cells) is still summed by segment in the engine. The second statement sums its segments in the engine
        (`_segment_sql`); past _LITERAL_BOUNDS bounds (a first check since measureUsageFrom over thousands of hourly
        periods, a grant recurring every minute) such an expression would pass ClickHouse's limits on a statement's
        nesting (1,000) and size (256 KiB), and cost more than it saves: it then sums by the cell or time it reads,
        and each sum goes to its segment here."""
        if aggregation not in ("SUM", "COUNT"):
            raise ValueError(f"bounded_usage sums SUM or COUNT meters, not {aggregation}")
        if len(bounds) < 2 or not subjects or bounds[0] >= bounds[-1]:
            return [Decimal(0)] * max(len(bounds) - 1, 0)
        params: dict[str, Any] = {}
        # A customer's many subjects go as one parameter, not literals: spelled out in every branch, 10,000 of them
        # passed ClickHouse's 256 KiB statement limit (max_query_size) and the check answered 500.
        if len(subjects) > _LITERAL_SUBJECTS:
            params["subjects"] = list(subjects)
        who = (f"namespace = {_sql_string(namespace)} AND meter_id = {_sql_string(meter_id)} AND subject "
               + (f"= {_sql_string(subjects[0])}" if len(subjects) == 1 else
                  "IN {subjects:Array(String)}" if len(subjects) > _LITERAL_SUBJECTS else
                  "IN (" + ", ".join(map(_sql_string, subjects)) + ")"))
        if filters:
            who += " AND " + self._filters_sql(filters, params)
        cell = "toString(sum(sum_value))" if aggregation == "SUM" else "sum(cnt)"  # (the second statement's)
        bound_ms = [(b - _EPOCH) // _MS for b in bounds]
        segment_of_ms = functools.partial(_segment_at, bound_ms)
        parts: list[list[Decimal]] = [[] for _ in bounds[1:]]
        # The hours a bound cuts (now's, mid-hour; a grant entering at 10:37), by their epoch ms: the first and last
        # instant of their values (those of _NO_VALUES until a row is read), and the values.
        cut: dict[int, list[Any]] = {(h - _EPOCH) // _MS: [*_NO_VALUES, []] for h in
                                     {_floor_hour(b) for b in bounds if b.minute or b.second or b.microsecond}}
        lo, hi = _floor_hour(bounds[0]), _ceil_hour(bounds[-1])
        by_time = len(bounds) - 2 > _LITERAL_BOUNDS  # (many bounds: the second statement sums by cell or value time)
        # A long span (a yearly period) with few bounds is summed by segment in the engine: its cells are thousands.
        grouped = not by_time and hi - lo > _CELLS_SPAN
        cuts = sorted(cut)
        if grouped:
            w, _ = _segment_sql("minute", [(lo, hi)], bounds, _epoch_s)
            w = ("multiIf(" + ", ".join(f"minute = {h // 1000}, {-2 - i}" for i, h in enumerate(cuts))  # (never < 0)
                 + f", toInt64({w}))") if cuts else w
            select = f"{w} AS w, {cell}, min(first_ms), max(last_ms)"
        else:
            select = (f"toInt64(minute) * 1000, {'toString(sum_value)' if aggregation == 'SUM' else 'cnt'}, first_ms, "
                      "last_ms")
        for at, v, first, last in self._query(
                f"SELECT {select} FROM meter_rollup_1h_by_subject PREWHERE {who} AND "  # noqa: S608
                f"minute >= {_epoch_s(lo)} AND minute < {_epoch_s(hi)}" + (" GROUP BY w" if grouped else "")
                + " SETTINGS max_threads = 1", params, admit=False):
            edge = cut.get(at) if not grouped else cut[cuts[-2 - at]] if at <= -2 else None
            if edge is None:  # whole hours of one segment
                parts[int(at) if grouped else segment_of_ms(at)].append(Decimal(v))
            else:
                edge[0], edge[1] = min(edge[0], first), max(edge[1], last)
                edge[2].append(Decimal(v))
        straddled: list[datetime] = []
        for hour, (first, last, values) in sorted(cut.items()):
            if not values:
                continue
            if (i := segment_of_ms(first)) != segment_of_ms(last):
                straddled.append(_EPOCH + hour * _MS)
            elif 0 <= i < len(parts):  # (else every value of the cell lies outside the bounds)
                parts[i].extend(values)
        if straddled:
            self._straddled(straddled, bounds, by_time, segment_of_ms if by_time else int, who, params, cell,
                            aggregation, parts)
        return [exact_sum(p) for p in parts]

    def _straddled(self, hours: list[datetime], bounds: Sequence[datetime], by_time: bool,
                   segment_of: Callable[[int], int], who: str, params: dict[str, Any], cell: str, aggregation: str,
                   parts: list[list[Decimal]]) -> None:
        """bounded_usage's hours whose values a bound splits, read in one statement: the minute rollup for their
        whole minutes (`cell`: its sum), the raw values for the partial minutes; each sum added to its segment's
        `parts` (`segment_of` a row's w, as bounded_usage reads it)."""
        spans: dict[str, list[tuple[datetime, datetime]]] = {"minute": [], "raw": []}
        for hour in hours:
            lo, hi = max(bounds[0], hour), min(bounds[-1], hour + _HOUR)
            cuts = [lo, *sorted(b for b in bounds if lo < b < hi), hi]
            for a, z in zip(cuts, cuts[1:], strict=False):
                for tier, s_lo, s_hi in _segments(a, z, False) if a < z else ():
                    assert s_lo is not None and s_hi is not None
                    spans[tier].append((s_lo, s_hi))
        raw = "toString(sum(toDecimal256(value, 18)))" if aggregation == "SUM" else "count()"
        branches = []
        for tier, table, col, literal in (("minute", "meter_rollup_1m", "minute", _epoch_s),
                                          ("raw", "meter_values", "time", _ms_text)):
            tier_spans: list[tuple[datetime, datetime]] = []
            for lo, hi in sorted(spans[tier]):  # neighbours as one span (its bounds inside it are its segments' steps)
                if tier_spans and tier_spans[-1][1] == lo:
                    tier_spans[-1] = (tier_spans[-1][0], hi)
                else:
                    tier_spans.append((lo, hi))
            if not tier_spans:
                continue
            if by_time:
                w, grouped = ("toUnixTimestamp64Milli(time)" if tier == "raw" else "toInt64(minute) * 1000"), True
            else:
                w, grouped = _segment_sql(col, tier_spans, bounds, literal)
            # One read of each table: its spans as one condition (a single span of a rollup as two comparisons).
            when = (f"{col} >= {literal(tier_spans[0][0])} AND {col} < {literal(tier_spans[0][1])}"
                    if len(tier_spans) == 1 and tier != "raw" else
                    "(" + " OR ".join(f"({col} >= {literal(lo)} AND {col} < {literal(hi)})" for lo, hi in tier_spans) + ")")
            branches.append(f"SELECT {w} AS w, {raw if tier == 'raw' else cell} FROM {table} PREWHERE {who} "  # noqa: S608
                            f"AND {when}" + (" GROUP BY w" if grouped else ""))
        if not branches:
            return
        for w, v in self._query(" UNION ALL ".join(branches), params, admit=False):
            parts[segment_of(w)].append(Decimal(v))

    def _whole_hour_zone(self, tz: str) -> bool:
        """True when every UTC offset of `tz` from 1990 to 2060 is a whole number of hours by the engine's own
        time-zone data (every 6 hours; one statement per zone, kept), so that every window boundary of that zone
        falls on a UTC hour and hourly rollups can serve its windows. Python's data can be another version (the
        system's tzdata is upgraded apart from the engine's): a zone whole-hour there and not in the engine had its
        windows served from hour cells that straddle their bounds."""
        if tz == "UTC":
            return True
        whole = self._whole_hours.get(tz)
        if whole is None:
            lo = int(_HOURLY_SINCE.timestamp())
            n = (int(_WHOLE_HOURS_UNTIL.timestamp()) - lo) // 21600
            ((bad,),) = self._query(
                "SELECT countIf(timeZoneOffset(toDateTime({lo:Int64} + number * 21600, {tz:String})) % 3600 != 0) "
                "FROM numbers({n:UInt64})", {"lo": lo, "n": n, "tz": tz}, admit=False)
            whole = self._whole_hours[tz] = int(bad) == 0
        return whole

    def window_ends(self, starts: Sequence[datetime], size: str, tz: str) -> dict[datetime, datetime]:
        """See ports.UsageStore: the window start expression of `aggregate` (_WINDOW_EXPR) applied to an instant
        well inside the next window (36 hours after a day's start: days are 23 to 25 hours; 32 days after a
        month's), in one statement. Hours are an hour long in a zone whose offsets are whole hours (no statement)."""
        if not starts:
            return {}
        if size == "HOUR":
            if self._whole_hour_zone(tz):
                return {s: s + _HOUR for s in starts}
            # In a zone with a half- or quarter-hour offset the engine's hour windows are 30 to 60 minutes long (it
            # keeps a local day's first offset all that day, so the day's last hour after a half-hour DST change is
            # half an hour): each end is the next of the engine's window starts over the span of `starts` (one
            # statement by the span, ~5 ms for 30 days; an array of every start as a parameter costs twice that),
            # or, when the starts are few for their span, the first window start after each among its next four
            # quarter hours.
            if (max(starts) - min(starts)) / _HOUR <= 8 * len(starts):
                listed = self.window_starts(min(starts), max(starts) + 2 * _HOUR, size, tz)
                return {s: listed[bisect.bisect_right(listed, s)] for s in starts}
            rows = self._query(  # noqa: S608 (this module's SQL; the values are parameters)
                f"SELECT w, min(e) FROM (SELECT w, {_WINDOW_EXPR[size]} AS e FROM (SELECT w, toDateTime(w + k * 900, "
                "'UTC') AS t FROM (SELECT arrayJoin({ws:Array(Int64)}) AS w) ARRAY JOIN [1, 2, 3, 4] AS k)) "
                "WHERE e > w GROUP BY w", {"ws": [int(s.timestamp()) for s in starts], "tz": tz}, admit=False)
            return {datetime.fromtimestamp(w, UTC): datetime.fromtimestamp(e, UTC) for w, e in rows}
        later = {"DAY": "toIntervalHour(36)", "MONTH": "toIntervalDay(32)"}[size]
        params = {"ws": [int(s.timestamp()) for s in starts], "tz": tz}
        rows = self._query(  # noqa: S608 (this module's SQL; the values are parameters)
            f"SELECT w, {_WINDOW_EXPR[size]} FROM (SELECT w, toDateTime(w, 'UTC') + {later} AS t "
            "FROM (SELECT arrayJoin({ws:Array(Int64)}) AS w))", params, admit=False)
        return {datetime.fromtimestamp(w, UTC): datetime.fromtimestamp(e, UTC) for w, e in rows}

    def window_starts(self, start: datetime, end: datetime, size: str, tz: str) -> list[datetime]:
        """See ports.UsageStore: the window start expression of `aggregate` (_WINDOW_EXPR) at an instant every
        quarter hour (HOUR; every hour for DAY, every day for MONTH: no window is shorter) from `start` and at the last
        second before `end`, distinct, in one statement. Hours in a zone whose offsets are whole hours are UTC hours,
        and outside DateTime's range (1970 to 2106, where no usage is) Python's calendar draws them."""
        lo, last = math.floor(start.timestamp()), math.floor((end - timedelta(milliseconds=1)).timestamp())
        if size == "HOUR" and self._whole_hour_zone(tz):  # UTC hours
            hours = [_floor_hour(start.astimezone(UTC))]
            while (nxt := hours[-1] + _HOUR) < end:
                hours.append(nxt)
            return hours
        if lo < 0 or last >= _DATETIME_END:
            return python_window_starts(start, end, size, zone(tz))
        step = {"HOUR": 900, "DAY": 3600, "MONTH": 86400}[size]
        params = {"lo": lo, "last": last, "step": step, "tz": tz}
        rows = self._query(  # noqa: S608 (this module's SQL; the values are parameters)
            f"SELECT DISTINCT {_WINDOW_EXPR[size]} AS w FROM (SELECT toDateTime(arrayJoin(arrayPushBack("
            "range({lo:Int64}, {last:Int64}, {step:Int64}), {last:Int64})), 'UTC') AS t) ORDER BY w", params, admit=False)
        return [datetime.fromtimestamp(w, UTC) for (w,) in rows]

    def sum_meters(self, q: UsageQuery, meter_ids: Sequence[str]) -> list[tuple[Any, ...]]:
        """The SUM of each of `meter_ids` side by side, in one query (ClickHouse adds them up): see ports.UsageStore."""
        if not meter_ids:
            return []
        params: dict[str, Any] = {"mids": list(meter_ids)}
        sums = []
        for n, mid in enumerate(meter_ids):
            params[f"m{n}"] = mid
            # as text, read back exactly: clickhouse-connect decodes Decimal256 columns ~5x slower than Decimal(str)
            sums.append(f"toString(sumIf(s, meter_id = {{m{n}:String}}))")
        rows = self._query(self._grouped_sql(q, "meter_id IN {mids:Array(String)}", ("s",), sums, params), params)
        customers = q.subject_customers is not None
        width = 1 + q.by_subject + customers
        return [(datetime.fromtimestamp(r[0], UTC) if q.window_size else None,
                 r[1] if q.by_subject else None,
                 (r[width - 1] or None) if customers else None,
                 r[width:width + len(q.group_by)], *map(Decimal, r[width + len(q.group_by):])) for r in rows]

    def _grouped_sql(self, q: UsageQuery, meters: str, needs: Sequence[str], aggs: list[str],
                     params: dict[str, Any], each: str | None = None) -> str:
        """SELECT window, [subject], [customer], group values, `aggs` over the meters `meters` selects: the
        rollups for the whole minutes or hours of the span, the raw values for its partial minutes. `each`: an
        array expression over a value's subject and group_by; each value is repeated once per element (`fi`, also
        grouped by: `aggs` may name it)."""
        params.update({"ns": q.namespace, "tz": q.window_tz})
        if q.window_size == "BOUNDS":
            assert q.bounds is not None
            params["bounds"] = [int(b.timestamp()) for b in q.bounds]
        where = ["namespace = {ns:String}", meters]
        if q.subjects is not None:
            where.append("subject IN {subjects:Array(String)}")
            params["subjects"] = q.subjects
        if q.filters:
            where.append(self._filters_sql(q.filters, params))
        common = " AND ".join(where)
        layout = _layout(q)
        tiers = _TIERS[layout]

        branches = []
        start, end_excl = q.start, (q.end + _MS if q.end is not None else None)
        # Only the partial aggregates this aggregation needs: the uniq states are wide.
        rollup = (
            "SELECT minute AS t, minute + {unit} AS te, meter_id, "
            + ("'' AS subject" if layout == "all" else "subject") + ", group_by, " + ", ".join(_ROLLUP_COL[c] for c in needs)
            + " FROM {table} WHERE " + common
        )
        raw_select = (
            "SELECT toDateTime(toStartOfMinute(time), 'UTC') AS t, t + 60 AS te, meter_id, subject, group_by, "
            + ", ".join(_RAW_COL[c] for c in needs) + " FROM meter_values WHERE " + common + " AND (EDGES) "
            "GROUP BY t, meter_id, subject, group_by"
        )
        # One branch per table: the partial hours at both ends are one read of the minute rollup (an OR of their
        # ranges), as the partial minutes are one read of the raw values. chdb charges each branch's read a fixed
        # cost, about a tenth of an hourly month's query, whatever the few rows it reads (issue 17).
        edges: list[str] = []
        minutes: list[str] | None = []  # None: a minute range without bounds (then every minute is read)
        for n, (tier, lo, hi) in enumerate(_segments(start, end_excl, _hourly_ok(q, self._whole_hour_zone))):
            cond = []
            col = "time" if tier == "raw" else "minute"
            ptype = "DateTime64(3, 'UTC')" if tier == "raw" else "DateTime('UTC')"
            if lo is not None:
                cond.append(f"{col} >= {{s{n}_lo:{ptype}}}")
                params[f"s{n}_lo"] = lo
            if hi is not None:
                cond.append(f"{col} < {{s{n}_hi:{ptype}}}")
                params[f"s{n}_hi"] = hi
            if tier == "raw":
                edges.append("(" + " AND ".join(cond) + ")")
            elif tier == "minute":
                if minutes is not None:
                    minutes = minutes + ["(" + " AND ".join(cond) + ")"] if cond else None
            else:  # te: the end of the unit the row stands for
                branches.append(rollup.replace("{table}", tiers[1]).replace("{unit}", "3600")
                                + "".join(" AND " + c for c in cond))
        if minutes is None or minutes:
            branches.append(rollup.replace("{table}", tiers[0]).replace("{unit}", "60")
                            + (" AND (" + " OR ".join(minutes) + ")" if minutes else ""))
        if edges:
            branches.append(raw_select.replace("EDGES", " OR ".join(edges)))
        if not branches:
            branches.append(raw_select.replace("EDGES", "0"))

        keys = ["w"]
        select = [_WINDOW_EXPR[q.window_size] + " AS w"]
        customers = q.subject_customers is not None
        if q.by_subject:
            select.append("subject")
            keys.append("subject")
        if customers:
            assert q.subject_customers is not None
            params["cs_subj"] = list(q.subject_customers.keys())
            params["cs_cust"] = list(q.subject_customers.values())
            select.append("transform(subject, {cs_subj:Array(String)}, {cs_cust:Array(String)}, '') AS customer_id")
            keys.append("customer_id")
        for i, k in enumerate(q.group_by):
            params[f"gk{i}"] = k
            select.append(f"group_by[{{gk{i}:String}}] AS g{i}")
            keys.append(f"g{i}")
        select.extend(aggs)
        if each is not None:
            keys.append("fi")
        return (
            "SELECT " + ", ".join(select) + " FROM (" + " UNION ALL ".join(branches) + ") "
            + (f"ARRAY JOIN {each} AS fi " if each is not None else "")
            + "GROUP BY " + ", ".join(keys) + " ORDER BY " + ", ".join(keys)
        )

    @staticmethod
    def _filters_sql(filters: list[list[GroupFilter]], params: dict[str, Any], prefix: str = "") -> str:
        ors = []
        for a, conj in enumerate(filters):
            ands = []
            for b, f in enumerate(conj):
                kp, vp = f"{prefix}fk{a}_{b}", f"{prefix}fv{a}_{b}"
                params[kp], params[vp] = f.key, f.value
                col = "subject" if f.key == "subject" else "group_by[{" + kp + ":String}]"
                ands.append(_FILTER_SQL[f.op].replace("{col}", col).replace("{p:", "{" + vp + ":"))
            ors.append("(" + " AND ".join(ands) + ")")
        return "(" + " OR ".join(ors) + ")"

    def scan_events(self, namespace: str, event_type: str, after: tuple[str, str] | None, limit: int) -> list[CloudEvent]:
        params: dict[str, Any] = {"ns": namespace, "type": event_type, "limit": limit}
        cond = ""
        if after is not None:
            cond = " AND (source, id) > ({as:String}, {ai:String})"
            params.update({"as": after[0], "ai": after[1]})
        rows = self._query(
            "SELECT source, id, type, subject, time, data FROM events FINAL WHERE namespace = {ns:String} "
            "AND type = {type:String}" + cond + " ORDER BY source, id LIMIT {limit:UInt32}", params)
        return [_row_event(r) for r in rows]

    def count_events(self, namespace: str, start: datetime) -> dict[str, int]:
        rows = self._query("SELECT subject, count() FROM events FINAL WHERE namespace = {ns:String} "
                           "AND time >= {start:DateTime64(3, 'UTC')} GROUP BY subject", {"ns": namespace, "start": start})
        return {r[0]: int(r[1]) for r in rows}

    def list_events(self, namespace: str, *, subjects: Sequence[str] | None, start: datetime | None,
                    end: datetime | None, event_id: str | None, limit: int) -> list[StoredEvent]:
        params: dict[str, Any] = {"ns": namespace, "limit": limit}
        where = ["namespace = {ns:String}"]
        if subjects:
            where.append("subject IN {subjects:Array(String)}")
            params["subjects"] = list(subjects)
        if start is not None:
            where.append("time >= {start:DateTime64(3, 'UTC')}")
            params["start"] = start
        if end is not None:
            where.append("time <= {end:DateTime64(3, 'UTC')}")
            params["end"] = end
        if event_id is not None:
            where.append("position(id, {eid:String}) > 0")
            params["eid"] = event_id
        rows = self._query(
            "SELECT source, id, type, subject, time, data, ingested_at, validation_error FROM events FINAL WHERE "
            + " AND ".join(where) + " ORDER BY time DESC, source, id LIMIT {limit:UInt32}", params)
        return [StoredEvent(_row_event(r), _utc(r[6]), r[7]) for r in rows]

    def subjects(self, namespace: str, meter_id: str, start: datetime | None, end: datetime | None) -> list[str]:
        params: dict[str, Any] = {"ns": namespace, "mid": meter_id}
        where = ["namespace = {ns:String}", "meter_id = {mid:String}"]
        if start is not None:
            where.append("time >= {start:DateTime64(3, 'UTC')}")
            params["start"] = start
        if end is not None:
            where.append("time <= {end:DateTime64(3, 'UTC')}")
            params["end"] = end
        rows = self._query("SELECT DISTINCT subject FROM meter_values WHERE " + " AND ".join(where) + " ORDER BY subject", params)
        return [r[0] for r in rows]

    def rated_sums(self, q: UsageQuery, meter_ids: Sequence[str], rating: Rating) -> RatedSums:
        """See ports.UsageStore.rated_sums: one query finds the rate keys (among the values of rating.key_meter
        alone where it names one), a second prices every row and adds the rated ones up to lines in ClickHouse
        (exact Decimal256), so the lines, not the rows, come back. Rows of a rate key the first query did not see
        (values of the other meters only) come back unrated: they are priced and the second query runs once more."""
        by = rating.by
        if not meter_ids or not q.group_by or not 0 < by <= len(q.group_by):
            return rate_rows(self.sum_meters(q, meter_ids), rating)
        params: dict[str, Any] = {}
        sql = self._grouped_sql(replace(q, by_subject=False, subject_customers=None, group_by=q.group_by[:by]),
                                "meter_id IN {mids:Array(String)}", ("c",), ["count()"], params)
        params["mids"] = [meter_ids[rating.key_meter]] if rating.key_meter is not None else list(meter_ids)
        found: dict[RateKey, tuple[Decimal | None, ...] | None] = {}
        for r in self._query(sql, params):
            k = (datetime.fromtimestamp(r[0], UTC) if q.window_size else None, tuple(r[1:1 + by]))
            found[k] = rating.rates(*k)
        for _ in range(2 if rating.key_meter is not None else 1):
            rated = self._rate_in_store(q, meter_ids, rating, found)
            if rated is None:  # rates too fine for Decimal256
                break
            lines, unrated, stray = rated
            if not stray:
                return RatedSums(lines, unrated)
            for k in stray:
                found[k] = rating.rates(*k)
        # rates finer than 28 decimal places, or usage of a rate key neither read saw (written in between): rated
        # in Python, from what is there now
        return rate_rows(self.sum_meters(q, meter_ids), rating, found=found)

    def _rate_in_store(self, q: UsageQuery, meter_ids: Sequence[str], rating: Rating,
                       found: dict[RateKey, tuple[Decimal | None, ...] | None]
                       ) -> tuple[list[RatedLine], list[tuple[Any, ...]], list[RateKey]] | None:
        """rated_sums' second query: the rows priced with the rates `found` and added up to lines; (lines, unrated
        rows, the rate keys of unrated rows not in `found`), or None where a rate is finer than Decimal256 holds."""
        by = rating.by
        priced = [(k, rates) for k, rates in found.items() if rates is not None]
        tuples = list(dict.fromkeys(rates for _, rates in priced))
        exponents = [r.as_tuple().exponent for rates in tuples for r in rates if r is not None]
        scale = max([0, *(-e for e in exponents if isinstance(e, int))])
        if scale > 28 or not all(isinstance(e, int) for e in exponents):
            return None  # 18 + scale decimal places in Decimal256 leave 30 integer digits
        params: dict[str, Any] = {"mids": list(meter_ids)}
        sums = []
        for n, mid in enumerate(meter_ids):
            params[f"m{n}"] = mid
            sums.append(f"sumIf(s, meter_id = {{m{n}:String}}) AS x{n}")
        # (joined, not listed: no ORDER BY)
        inner = self._grouped_sql(q, "meter_id IN {mids:Array(String)}", ("s",), sums, params).rpartition(" ORDER BY ")[0]
        width = 1 + q.by_subject + (q.subject_customers is not None)
        lead = (["subject"] if q.by_subject else []) + (["customer_id"] if q.subject_customers is not None else [])
        gs = [f"g{i}" for i in range(len(q.group_by))]
        n_k = len(rating.forms)
        # The rates joined to the rows by (window, first `by` group values), a hash join. Parameters stay small
        # (clickhouse-connect formats them in Python, per character of every string): each distinct rate group
        # values and each distinct rate tuple once, the (window, group, rates) table as integer arrays in text.
        # The rates are Decimal256 in that small table (not parsed per row), with a flag where there is none; a
        # line's rate keys come back as the indexes of its groups (sorted as the groups are: ascending).
        groups = sorted({k[1] for k, _ in priced})
        gi, ti = {g: n for n, g in enumerate(groups, 1)}, {t: n for n, t in enumerate(tuples, 1)}
        params["rg"] = groups
        params["kw"] = "[" + ",".join(str(int(k[0].timestamp()) if k[0] is not None else 0) for k, _ in priced) + "]"
        params["kg"] = "[" + ",".join(str(gi[k[1]]) for k, _ in priced) + "]"
        params["kr"] = "[" + ",".join(str(ti[rates]) for _, rates in priced) + "]"
        for k in range(n_k):
            params[f"r{k}"] = [format(t[k], "f") if t[k] is not None else "0" for t in tuples]
            params[f"h{k}"] = "[" + ",".join("0" if t[k] is None else "1" for t in tuples) + "]"
        rg_type = f"Array(Tuple({', '.join(['String'] * by)}))"
        rates_sql = ("SELECT e.1 AS rw, e.2 AS rg, toUInt8(1) AS hit, "
                     + "".join(f"arrayElement({{rg:{rg_type}}}, e.2).{i + 1} AS p{i}, " for i in range(by))
                     + ", ".join(f"toDecimal256(arrayElement({{r{k}:Array(String)}}, e.3), {scale}) AS rd{k}, "
                                 f"arrayElement({{h{k}:Array(UInt8)}}, e.3) AS rh{k}" for k in range(n_k))
                     + " FROM (SELECT arrayJoin(arrayZip({kw:Array(Int64)}, {kg:Array(UInt32)}, {kr:Array(UInt32)})) AS e)")
        on = "toInt64(r.w) = p.rw" + "".join(f" AND r.g{i} = p.p{i}" for i in range(by))
        middle = []
        ok = ["hit = 1"]
        amounts = []
        for k, form in enumerate(rating.forms):
            terms = " ".join(f"{'+' if c > 0 else '-'} {f'{abs(c)} * ' if abs(c) != 1 else ''}x{n}"
                             for n, c in enumerate(form) if c).removeprefix("+ ")
            middle.append(f"{terms or 'toDecimal256(0, 18)'} AS q{k}")
            ok.append(f"(rh{k} = 1 OR q{k} = 0)")
            if k in rating.nonnegative:
                ok.append(f"q{k} >= 0")
            amounts.append(f"toString(sumIf(q{k} * rd{k}, ok))")
        kept = [g if i in rating.shown else f"if(ok, '', {g})" for i, g in enumerate(gs)]
        # a line over every window (per_window False) keeps the window of its unrated rows; lines come back in the
        # order of their first row (sum_meters' order: window, subject, customer, group values)
        lw = "w" if rating.per_window else "if(ok, 0, w)"
        outer = (
            f"SELECT {lw} AS lw, {''.join(c + ', ' for c in lead)}ok, "
            f"{', '.join(f'{e} AS k{i}' for i, e in enumerate(kept))}, "
            f"min(tuple(w, {''.join(c + ', ' for c in lead)}{', '.join(gs)})) AS first, "
            + ", ".join(f"toString(sum(x{n}))" for n in range(len(meter_ids))) + ", " + ", ".join(amounts)
            + ", arraySort(groupUniqArrayIf(rg, ok)) "
            f"FROM (SELECT r.*, hit, rg, {', '.join(f'rd{k}, rh{k}' for k in range(n_k))}, {', '.join(middle)}, "
            f"{' AND '.join(ok)} AS ok FROM ({inner}) AS r LEFT JOIN ({rates_sql}) AS p ON {on}) "
            f"GROUP BY lw, {''.join(c + ', ' for c in lead)}ok, {', '.join(f'k{i}' for i in range(len(gs)))} "
            f"ORDER BY ok, first"
        )
        rows = self._query(outer, params)
        lines, unrated, stray = [], [], []
        m = len(meter_ids)
        base = width + 1 + len(gs) + 1
        shown_at = [width + 1 + i for i in rating.shown]
        instants: dict[int, datetime] = {}  # epoch second -> UTC datetime, made once per window
        for r in rows:
            rated = r[width]
            start = None
            if q.window_size and (rating.per_window or not rated):
                start = instants.get(r[0])
                if start is None:
                    start = instants[r[0]] = datetime.fromtimestamp(r[0], UTC)
            subject = r[1] if q.by_subject else None
            customer = (r[width - 1] or None) if q.subject_customers is not None else None
            sums_ = [Decimal(x) for x in r[base:base + m]]
            if not rated:
                values = tuple(r[width + 1:width + 1 + len(gs)])
                if (start, values[:by]) not in found:
                    stray.append((start, values[:by]))
                unrated.append((start, subject, customer, values, *sums_))
                continue
            lines.append(RatedLine(start, subject, customer, tuple([r[j] for j in shown_at]),
                                   [groups[i - 1] for i in r[base + m + n_k]], sums_,
                                   [Decimal(x) for x in r[base + m:base + m + n_k]]))
        return lines, unrated, list(dict.fromkeys(stray))

    # -- lineage (issue 21) ------------------------------------------------------------------------
    def line_events(self, namespace: str, meter_id: str, subjects: Sequence[str], start: datetime, end: datetime,
                    filters: list[list[GroupFilter]], after: tuple[str, str] | None, limit: int | None) -> list[LineEvent]:
        params: dict[str, Any] = {"ns": namespace, "mid": meter_id, "subjects": list(subjects), "start": start,
                                  "end": end}
        where = ["namespace = {ns:String}", "meter_id = {mid:String}", "subject IN {subjects:Array(String)}",
                 "time >= {start:DateTime64(3, 'UTC')}", "time < {end:DateTime64(3, 'UTC')}"]
        if filters:
            where.append(self._filters_sql(filters, params))
        if after is not None:
            where.append("(source, id) > ({as:String}, {ai:String})")
            params.update({"as": after[0], "ai": after[1]})
        lim = ""
        if limit is not None:
            lim, params["limit"] = " LIMIT {limit:UInt32}", limit
        rows = self._query(
            "SELECT v.source, v.id, v.subject, v.time, toString(v.value), e.ingested_at FROM (SELECT source, id, subject, "
            "time, value FROM meter_values WHERE " + " AND ".join(where) + " ORDER BY source, id" + lim + ") AS v "
            "LEFT JOIN (SELECT source, id, max(ingested_at) AS ingested_at FROM events WHERE namespace = {ns:String} "
            "AND (source, id) IN (SELECT source, id FROM meter_values WHERE " + " AND ".join(where) + ") "
            "GROUP BY source, id) AS e ON v.source = e.source AND v.id = e.id ORDER BY v.source, v.id", params)
        return [LineEvent(r[0], r[1], r[2], _utc(r[3]), Decimal(r[4]),
                          _utc(r[5]) if r[5] is not None and r[5].timestamp() > 0 else None) for r in rows]

    def line_digests(self, namespace: str, meter_id: str, start: datetime, end: datetime,
                     filters: list[list[GroupFilter]], groups: dict[str, str]) -> dict[str, UsageDigest]:
        if not groups:
            return {}
        params, where = _digest_span(namespace, meter_id, start, end, groups)
        if filters:
            where.append(self._filters_sql(filters, params))
        rows = self._query(f"SELECT {_PARTY}, {_DIGEST} FROM meter_values WHERE " + " AND ".join(where)  # noqa: S608
                           + " GROUP BY g", params)
        return {r[0]: UsageDigest(int(r[1]), Decimal(r[2]), r[3]) for r in rows}

    def line_digests_each(self, namespace: str, meter_id: str, start: datetime, end: datetime,
                          filter_sets: Sequence[list[list[GroupFilter]]],
                          groups: dict[str, str]) -> list[dict[str, UsageDigest]]:
        """See ports.UsageStore. One statement: the values of the groups' subjects in the span (where no set is
        unfiltered, only those passing one of the sets), each repeated once per set it passes (`_each_sql`), digested
        per (group, set) as `line_digests` digests per group."""
        out: list[dict[str, UsageDigest]] = [{} for _ in filter_sets]
        if not groups or not filter_sets:
            return out
        params, where = _digest_span(namespace, meter_id, start, end, groups)
        each, union = self._each_sql(filter_sets, params)
        if union:
            where.append(self._filters_sql(union, params))
        rows = self._query(
            f"SELECT {_PARTY}, fi, {_DIGEST} FROM (SELECT subject, group_by, source, id, value "  # noqa: S608
            "FROM meter_values WHERE " + " AND ".join(where) + ") ARRAY JOIN " + each + " AS fi GROUP BY g, fi", params)
        for g, fi, n, total, key_hash in rows:
            out[int(fi)][g] = UsageDigest(int(n), Decimal(total), key_hash)
        return out


# A line's digest (lineage, issue 21): its party (the customer of each subject, `groups`), then the event count, the
# exact sum and the SHA-256 over its sorted (source, id) keys. `line_digests` and `line_digests_each` must agree.
_PARTY = "transform(subject, {gs:Array(String)}, {gg:Array(String)}, '') AS g"
_DIGEST = ("count(), toString(sum(toDecimal256(value, 18))), lower(hex(SHA256(arrayStringConcat(arrayMap(k -> "
           "concat(k.1, '\\0', k.2, '\\n'), arraySort(groupArray((source, id)))), ''))))")


def _digest_span(namespace: str, meter_id: str, start: datetime, end: datetime,
                 groups: dict[str, str]) -> tuple[dict[str, Any], list[str]]:
    """The parameters and conditions of a digest read: the meter's values of the groups' subjects in [start, end)."""
    params: dict[str, Any] = {"ns": namespace, "mid": meter_id, "start": start, "end": end,
                              "gs": list(groups), "gg": list(groups.values())}
    where = ["namespace = {ns:String}", "meter_id = {mid:String}", "subject IN {gs:Array(String)}",
             "time >= {start:DateTime64(3, 'UTC')}", "time < {end:DateTime64(3, 'UTC')}"]
    return params, where


def _rows(result: Any) -> list[tuple[Any, ...]]:
    return list(result.result_rows)


def _columns(result: Any) -> Sequence[Sequence[Any]]:
    return result.result_columns


_HOUR = timedelta(hours=1)
_DATETIME_END = 4294967295  # DateTime's last second (2106-02-07T06:28:15Z)
# The rollup tables (clickhouse_schema.ROLLUPS): (table, start of cell as its view computes it, key columns after it).
_ROLLUPS = ROLLUPS
# The (minute, hour) rollups a query reads, by what it asks of subjects (`_layout`).
_TIERS = {"all": ("meter_rollup_1m_all", "meter_rollup_1h_all"),
          "subject": ("meter_rollup_1m", "meter_rollup_1h_by_subject"),
          "time": ("meter_rollup_1m", "meter_rollup_1h")}
_HOURLY_SINCE = datetime(1990, 1, 1, tzinfo=UTC)
_WHOLE_HOURS_UNTIL = datetime(2060, 1, 1, tzinfo=UTC)
# The rows of a set of (meter, UTC hour) cells, {col} being the time column (params: ns, mids, cells, lo, hi).
_CELLS_WHERE = ("namespace = {ns:String} AND meter_id IN {mids:Array(String)} AND {col} >= {lo:DateTime('UTC')} "
                "AND {col} < {hi:DateTime('UTC')} AND (meter_id, toDateTime(toStartOfHour({col}), 'UTC')) "
                "IN {cells:Array(Tuple(String, DateTime('UTC')))}")


def _floor_hour(t: datetime) -> datetime:
    return t.replace(minute=0, second=0, microsecond=0)


def _ceil_hour(t: datetime) -> datetime:
    f = _floor_hour(t)
    return f if f == t else f + _HOUR


def _layout(q: UsageQuery) -> str:
    """Which rollups serve `q`: "all" (per meter, no subject) when it neither filters nor groups by subject,
    "subject" (subject-first hours) when it names its subjects, else "time" (time first, every subject)."""
    if q.subjects is not None:
        return "subject"
    if q.by_subject or q.subject_customers is not None or any(f.key == "subject" for c in q.filters for f in c):
        return "time"
    return "all"


def _hourly_ok(q: UsageQuery, whole_hour_zone: Callable[[str], bool]) -> bool:
    if q.window_size == "MINUTE":
        return False
    if q.window_size == "BOUNDS":
        # The first and last bounds are the span's ends, which `_segments` serves in minutes and raw values where
        # they cut an hour (a check ends now, mid-hour); an hour cell stays within one bucket when no inner bound cuts it.
        return all(b.minute == 0 and b.second == 0 and b.microsecond == 0 for b in (q.bounds or ())[1:-1])
    if q.window_size is not None and not whole_hour_zone(q.window_tz):
        return False
    return q.window_tz == "UTC" or q.window_size is None or (q.start is not None and q.start >= _HOURLY_SINCE)


def _segments(start: datetime | None, end: datetime | None, hourly: bool) -> list[tuple[str, datetime | None, datetime | None]]:
    """Split [start, end) into raw partial minutes, rollup minutes and (if allowed) rollup hours.
    None is an open end. Each tier serves only whole units that lie inside the range."""
    m_lo = _ceil_minute(start) if start is not None else None
    m_hi = _floor_minute(end) if end is not None else None
    if m_lo is not None and m_hi is not None and m_lo >= m_hi:
        return [("raw", start, end)] if start is not None and end is not None and start < end else []
    out: list[tuple[str, datetime | None, datetime | None]] = []
    if start is not None and m_lo is not None and start < m_lo:
        out.append(("raw", start, m_lo))
    if end is not None and m_hi is not None and m_hi < end:
        out.append(("raw", m_hi, end))
    if not hourly:
        out.append(("minute", m_lo, m_hi))
        return out
    h_lo = _ceil_hour(m_lo) if m_lo is not None else None
    h_hi = _floor_hour(m_hi) if m_hi is not None else None
    if h_lo is not None and h_hi is not None and h_lo >= h_hi:
        out.append(("minute", m_lo, m_hi))
        return out
    if m_lo is not None and h_lo is not None and m_lo < h_lo:
        out.append(("minute", m_lo, h_lo))
    if m_hi is not None and h_hi is not None and h_hi < m_hi:
        out.append(("minute", h_hi, m_hi))
    out.append(("hour", h_lo, h_hi))
    return out


def _segment_sql(col: str, spans: Sequence[tuple[datetime, datetime]], bounds: Sequence[datetime],
                 literal: Callable[[datetime], str]) -> tuple[str, bool]:
    """SQL for the segment of a row whose `col` lies in one of `spans` (ascending, disjoint, within the bounds):
    i for [bounds[i], bounds[i + 1]). The segment of the first span's start plus, at each bound inside a span and
    at each later span's start, the segments passed there times (col >= that point): comparisons with a few
    literals, which chdb analyses faster than a lambda over the bounds (no "0 +": each term costs). True when it is
    not a constant."""
    at = first = bisect.bisect_right(bounds, spans[0][0]) - 1
    steps = []
    for n, (lo, hi) in enumerate(spans):
        for p in ([lo] if n else []) + sorted({b for b in bounds if lo < b < hi}):
            k = bisect.bisect_right(bounds, p) - 1
            if k != at:
                steps.append(f"({col} >= {literal(p)})" if k - at == 1 else f"{k - at} * ({col} >= {literal(p)})")
                at = k
    return " + ".join(steps if steps and not first else [str(first), *steps]), bool(steps)


# Above this many inner bounds a read sums by cell and sends each sum to its segment (bounded_usage). The chain of
# comparisons costs chdb per term (one subject's read, 2 M rows stored: 3-4 bounds ~6.2 vs ~7.2 ms by cell, 10 bounds
# 7.7 vs 6.9, 64 bounds 20.7 vs 7.1, 256: 83 vs 7.9), nests a level per bound, and ClickHouse refuses a statement
# nested past 1,000 (max_ast_depth) or over 256 KiB (max_query_size): the first check of an hourly period counted
# from 45 days back, or of a grant recurring every minute, answered 500.
_LITERAL_BOUNDS = 4
# bounded_usage reads each cell of a span of up to this many hours (seconds): ~6 weeks, a month's period and more.
_CELLS_SPAN = timedelta(hours=1000)
# (first, last) of a cut hour no row has been read for: any row's instants replace them.
_NO_VALUES = (2 ** 63, -(2 ** 63))
_LITERAL_SUBJECTS = 16  # more subjects than this go to bounded_usage's statement as one Array(String) parameter


def _segment_at(bound_ms: Sequence[int], ms: int) -> int:
    """The segment of an instant (epoch ms) among bounds (epoch ms, ascending): i for [bounds[i], bounds[i + 1]), -1
    before the first, len - 1 from the last on."""
    return bisect.bisect_right(bound_ms, ms) - 1


def _epoch_s(t: datetime) -> str:
    """A whole second as a literal for a DateTime column: its epoch seconds (the column's own representation)."""
    return str((t - _EPOCH) // timedelta(seconds=1))


def _ms_text(t: datetime) -> str:
    """An instant as a literal for a DateTime64(3, 'UTC') column: its UTC text to the millisecond (floored)."""
    u = t.astimezone(UTC)
    return f"'{u:%Y-%m-%d %H:%M:%S}.{u.microsecond // 1000:03d}'"


_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.:@/ ")


def _sql_string(s: str) -> str:
    """A ClickHouse string literal of `s` (its UTF-8 bytes, exactly): every byte but letters, digits and a few
    plain signs as a \\xHH escape, so that no quote, backslash, brace or percent sign of a subject reaches the
    statement's text (nor clickhouse-connect's parameter binding, which scans that text)."""
    return "'" + "".join(chr(b) if b in _SAFE else f"\\x{b:02x}" for b in s.encode()) + "'"


@functools.cache
def _arrow_types() -> dict[str, Any]:
    """The Arrow type of each column type the in-process inserts send (pyarrow: chdb's own dependency, imported once
    the store writes in process)."""
    import pyarrow as pa

    return {"String": pa.string(), "UInt64": pa.uint64(), "UInt8": pa.uint8(), _T64: pa.timestamp("ms", tz="UTC"),
            "Map(String, String)": pa.map_(pa.string(), pa.string())}


def _arrow_stream(names: list[str], types: list[str], columns: list[Sequence[Any]]) -> bytes:
    """The columns as one Arrow IPC stream: strings as they are, epoch milliseconds as UTC millisecond timestamps,
    maps from each row's items."""
    import pyarrow as pa

    kinds = _arrow_types()
    arrays = [pa.array(list(map(list, map(dict.items, col))) if kind.startswith("Map") else col, kinds[kind])
              for kind, col in zip(types, columns, strict=True)]
    out = pa.BufferOutputStream()
    with pa.ipc.new_stream(out, pa.schema(list(zip(names, (a.type for a in arrays), strict=True)))) as stream:
        stream.write_batch(pa.RecordBatch.from_arrays(arrays, names=names))
    return bytes(out.getvalue().to_pybytes())


def _hour_cells(values: Sequence[MeterValue]) -> list[tuple[str, int]]:
    """(meter id, epoch second of the UTC hour) of every value, once each."""
    if not isinstance(values, ValueColumns):
        values = _value_columns(values)
    hours = set(zip(values.meter_ids, [t // 3_600_000 for t in values.ms], strict=True))  # (tuples made in C)
    return sorted((m, h * 3600) for m, h in hours)


def _value_columns(values: Sequence[MeterValue]) -> ValueColumns:
    cols = ValueColumns()
    cols.meter_ids, cols.subjects = [v.meter_id for v in values], [v.subject for v in values]
    cols.ms, cols.values = _ticks([v.time for v in values]), [v.value for v in values]
    cols.value_strs, cols.group_bys = [v.value_str for v in values], [v.group_by for v in values]
    cols.sources, cols.event_ids = [v.source for v in values], [v.event_id for v in values]
    return cols


def _event_columns(events: Sequence[StoredEvent]) -> EventColumns:
    cols = EventColumns()
    cols.ids, cols.sources = [s.event.id for s in events], [s.event.source for s in events]
    cols.types, cols.subjects = [s.event.type for s in events], [s.event.subject for s in events]
    cols.ms, cols.ingested_ms = _ticks([s.event.time for s in events]), _ticks([s.ingested_at for s in events])
    cols.data = [s.data_json if s.data_json is not None else jsonx.dumps(s.event.data) if s.event.data is not None
                 else "" for s in events]
    cols.errors = [s.validation_error for s in events]
    return cols


class _KeyFilter:
    """A Bloom filter over 64-bit key hashes (4 probes, >= 16 bits per key: about 0.2 % false positives, which the
    ledger look-up then clears). No false negatives, so a key it rules out was never written."""

    def __init__(self, keys: int) -> None:
        import numpy as np

        self.bits = 1 << max(27, (max(keys, 1) * 16 - 1).bit_length())
        self.words = np.zeros(self.bits // 64, dtype=np.uint64)
        self.count = 0

    def _probes(self, hashes: Any) -> Any:
        import numpy as np

        h = np.asarray(hashes, dtype=np.uint64)
        lo, hi = h & np.uint64(0xFFFFFFFF), h >> np.uint64(32)
        return [(lo + np.uint64(i) * hi) & np.uint64(self.bits - 1) for i in range(4)]

    def add(self, hashes: Any) -> None:
        import numpy as np

        for p in self._probes(hashes):
            np.bitwise_or.at(self.words, p >> np.uint64(6), np.uint64(1) << (p & np.uint64(63)))
        self.count += len(hashes)

    def maybe(self, hashes: set[int]) -> set[int]:
        """The hashes that may be in the ledger."""
        import numpy as np

        ordered = list(hashes)
        hit = np.ones(len(ordered), dtype=bool)
        for p in self._probes(ordered):
            hit &= (self.words[p >> np.uint64(6)] >> (p & np.uint64(63))) & np.uint64(1) == np.uint64(1)
        return {h for h, y in zip(ordered, hit.tolist(), strict=True) if y}

    def full(self) -> bool:
        return self.count * 16 > self.bits


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _ticks(times: list[datetime]) -> list[int]:
    """DateTime64(3) values as epoch milliseconds (exact, floored as clickhouse-connect floors them; a naive datetime,
    none of the sink's, read as clickhouse-connect reads it: its .timestamp())."""
    try:
        return [(t - _EPOCH) // _MS for t in times]
    except TypeError:
        return [(t - _EPOCH) // _MS if t.tzinfo is not None else math.floor(t.timestamp()) * 1000 + t.microsecond // 1000
                for t in times]

def _key_hash(key: tuple[str, str]) -> int:
    """The ledger's key: xxh3 of source NUL id, as ClickHouse's xxh3(concat(source, '\\0', id)) computes it (NUL is
    refused in both attributes, so the pair is unambiguous)."""
    return xxhash.xxh3_64_intdigest(key[0].encode() + b"\0" + key[1].encode())


def _key_params(namespace: str, keys: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """(source, id) look-ups as two flat arrays: ClickHouse parses Array(String) parameters several times
    faster than Array(Tuple); pairs that match only crosswise are dropped by the caller."""
    return {"ns": namespace, "sources": sorted({k[0] for k in keys}), "ids": [k[1] for k in keys]}


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def _row_event(r: tuple[Any, ...]) -> CloudEvent:
    return CloudEvent(id=r[1], source=r[0], type=r[2], subject=r[3], time=_utc(r[4]),
                      data=jsonx.loads(r[5]) if r[5] else None)


def connect(dsn: str) -> Any:
    """A clickhouse-connect client: `chdb:///path` for the embedded engine, or an http(s):// URL."""
    import clickhouse_connect

    return clickhouse_connect.get_client(dsn=dsn)
