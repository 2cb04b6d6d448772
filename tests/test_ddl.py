"""The history's DDL on a cluster: rendered from the one DDL, and every statement parsed by ClickHouse."""

from __future__ import annotations

import re

import pytest

from suanwang.ddl import ddl_files, local, render, statements
from suanwang.errors import SuanwangError
from suanwang.store import Store

CLUSTER = "suanwang"


def parsed(store: Store, statement: str) -> str:
    """ClickHouse's own parser's view of a statement (EXPLAIN AST parses, runs nothing), on the session's
    chdb (one data path a process)."""
    return str(store.query(f"EXPLAIN AST {statement}")[1])


def rendered() -> list[str]:
    return [out for _v, sql in ddl_files() for one in statements(sql) for out in render(one, CLUSTER)]


def test_every_cluster_statement_parses_and_runs_on_the_whole_cluster(store: Store) -> None:
    out = rendered()
    assert len(out) > 60
    for statement in out:
        assert f"ON CLUSTER '{CLUSTER}'" in statement, statement[:80]
        assert "CreateQuery" in parsed(store, statement) or "AlterQuery" in parsed(store, statement), statement[:80]
    with pytest.raises(SuanwangError, match="Syntax error"):  # the check can fail
        parsed(store, "CREATE TABLE suanwang.x ON CLUSTER 'c' (a Int32 ENGINE = MergeTree")


def test_each_table_is_replicated_on_the_shards_behind_a_distributed_table_of_its_name() -> None:
    created = re.compile(r"CREATE TABLE IF NOT EXISTS suanwang\.(\w+)")
    tables = {m.group(1) for _v, sql in ddl_files() for m in created.finditer(sql)}
    out = "\n".join(rendered())
    for table in tables:
        part = f"suanwang.{local(table)}"
        path = rf"'/clickhouse/tables/\{{shard\}}/suanwang/{local(table)}', '\{{replica\}}'"
        assert re.search(rf"{part} ON CLUSTER '{CLUSTER}'\s*\(.*?ENGINE = Replicated\w*MergeTree\({path}", out, re.S)
        front = f"suanwang.{table} ON CLUSTER '{CLUSTER}' AS {part}\nENGINE = Distributed('{CLUSTER}', suanwang,"
        assert front in out, table
    # what a Replacing table merges shares its sorting key, so it is sharded by it; appended rows at random
    assert "Distributed('suanwang', suanwang, nodes_local, cityHash64(node_id))" in out
    assert "Distributed('suanwang', suanwang, telemetry_local, rand())" in out
    nodes = "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/suanwang/nodes_local', '{replica}', event_time)"
    assert nodes in out


def test_views_fire_on_the_local_tables_and_columns_change_on_both() -> None:
    out = rendered()
    mv = next(s for s in out if "telemetry_hourly_mv" in s)
    assert "TO suanwang.telemetry_hourly_local AS" in mv and "FROM suanwang.telemetry_local" in mv
    alters = [s for s in out if s.startswith("ALTER TABLE suanwang.placements") and "decided_by" in s]
    assert [a.split()[2] for a in alters] == ["suanwang.placements_local", "suanwang.placements"]
    assert render("CREATE DATABASE IF NOT EXISTS suanwang", None) == ["CREATE DATABASE IF NOT EXISTS suanwang"]
    with pytest.raises(ValueError, match="no cluster form"):
        render("DROP TABLE suanwang.nodes", CLUSTER)
