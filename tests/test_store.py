"""ClickHouse DDL applies idempotently, and every table takes its topic's records as they are."""

from __future__ import annotations

import time

import pytest

from suanwang.schemas.codec import Codec, schema_sources
from suanwang.schemas.topics import ALL_TOPICS, TELEMETRY_FRAME
from suanwang.store import DATABASE, Store, ddl_files, statements
from tests.samples import sample_record

TABLE_TOPICS = [t for t in ALL_TOPICS if t.table and t is not TELEMETRY_FRAME]  # a frame's rows are its samples


def test_ddl_applies_twice(store: Store) -> None:
    assert store.migrate() == [v for v, _ in ddl_files()]
    assert store.migrate() == [v for v, _ in ddl_files()]
    _, rows = store.query(f"SELECT name FROM system.tables WHERE database = '{DATABASE}'")
    tables = {r[0] for r in rows}
    required = {
        "telemetry",
        "rollups",
        "placements",
        "rejections",
        "alerts",
        "task_events",
        "nodes",
        "hub_latency",
        "grid_signals",
    }
    assert required <= tables


def test_statements_split_and_drop_comments() -> None:
    parts = statements("-- a comment; with a semicolon\nCREATE X;\n\nCREATE Y (a String);\n")
    assert parts == ["CREATE X", "CREATE Y (a String)"]


@pytest.mark.parametrize("spec", TABLE_TOPICS, ids=lambda s: s.table)
def test_table_columns_are_exactly_the_schema_fields(store: Store, spec) -> None:
    fields = [f["name"] for f in schema_sources()[spec.schema]["fields"]]
    assert store.columns(spec.table) == fields


@pytest.mark.parametrize("spec", TABLE_TOPICS, ids=lambda s: s.table)
def test_decoded_records_insert_and_read_back(store: Store, spec) -> None:
    codec = Codec()
    record = sample_record(spec.schema)
    record["event_id"] = f"roundtrip-{spec.table}"
    _, decoded = codec.decode(codec.encode(spec.schema, record))
    assert store.insert_records(spec.table, [decoded]) == 1
    _, rows = store.query(
        f"SELECT count() FROM {DATABASE}.{spec.table} WHERE event_id = %(id)s", {"id": record["event_id"]}
    )
    assert rows[0][0] >= 1


def test_one_batch_may_span_more_days_than_the_partition_limit(store: Store) -> None:
    """A backfill or a clock gone wrong spreads one batch over many daily partitions; it is stored whole."""
    day_ms = 86_400_000
    first = int(time.time() * 1000) - 150 * day_ms  # inside the table's 180-day TTL
    records = []
    for k in range(150):
        record = sample_record("NodeTelemetry")
        record.update(event_id=f"spread-{k}", event_time=first + k * day_ms)
        records.append(record)
    assert store.insert_records("telemetry", records) == 150
    _, rows = store.query(
        f"SELECT uniqExact(toDate(event_time)) FROM {DATABASE}.telemetry WHERE event_id LIKE 'spread-%'"
    )
    assert rows[0][0] == 150
