"""ClickHouse schema, shared by the server (clickhouse-connect over HTTP) and chdb. Versioned migrations:
each runs once, recorded in `billow_migrations`; every statement is also idempotent on its own."""

from __future__ import annotations

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
        # size. Hashes only pick candidates; source and id are compared exactly.
        """CREATE TABLE IF NOT EXISTS event_keys (
            namespace LowCardinality(String),
            key_hash UInt64,
            source String,
            id String,
            state UInt8
        ) ENGINE = ReplacingMergeTree PRIMARY KEY (namespace, key_hash)
        ORDER BY (namespace, key_hash, source, id, state) SETTINGS index_granularity = 64""",
        """CREATE MATERIALIZED VIEW IF NOT EXISTS event_keys_mv TO event_keys AS
        SELECT namespace, xxh3(concat(source, '\\0', id)) AS key_hash, source, id, toUInt8(1) AS state FROM events""",
        # What was stored before this version: raw events (state 1), and values (state 0: a write that died
        # between its values and its raw event left values only). Re-running only adds rows the engine collapses.
        "INSERT INTO event_keys SELECT namespace, xxh3(concat(source, '\\0', id)), source, id, 1 FROM events",
        "INSERT INTO event_keys SELECT namespace, xxh3(concat(source, '\\0', id)), source, id, 0 FROM meter_values",
    ]),
]
