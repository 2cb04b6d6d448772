"""The history's DDL: the versioned files, their statements, and their form on a ClickHouse cluster.

With `SUANWANG_CLICKHOUSE_CLUSTER` set, every table `suanwang.X` becomes `suanwang.X_local`, a Replicated
engine on each shard (its replicas kept by ClickHouse Keeper), behind a Distributed table `suanwang.X`
that the services read and write as before. Rows a Replacing or Aggregating table merges share its
sorting key, so they are sharded by a hash of it and meet on one shard; append-only tables are sharded at
random. Materialised views fire on each shard's local tables; views and column changes run everywhere.
"""

from __future__ import annotations

import re
from importlib import resources

DATABASE = "suanwang"

_TABLE = re.compile(
    rf"^CREATE TABLE IF NOT EXISTS {DATABASE}\.(\w+)\s*(\(.*\))\s*ENGINE = (\w+)(?:\(([^)]*)\))?(.*)$", re.S
)
_MV = re.compile(rf"^CREATE MATERIALIZED VIEW IF NOT EXISTS {DATABASE}\.(\w+) TO {DATABASE}\.(\w+) AS\s+(.*)$", re.S)
_VIEW = re.compile(rf"^CREATE VIEW IF NOT EXISTS {DATABASE}\.(\w+) AS\s+(.*)$", re.S)
_ALTER = re.compile(rf"^ALTER TABLE {DATABASE}\.(\w+) (.*)$", re.S)
_DATABASE = f"CREATE DATABASE IF NOT EXISTS {DATABASE}"
_ORDER_BY = re.compile(r"ORDER BY\s+(\([^)]*\)|[\w.]+)")


def ddl_files() -> list[tuple[str, str]]:
    """(version, text) of each schemas/clickhouse/*.sql, in version order."""
    folder = resources.files("suanwang.schemas").joinpath("clickhouse")
    files = sorted((e.name, e.read_text(encoding="utf-8")) for e in folder.iterdir() if e.name.endswith(".sql"))
    return [(name.removesuffix(".sql"), text) for name, text in files]


def _strip_comments(sql: str) -> str:
    return re.sub(r"--[^\n]*", "", sql)


def statements(sql: str) -> list[str]:
    """The statements of a DDL file: comments dropped, split on semicolons that end a line."""
    text = _strip_comments(sql)
    return [s.strip() for s in re.split(r";\s*(?:\n|$)", text) if s.strip()]


def local(table: str) -> str:
    """The name of a table's shard-local part."""
    return f"{table}_local"


def render(statement: str, cluster: str | None) -> list[str]:
    """The statements a cluster runs for one statement of the single-server DDL (no cluster: itself)."""
    if cluster is None:
        return [statement]
    on = f"ON CLUSTER '{cluster}'"
    if statement == _DATABASE:
        return [f"{_DATABASE} {on}"]
    if m := _TABLE.match(statement):
        table, columns, engine, args, rest = m.groups()
        path = f"'/clickhouse/tables/{{shard}}/{DATABASE}/{local(table)}', '{{replica}}'"
        replicated = f"Replicated{engine}({path}{', ' + args if args else ''})"
        order = _ORDER_BY.search(rest)
        merged = engine != "MergeTree" and order is not None  # rows merged by the sorting key: one shard each
        shard_by = f"cityHash64({order.group(1).strip('()')})" if merged else "rand()"
        return [
            f"CREATE TABLE IF NOT EXISTS {DATABASE}.{local(table)} {on}\n{columns}\nENGINE = {replicated}{rest}",
            f"CREATE TABLE IF NOT EXISTS {DATABASE}.{table} {on} AS {DATABASE}.{local(table)}\n"
            f"ENGINE = Distributed('{cluster}', {DATABASE}, {local(table)}, {shard_by})",
        ]
    if m := _MV.match(statement):
        view, target, select = m.groups()
        select = re.sub(rf"\bFROM {DATABASE}\.(\w+)", lambda s: f"FROM {DATABASE}.{local(s.group(1))}", select)
        return [
            f"CREATE MATERIALIZED VIEW IF NOT EXISTS {DATABASE}.{view} {on} TO {DATABASE}.{local(target)} AS\n{select}"
        ]
    if m := _VIEW.match(statement):
        view, select = m.groups()
        return [f"CREATE VIEW IF NOT EXISTS {DATABASE}.{view} {on} AS\n{select}"]
    if m := _ALTER.match(statement):
        table, change = m.groups()
        return [f"ALTER TABLE {DATABASE}.{name} {on} {change}" for name in (local(table), table)]
    raise ValueError(f"no cluster form for the statement: {statement[:80]!r}")
