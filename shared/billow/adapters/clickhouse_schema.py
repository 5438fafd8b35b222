"""ClickHouse schema, shared by the server (clickhouse-connect over HTTP) and chdb. Versioned migrations:
each runs once, recorded in `billow_migrations`; every statement is also idempotent on its own."""

from __future__ import annotations

# The dedup ledger's state-1 rows: a raw event is stored (migrations 2 and 7 make it).
EVENT_KEYS_VIEW = """CREATE MATERIALIZED VIEW IF NOT EXISTS event_keys_mv TO event_keys AS
        SELECT namespace, xxh3(concat(source, '\\0', id)) AS key_hash, source, id, toUInt8(1) AS state FROM events"""

MIGRATIONS: list[tuple[int, str, list[str]]] = [
    (1, "events, meter values and the one-minute rollup", [
        # Raw events: the dedup ledger, keyed by (namespace, source, id).
        """CREATE TABLE IF NOT EXISTS events (
            namespace LowCardinality(String),
            source String,
            id String,
            type LowCardinality(String),
            subject String,
            time DateTime64(3, 'UTC'),
            data String,
            ingested_at DateTime64(3, 'UTC'),
            stored_at DateTime64(3, 'UTC') DEFAULT now64(3),
            validation_error String DEFAULT ''
        ) ENGINE = ReplacingMergeTree ORDER BY (namespace, source, id)""",
        # One row per (event, meter it matches): exact Decimal(38, 18) values, group-by values as a map.
        """CREATE TABLE IF NOT EXISTS meter_values (
            namespace LowCardinality(String),
            meter_id LowCardinality(String),
            subject String,
            time DateTime64(3, 'UTC'),
            value Decimal128(18),
            value_str String,
            group_by Map(String, String),
            source String,
            id String,
            INDEX idx_event_id id TYPE bloom_filter GRANULARITY 4
        ) ENGINE = MergeTree ORDER BY (namespace, meter_id, time)""",
        # Pre-aggregation per minute. Sums widen to Decimal256 so that no sum near the Decimal128 limit
        # overflows (ClickHouse does not trap Decimal overflow in sum()).
        """CREATE TABLE IF NOT EXISTS meter_rollup_1m (
            namespace LowCardinality(String),
            meter_id LowCardinality(String),
            minute DateTime('UTC'),
            subject String,
            group_by Map(String, String),
            sum_value SimpleAggregateFunction(sum, Decimal256(18)),
            cnt SimpleAggregateFunction(sum, UInt64),
            min_value SimpleAggregateFunction(min, Decimal128(18)),
            max_value SimpleAggregateFunction(max, Decimal128(18)),
            uniq_state AggregateFunction(uniqExact, String),
            latest_state AggregateFunction(argMax, Decimal128(18), DateTime64(3, 'UTC'))
        ) ENGINE = AggregatingMergeTree ORDER BY (namespace, meter_id, minute, subject, group_by)""",
        """CREATE MATERIALIZED VIEW IF NOT EXISTS meter_rollup_1m_mv TO meter_rollup_1m AS
        SELECT namespace, meter_id, toDateTime(toStartOfMinute(time), 'UTC') AS minute, subject, group_by,
            sum(toDecimal256(value, 18)) AS sum_value, count() AS cnt, min(value) AS min_value,
            max(value) AS max_value, uniqExactState(value_str) AS uniq_state,
            argMaxState(value, time) AS latest_state
        FROM meter_values GROUP BY namespace, meter_id, minute, subject, group_by""",
        # The same per UTC hour: long ranges read 60 times fewer rows.
        """CREATE TABLE IF NOT EXISTS meter_rollup_1h AS meter_rollup_1m""",
        """CREATE MATERIALIZED VIEW IF NOT EXISTS meter_rollup_1h_mv TO meter_rollup_1h AS
        SELECT namespace, meter_id, toDateTime(toStartOfHour(time), 'UTC') AS minute, subject, group_by,
            sum(toDecimal256(value, 18)) AS sum_value, count() AS cnt, min(value) AS min_value,
            max(value) AS max_value, uniqExactState(value_str) AS uniq_state,
            argMaxState(value, time) AS latest_state
        FROM meter_values GROUP BY namespace, meter_id, minute, subject, group_by""",
    ]),
    (2, "event_keys: the dedup ledger ordered by key hash for point look-ups", [
        # One narrow row per (event key, state): 0 = a write of the event began (before its values), 1 = its raw
        # event is stored (written by the view below, after the events part). Ordered by xxh3(source NUL id),
        # small granules: looking up a batch reads about `index_granularity` rows per key, whatever the store's
        # size (64 here; migration 7 makes it 256). Hashes only pick candidates; source and id are compared exactly.
        """CREATE TABLE IF NOT EXISTS event_keys (
            namespace LowCardinality(String),
            key_hash UInt64,
            source String,
            id String,
            state UInt8
        ) ENGINE = ReplacingMergeTree PRIMARY KEY (namespace, key_hash)
        ORDER BY (namespace, key_hash, source, id, state) SETTINGS index_granularity = 64""",
        EVENT_KEYS_VIEW,
        # What was stored before this version: raw events (state 1), and values (state 0: a write that died
        # between its values and its raw event left values only). Re-running only adds rows the engine collapses.
        "INSERT INTO event_keys SELECT namespace, xxh3(concat(source, '\\0', id)), source, id, 1 FROM events",
        "INSERT INTO event_keys SELECT namespace, xxh3(concat(source, '\\0', id)), source, id, 0 FROM meter_values",
    ]),
]


