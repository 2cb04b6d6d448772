"""ClickHouse history: applies the versioned DDL, inserts contract records, runs analysts' queries."""

from __future__ import annotations

import asyncio
import fcntl
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.exceptions import ClickHouseError

from suanwang.ddl import DATABASE, ddl_files, render, statements
from suanwang.errors import SuanwangError, need_extra
from suanwang.security import clickhouse_tls
from suanwang.settings import Settings

_opened_here: set[Path] = set()  # chdb data paths this process holds
SOURCE_COLUMNS = ("kafka_topic", "kafka_partition", "kafka_offset")


def describe_url(settings: Settings) -> str:
    if settings.clickhouse_url:
        return re.sub(r"//[^@/]*@", "//***@", settings.clickhouse_url)
    return f"chdb://{settings.chdb_path}"


def connect(settings: Settings, analyst: bool = False) -> Any:
    """A clickhouse-connect client for the configured server, or chdb in the data directory. An analyst's
    client is a connection of its own in the suanwang database, as the read-only user where one is set."""
    url = (settings.clickhouse_analyst_url or settings.clickhouse_url) if analyst else settings.clickhouse_url
    database = {"database": DATABASE} if analyst else {}
    if url:
        try:
            return clickhouse_connect.get_client(dsn=url, **database, **clickhouse_tls(settings))
        except Exception as exc:  # OperationalError, DatabaseError, urllib3 errors
            raise SuanwangError(
                f"cannot reach ClickHouse at {describe_url(settings)} ({str(exc).splitlines()[0]}); "
                "check SUANWANG_CLICKHOUSE_URL, or unset it to use the embedded store"
            ) from None
    need_extra("chdb", "embedded", "the embedded ClickHouse", "set SUANWANG_CLICKHOUSE_URL to use a ClickHouse server")
    path = settings.chdb_path
    if path.exists() and not path.is_dir():
        raise SuanwangError(f"{path} is a file, not a ClickHouse data directory; move it aside or choose --data-dir")
    path.mkdir(parents=True, exist_ok=True)
    if _locked_by_another_process(path):
        raise SuanwangError(
            f"the embedded ClickHouse in {path} is in use by another process (a running `suanwang up` "
            "or worker); stop it first, or query a ClickHouse server via SUANWANG_CLICKHOUSE_URL"
        )
    try:
        client = clickhouse_connect.get_client(dsn=f"chdb://{path}", **database)
        _opened_here.add(path)
        return client
    except Exception as exc:
        text = str(exc)
        if "already initialized with path" in text:
            raise SuanwangError(
                f"this process already opened another embedded ClickHouse; cannot open {path}"
            ) from None
        raise SuanwangError(
            f"cannot open the embedded ClickHouse in {path} ({text.splitlines()[0]}); "
            "if the directory is damaged, move it aside and start again"
        ) from None


def _locked_by_another_process(path: Path) -> bool:
    """ClickHouse holds an flock on `status` while it runs; this process's own hold does not count."""
    status = path / "status"
    if not status.exists() or path in _opened_here:
        return False
    with open(status, "rb") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


# A batch may span many months (a backfill, a task that ran for years, a clock gone wrong): ClickHouse then
# warns in its log instead of refusing the whole batch.
SPREAD_INSERT = {"throw_on_max_partitions_per_insert_block": 0}


class Store:
    """One ClickHouse client, used from a single thread so async services never block their loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client = connect(settings)
        self._columns: dict[str, list[str]] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse")

    def migrate(self) -> list[str]:
        """Applies every DDL file (each statement is idempotent) and records its version."""
        applied = []
        cluster = self.settings.clickhouse_cluster
        for version, sql in ddl_files():
            for stmt in (rendered for one in statements(sql) for rendered in render(one, cluster)):
                try:
                    self.client.command(stmt)
                except ClickHouseError as exc:
                    raise SuanwangError(f"DDL {version} failed: {str(exc).splitlines()[0]}") from None
            self.client.insert(f"{DATABASE}.schema_migrations", [[version]], column_names=["version"])
            applied.append(version)
        return applied

    def columns(self, table: str) -> list[str]:
        """Insertable columns of a table, read from ClickHouse: the DDL is their one definition."""
        if table not in self._columns:
            rows = self.client.query(
                "SELECT name FROM system.columns WHERE database = {db:String} AND table = {t:String} "
                "AND default_kind = '' ORDER BY position",
                parameters={"db": DATABASE, "t": table},
            ).result_rows
            if not rows:
                raise SuanwangError(f"table {DATABASE}.{table} does not exist; was the DDL applied?")
            self._columns[table] = [r[0] for r in rows]
        return self._columns[table]

    def insert_records(
        self, table: str, records: list[dict[str, Any]], sources: list[tuple[str, int, int]] | None = None
    ) -> int:
        """Inserts contract records; `sources` gives each one's (topic, partition, offset) when read from Kafka."""
        columns = self.columns(table)
        rows = [[rec.get(c) for c in columns] for rec in records]
        if sources is not None:
            columns = [*columns, *SOURCE_COLUMNS]
            rows = [row + list(source) for row, source in zip(rows, sources, strict=True)]
        if rows:
            self._insert(table, rows, columns)
        return len(rows)

    def insert_columns(self, table: str, columns: dict[str, Sequence[Any]], sources: dict[str, Sequence[Any]]) -> int:
        """Inserts rows given column by column (a batch of telemetry as arrays), with each row's Kafka source
        (`SOURCE_COLUMNS`); a column the table lacks is refused, naming it."""
        known = set(self.columns(table))
        unknown = [name for name in columns if name not in known]
        if unknown:
            raise SuanwangError(f"table {DATABASE}.{table} has no column {unknown[0]!r}")
        data = {**columns, **{name: sources[name] for name in SOURCE_COLUMNS}}
        rows = len(data["kafka_offset"])
        if rows:
            self._insert(table, list(data.values()), list(data), column_oriented=True)
        return rows

    def _insert(self, table: str, data: list[Any], columns: list[str], column_oriented: bool = False) -> None:
        try:
            self.client.insert(
                f"{DATABASE}.{table}", data, column_names=columns, column_oriented=column_oriented,
                settings=SPREAD_INSERT,
            )  # fmt: skip
        except ClickHouseError as exc:
            raise SuanwangError(f"insert into {table} failed: {str(exc).strip().splitlines()[0]}") from None

    def stored_upto(self, table: str, topic: str, partition: int) -> int:
        """The highest offset of a topic partition stored in the table; -1 for none."""
        _, rows = self.query(
            f"SELECT if(count() = 0, -1, max(kafka_offset)) FROM {DATABASE}.{table} "
            "WHERE kafka_topic = {t:String} AND kafka_partition = {p:Int32}",
            {"t": topic, "p": partition},
        )
        return int(rows[0][0])

    def query(self, sql: str, parameters: dict[str, Any] | None = None) -> tuple[list[str], list[tuple[Any, ...]]]:
        try:
            result = self.client.query(sql, parameters=parameters)
        except ClickHouseError as exc:
            raise SuanwangError(f"query failed: {str(exc).strip().splitlines()[0]}") from None
        return list(result.column_names), [tuple(r) for r in result.result_rows]

    async def run(self, fn: Any, *args: Any) -> Any:
        """Runs a blocking store call on the store's own thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self.client.close()