# Migration 3 (issue 17 item 3): rollups whose reads do not grow with the number of subjects. Per meter without
# subject, per minute and per hour (a query that neither filters nor groups by subject reads one row per cell and
# group-by value, however many subjects there are), and per hour subject-first (one subject's usage, e.g. an
# entitlement check, is one contiguous range of the index). Each is filled by its own view on meter_values, as
# the first two are, and re-derived by ClickHouseUsageStore._rebuild (clickhouse._ROLLUPS lists them all).
# The backfill reads the existing rollups, not meter_values: the same aggregates, streamed (subject-first) or
# grouped into few cells (per meter), where a GROUP BY over meter_values would hold one uniqExact set per
# (subject, hour, group) in memory. Each backfill first empties its table, so a run cut short and re-run
# (its version not recorded yet) counts nothing twice. Exact while nothing writes meanwhile, as `billow serve`
# and `billow migrate` ensure; on a server, run it before sinks write (a values insert landing between a view's
# creation and its backfill would count twice in that table).
_STATES = ("sum_value SimpleAggregateFunction(sum, Decimal256(18)), cnt SimpleAggregateFunction(sum, UInt64), "
           "min_value SimpleAggregateFunction(min, Decimal128(18)), max_value SimpleAggregateFunction(max, Decimal128(18)), "
           "uniq_state AggregateFunction(uniqExact, String), "
           "latest_state AggregateFunction(argMax, Decimal128(18), DateTime64(3, 'UTC'))")
# The views and the backfill write every state but `latest_state`: no read has used it since migration 4 (LATEST is
# filled per meter from the values, LATEST_BACKFILL), and migration 8 drops it, so a re-run of this migration after
# that one (its record lost) must not name it (the engine checks a view's columns against its table even when the
# view exists).
_FROM_VALUES = ("sum(toDecimal256(value, 18)) AS sum_value, count() AS cnt, min(value) AS min_value, "
                "max(value) AS max_value, uniqExactState(value_str) AS uniq_state")
_FROM_ROLLUP = ("sum(sum_value) AS sum_value, sum(cnt) AS cnt, min(min_value) AS min_value, max(max_value) AS max_value, "
                "uniqExactMergeState(uniq_state) AS uniq_state")
_STATE_NAMES = "sum_value, cnt, min_value, max_value, uniq_state"
# (table, start of its cells, key columns after the cell, primary key after (namespace, meter_id), source rollup)
ROLLUPS_V3 = (
    ("meter_rollup_1m_all", "toStartOfMinute", "group_by", "minute, group_by", "meter_rollup_1m"),
    ("meter_rollup_1h_all", "toStartOfHour", "group_by", "minute, group_by", "meter_rollup_1h"),
    ("meter_rollup_1h_by_subject", "toStartOfHour", "subject, group_by", "subject, minute, group_by", "meter_rollup_1h"),
)


def _v3_statements() -> list[str]:
    out = []
    for table, start_of, keys, order, _ in ROLLUPS_V3:
        key_cols = ", ".join(f"{k} {'String' if k == 'subject' else 'Map(String, String)'}" for k in keys.split(", "))
        out += [
            f"CREATE TABLE IF NOT EXISTS {table} (namespace LowCardinality(String), meter_id LowCardinality(String), "
            f"minute DateTime('UTC'), {key_cols}, {_STATES}) ENGINE = AggregatingMergeTree "
            f"ORDER BY (namespace, meter_id, {order})",
            f"CREATE MATERIALIZED VIEW IF NOT EXISTS {table}_mv TO {table} AS SELECT namespace, meter_id, "  # noqa: S608
            f"toDateTime({start_of}(time), 'UTC') AS minute, {keys}, {_FROM_VALUES} FROM meter_values "
            f"GROUP BY namespace, meter_id, minute, {keys}",
        ]
    for table, _, keys, _, source in ROLLUPS_V3:
        # (identifiers only, from ROLLUPS_V3)
        select = (f"SELECT namespace, meter_id, minute, {keys}, {_STATE_NAMES} FROM {source}"  # noqa: S608
                  if "subject" in keys else
                  f"SELECT namespace, meter_id, minute, {keys}, {_FROM_ROLLUP} FROM {source} "  # noqa: S608
                  f"GROUP BY namespace, meter_id, minute, {keys}")
        out += [f"TRUNCATE TABLE IF EXISTS {table}",
                f"INSERT INTO {table} (namespace, meter_id, minute, {keys}, {_STATE_NAMES}) {select}"]
    return out


MIGRATIONS.append((3, "rollups flat in subject count: per meter without subject (minute, hour), subject-first (hour)",
                   _v3_statements()))


# Migration 4: a deterministic LATEST. argMaxState(value, time) keeps, of two values at one instant, whichever the
# engine met first, and which that is depends on the parts a read merges and on the tier it reads (raw values,
# minute or hour rollups): two readings of a gauge at one millisecond answered one or the other by range. The new
# state orders by (time, value): at one instant the largest value is the latest, wherever it is read. Each rollup
# gains `latest_pair` (the old `latest_state` stays, no longer written or read); its view is changed in place (MODIFY
# QUERY: no insert falls between two views). Cells stored before gain the new state per meter, when a LATEST query
# first reads the meter (LATEST_BACKFILL, recorded in `latest_backfills`): only LATEST meters read the state, and
# the store does not know which meters those are. A migration that filled every cell of every meter took 139 s and
# 7.5 GB of memory for 10 M stored values. (Migration 5 replaces this state by `latest_key`, filled the same way.)
LATEST_STATE = "argMaxState(value, (time, value))"
_PAIR_TYPE = "AggregateFunction(argMax, Decimal128(18), Tuple(DateTime64(3, 'UTC'), Decimal128(18)))"
# Every rollup: (table, start of its cells, key columns after the cell), in the order the views were created.
ROLLUPS = (("meter_rollup_1m", "toStartOfMinute", "subject, group_by"),
           ("meter_rollup_1h", "toStartOfHour", "subject, group_by"),
           *((table, start_of, keys) for table, start_of, keys, _, _ in ROLLUPS_V3))


def _cell(start_of: str, keys: str) -> str:
    return f"namespace, meter_id, toDateTime({start_of}(time), 'UTC') AS minute, {keys}"


def _latest_column(column: str, type_: str, state: str) -> list[str]:
    """Every rollup gains `column` and its view is changed in place to write it, as `state`, instead of the LATEST
    state it wrote before (migrations 4 and 5)."""
    out = []
    for table, start_of, keys in ROLLUPS:  # (identifiers only, from ROLLUPS and this module)
        out += [f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {type_}",
                f"ALTER TABLE {table}_mv MODIFY QUERY " + _view_select(start_of, keys, f"{state} AS {column}")]
    return out


def _view_select(start_of: str, keys: str, latest: str) -> str:
    """A rollup view's query: its cells of the inserted values, with `latest` (and any columns after it)."""
    return (f"SELECT {_cell(start_of, keys)}, sum(toDecimal256(value, 18)) AS sum_value, count() AS cnt, "  # noqa: S608
            "min(value) AS min_value, max(value) AS max_value, uniqExactState(value_str) AS uniq_state, "
            f"{latest} FROM meter_values GROUP BY namespace, meter_id, minute, {keys}")


def _v4_statements() -> list[str]:
    out = _latest_column("latest_pair", _PAIR_TYPE, LATEST_STATE)
    out.append("CREATE TABLE IF NOT EXISTS latest_backfills (namespace LowCardinality(String), meter_id String, "
               "done_at DateTime64(3, 'UTC')) ENGINE = ReplacingMergeTree ORDER BY (namespace, meter_id)")
    # A store holding no values once every view writes the state (one made at this version) has nothing to fill:
    # ('', '') in latest_backfills stands for every meter. One that holds values fills per meter.
    out.append("INSERT INTO latest_backfills SELECT '', '', now64(3) WHERE (SELECT count() FROM meter_values) = 0")
    return out


MIGRATIONS.append((4, "LATEST: of values at one instant the largest, whichever tier reads it (argMax by (time, value))",
                   _v4_statements()))


# Migration 5 (issue 17): LATEST as one number. argMaxState(value, (time, value)) keeps its tuple as a generic value:
# computing it was about half of what the five views cost per inserted row (2026-12-07, 10,000-value inserts, merges
# stopped, medians of 3: views 11.0 us a row, 6.3 without that state). LATEST is the second part of the largest
# (time, value) pair, and that pair fits one Int256 ordered the same way: `latest_key` = (epoch ms + 10^13) * 10^39 +
# (value's Decimal128 integer + 10^38); the value's part lies in (0, 2 * 10^38), below 10^39, so keys compare as
# their pairs do (time first, then value), and with times from 1900 on every key is positive: the column's default
# 0 is below every key (a row without one adds nothing to the max). max() of a fixed-size number costs the views
# next to nothing. Each rollup gains `latest_key` (SimpleAggregateFunction(max, Int256)); its view is changed in
# place (MODIFY QUERY) to write it instead of `latest_pair`, which stays, no longer written or read. Cells stored
# before gain the key per meter, when a LATEST query (or `billow serve` at start, or `billow migrate`) first reads
# the meter (LATEST_BACKFILL): `latest_backfills`, whose records said a meter's cells had the old state, is emptied
# and records the new fills; a store holding no values now records ('', '') at once.
_P39, _P38 = "toInt256('1" + "0" * 39 + "')", "toInt256('1" + "0" * 38 + "')"
LATEST_KEY = (f"max(toInt256(toUnixTimestamp64Milli(time) + 10000000000000) * {_P39} + "
              f"toInt256(reinterpretAsInt128(value)) + {_P38})")


def latest_value(key: str) -> str:
    """The LATEST value's exact text of a `latest_key` expression (the key's value part, as the Decimal128(18) it
    came from)."""
    return f"toString(reinterpret(toInt128({key} % {_P39} - {_P38}), 'Decimal128(18)'))"


def _v5_statements() -> list[str]:
    out = _latest_column("latest_key", "SimpleAggregateFunction(max, Int256)", LATEST_KEY)
    out.append("TRUNCATE TABLE latest_backfills")
    out.append("INSERT INTO latest_backfills SELECT '', '', now64(3) WHERE (SELECT count() FROM meter_values) = 0")
    return out


MIGRATIONS.append((5, "LATEST as one Int256 key per cell (max), not an argMax state: a fifth of the views' cost",
                   _v5_statements()))

# One meter's cells, given `latest_key` (params: ns, mid), in ROLLUPS' order. Each rollup from the meter's stored
# values, or, but the finest, from a finer rollup (_FINER) once that one is filled: its cells all carry the state by
# then (those stored before migration 5 from this fill, the others from the views since, as migration 5 changed every
# view to write it). Of (time, value) pairs the largest over a union is the largest of the parts' largest, so the
# max of the finer cells' keys is the coarser cell's key, as the min and max of the finer mins and maxes are its
# min and max. ClickHouseUsageStore.fill_latest reads whichever holds fewer rows of the meter (a rollup holds one row
# per cell written and one per cell filled; with one value a cell, twice the values).
# Each statement writes sum 0, count 0 and empty uniq states (they add nothing), a cell's own min and max and its
# key (the same again: unchanged), so it is exact whether or not the views already wrote some of those
# cells, beside concurrent writes (a value the views wrote to the finer rollup and not yet to the coarser one is
# counted there by its own view), and when run twice. The GROUP BYs spill to disk past 1 GB. Their rows have
# distinct keys: an insert does not merge them first (optimize_on_insert = 0: a third less CPU with one value a cell).
_FINER = {"meter_rollup_1h": "meter_rollup_1m", "meter_rollup_1m_all": "meter_rollup_1m",  # table: filled from
          "meter_rollup_1h_all": "meter_rollup_1m_all", "meter_rollup_1h_by_subject": "meter_rollup_1h"}
_FILL_WHERE = "WHERE namespace = {ns:String} AND meter_id = {mid:String} "
_FILL_SETTINGS = " SETTINGS max_bytes_before_external_group_by = 1000000000, optimize_on_insert = 0"


def _fill(table: str, start_of: str, keys: str) -> tuple[str, str | None, str | None]:
    """(the statement from the stored values, the finer rollup, the statement from it)."""
    into = f"INSERT INTO {table} (namespace, meter_id, minute, {keys}, min_value, max_value, latest_key) "
    from_values = (into + f"SELECT {_cell(start_of, keys)}, min(value), max(value), {LATEST_KEY} "  # noqa: S608
                   "FROM meter_values " + _FILL_WHERE + f"GROUP BY namespace, meter_id, minute, {keys}" + _FILL_SETTINGS)
    finer = _FINER.get(table)
    if finer is None:
        return from_values, None, None
    return from_values, finer, (
        into + f"SELECT namespace, meter_id, toDateTime({start_of}(minute), 'UTC') AS cell, {keys}, "  # noqa: S608
        f"min(min_value), max(max_value), max(latest_key) FROM {finer} " + _FILL_WHERE
        + f"GROUP BY namespace, meter_id, cell, {keys}" + _FILL_SETTINGS)


# Each finer rollup comes before those filled from it.
LATEST_BACKFILL = [_fill(table, start_of, keys) for table, start_of, keys in ROLLUPS]


# Migration 6 (issue 17 item 5): each subject-first hourly cell knows the first and last instant it holds. An
# entitlement check ends now, mid-hour, and its bounds (a grant's start, a reset) may cut an hour; before, every such
# hour was read from the minute rollup (ordered by time first) and the raw values, a second and third table in the
# check's statement, and chdb charges a table read 1-3 ms whatever its rows (figures: bounded_usage). A cell whose
# values all lie on one side of each bound inside it (the usual case: nothing stored after now) is counted whole from
# the hourly read alone (ClickHouseUsageStore.bounded_usage). `first_ms` and `last_ms` are epoch milliseconds; their defaults are the
# extremes of Int64, so a cell holding any row written without them (before this migration, or by a statement that
# does not write them) has first = the smallest and last = the largest instant: it straddles every bound and is read
# in minutes and raw values as before. Nothing to fill.
FIRST_LAST_BY_SUBJECT = ("min(toUnixTimestamp64Milli(time)) AS first_ms, max(toUnixTimestamp64Milli(time)) AS last_ms")


def _v6_statements() -> list[str]:
    table, start_of, keys = ROLLUPS[4]
    assert table == "meter_rollup_1h_by_subject"
    return [
        f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS first_ms SimpleAggregateFunction(min, Int64) "
        "DEFAULT -9223372036854775808",
        f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS last_ms SimpleAggregateFunction(max, Int64) "
        "DEFAULT 9223372036854775807",
        f"ALTER TABLE {table}_mv MODIFY QUERY "
        + _view_select(start_of, keys, f"{LATEST_KEY} AS latest_key, {FIRST_LAST_BY_SUBJECT}"),
    ]


MIGRATIONS.append((6, "the first and last instant of each subject-first hourly cell (a check reads one table)",
                   _v6_statements()))


# Migration 7 (issue 17): the dedup ledger in 256-row granules, not 64. Its rows are ordered by a random hash, so
# every merge rewrites them all, and with 64-row granules the merges of `event_keys` were half of what the engine's
# background merges cost per ingested event (2026-12-07, 10,000-event batches, each table merged alone: event_keys
# 6.7 us an event of 13.7; 400,000 rows merged: 1.31-1.42 CPU s at 64, 0.59-0.71 at 256, 0.28-0.55 at 1,024).
# A look-up reads about a granule per key; at 5 M rows, 100 / 1,000 / 10,000 keys took 30 / 107 / 454 ms at 64 and
# 23 / 134 / 415 ms at 256 (1,024: 61 / 231 / 361), and embedded most keys never reach it (the Bloom filter).
# index_granularity cannot be altered: a table of the new layout is filled from the old one and they are exchanged.
# event_keys_mv is made again after the exchange (whether a view's target follows the name or the table, it then
# writes to the new table); events stored while it is missing (a ClickHouse server whose sinks write meanwhile) keep
# their state-0 rows, and written_keys confirms those in the events table. Rows written to the old table between
# the copy and the exchange are copied again after it: the ledger is a ReplacingMergeTree whose sorting key is the
# whole row, so a row copied twice is one row. Re-run after a crash, the first three statements copy back whatever
# the old table (if it was exchanged already) holds before the copy is made again; every step is safe to repeat.
# EXCHANGE needs an Atomic database (ClickHouse's default; chdb's Overlay has it); on another the migration fails.
_KEYS_COLUMNS = "namespace, key_hash, source, id, state"
_KEYS_256 = ("CREATE TABLE IF NOT EXISTS event_keys_v7 (namespace LowCardinality(String), key_hash UInt64, source String, "
             "id String, state UInt8) ENGINE = ReplacingMergeTree PRIMARY KEY (namespace, key_hash) "
             "ORDER BY (namespace, key_hash, source, id, state) SETTINGS index_granularity = 256")
_COPY_BACK = f"INSERT INTO event_keys ({_KEYS_COLUMNS}) SELECT {_KEYS_COLUMNS} FROM event_keys_v7"  # noqa: S608
MIGRATIONS.append((7, "the dedup ledger in 256-row granules: its merges cost half", [
    _KEYS_256,
    _COPY_BACK,
    "DROP TABLE IF EXISTS event_keys_v7",
    _KEYS_256,
    f"INSERT INTO event_keys_v7 ({_KEYS_COLUMNS}) SELECT {_KEYS_COLUMNS} FROM event_keys",  # noqa: S608
    "DROP VIEW IF EXISTS event_keys_mv",
    "EXCHANGE TABLES event_keys AND event_keys_v7",
    EVENT_KEYS_VIEW,
    _COPY_BACK,
    "DROP TABLE event_keys_v7",
]))


# Migration 8 (issue 17): the rollups drop the LATEST states no view has written or read since migration 5
# (`latest_state`, migration 1's, and `latest_pair`, migration 4's). A row without them still carried both as empty
# aggregate states, made, written and merged again at every merge: merging 40 parts of 5,000 rows into one in each of
# the five rollups cost 12.1 us of CPU an event with them and 7.6 without (2026-12-08, chdb, 2 cores, alternated,
# three runs each: 12.9 / 12.1 / 11.9 against 8.2 / 6.1 / 8.3). Nothing else changes: every other column and every
# view stays as it is. Dropping a column already gone is a no-op, so a run cut short and re-run is safe.
DEAD_ROLLUP_COLUMNS = ("latest_state", "latest_pair")
MIGRATIONS.append((8, "the rollups without the LATEST states no view writes since migration 5", [
    f"ALTER TABLE {table} DROP COLUMN IF EXISTS {column}" for table, _, _ in ROLLUPS for column in DEAD_ROLLUP_COLUMNS]))
