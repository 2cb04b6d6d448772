"""Analysts' SQL is locked down by ClickHouse's own parser and per-query limits, and runs beside the sink."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from suanwang.analyst import Node, Refused, check_tree, parse_ast
from suanwang.api.server import create_api
from suanwang.settings import Settings
from suanwang.store import Store
from tests.samples import sample_record


async def _ask(store: Store, settings: Settings, *queries: str) -> list[tuple[int, dict[str, Any], dict[str, str]]]:
    """Each query posted to /api/sql at the same time; (status, body, headers) of each."""
    async with TestClient(TestServer(create_api(store, settings))) as client:

        async def one(query: str) -> tuple[int, dict[str, Any], dict[str, str]]:
            resp = await client.post("/api/sql", json={"query": query})
            return resp.status, await resp.json(), dict(resp.headers)

        return list(await asyncio.gather(*(one(q) for q in queries)))


def ask(store: Store, query: str, **limits: Any) -> tuple[int, dict[str, Any]]:
    status, body, _ = asyncio.run(_ask(store, store.settings.model_copy(update=limits), query))[0]
    return status, body


@pytest.mark.parametrize(
    ("query", "status", "why"),
    [
        ("SELECT * FROM file('/etc/passwd', 'LineAsString') LIMIT 3", 403, "table functions are not allowed (file)"),
        ("SELECT file('/etc/passwd')", 403, "the function file reads outside"),
        ("SELECT * FROM url('http://127.0.0.1:9/x', CSV)", 403, "table functions are not allowed (url)"),
        ("SELECT * FROM s3('http://127.0.0.1:9/b/k', CSV)", 403, "table functions are not allowed (s3)"),
        ("SELECT * FROM remote('127.0.0.1', system.one)", 403, "table functions are not allowed (remote)"),
        ("SELECT * FROM numbers(10)", 403, "table functions are not allowed (numbers)"),
        ("SELECT * FROM system.users", 403, "system.users is outside the suanwang database"),
        ("SELECT 1 WHERE 1 IN system.processes", 403, "system.processes is outside"),
        ("SELECT * FROM (SELECT * FROM INFORMATION_SCHEMA.tables)", 403, "INFORMATION_SCHEMA.tables is outside"),
        ("SELECT dictGet('d', 'v', 1)", 403, "the function dictGet reads outside"),
        ("SELECT 1 INTO OUTFILE '/tmp/suanwang-outfile'", 403, "INTO OUTFILE, FORMAT and SETTINGS are not allowed"),
        ("SELECT 1 FORMAT JSON", 403, "INTO OUTFILE, FORMAT and SETTINGS are not allowed"),
        ("SELECT 1 SETTINGS max_execution_time = 3600", 403, "may not choose its own SETTINGS"),
        ("SELECT 1 SETTINGS readonly = 0", 403, "may not choose its own SETTINGS"),
        ("DROP TABLE suanwang.alerts", 422, "only a single SELECT"),
        ("SHOW TABLES", 422, "only a single SELECT"),
        ("SELECT 1; DROP TABLE suanwang.alerts", 422, "Multi-statements are not allowed"),
        ("SELECT 1 /* open", 422, "does not parse"),
    ],
)
def test_a_query_reaching_outside_the_database_is_refused_naming_why(
    store: Store, query: str, status: int, why: str
) -> None:
    got, body = ask(store, query)
    assert (got, why in body["error"]) == (status, True), body
    assert not Path("/tmp/suanwang-outfile").exists()


def test_selects_over_the_database_and_the_safe_system_tables_run(store: Store) -> None:
    store.insert_records("alerts", [sample_record("Alert") | {"event_id": "analyst-ok"}])
    assert ask(store, "SELECT 40 + 2 AS answer") == (200, {"columns": ["answer"], "rows": [[42]]})
    status, body = ask(
        store, "WITH a AS (SELECT event_id FROM alerts) SELECT count() FROM a WHERE event_id = 'analyst-ok'"
    )
    assert (status, body["rows"]) == (200, [[1]])
    status, body = ask(store, "SELECT name FROM system.tables WHERE database = 'suanwang' AND name = 'alerts'")
    assert (status, body["rows"]) == (200, [["alerts"]])
    status, body = ask(store, "SELECT count() FROM suanwang.alerts -- a trailing comment, SETTINGS readonly = 0")
    assert status == 200 and body["rows"][0][0] >= 1


@pytest.mark.parametrize(
    ("query", "limits", "named"),
    [
        ("SELECT sleepEachRow(0.3) FROM system.numbers LIMIT 8", {"analyst_max_seconds": 1}, "max_execution_time"),
        ("SELECT count() FROM system.numbers", {}, "max_rows_to_read = 200000000"),
        ("SELECT number FROM system.numbers LIMIT 200", {"analyst_max_result_rows": 100}, "max_result_rows = 100"),
        (
            "SELECT groupArray(number) FROM (SELECT number FROM system.numbers LIMIT 50000000)",
            {"analyst_max_memory_bytes": 50_000_000},
            "max_memory_usage = 50000000",
        ),
    ],
)
def test_a_query_cut_by_a_limit_gets_422_naming_the_limit(
    store: Store, query: str, limits: dict[str, Any], named: str
) -> None:
    status, body = ask(store, query, **limits)
    assert status == 422 and named in body["error"] and "SUANWANG_ANALYST_" in body["error"], body
    assert ask(store, "SELECT 1 AS after")[1]["rows"] == [[1]]  # the connection is usable afterwards


def test_queries_beyond_the_slots_get_429_with_retry_after(store: Store) -> None:
    slow = "SELECT sleepEachRow(0.25) FROM system.numbers LIMIT 8"  # 2 s each
    settings = store.settings.model_copy(update={"analyst_max_in_flight": 2})
    answers = asyncio.run(_ask(store, settings, slow, slow, slow, slow))
    statuses = sorted(status for status, _, _ in answers)
    assert statuses == [200, 200, 429, 429], answers
    busy = [a for a in answers if a[0] == 429]
    assert all(int(h["Retry-After"]) >= 1 and "retry in" in b["error"] for _, b, h in busy)


def test_the_store_writes_and_reads_while_analysts_run_heavy_queries(store: Store) -> None:
    """The sink's connection never waits behind an analyst's query: it is another connection and thread."""
    settings = store.settings.model_copy(update={"analyst_max_in_flight": 2, "analyst_max_seconds": 30})
    slow = "SELECT sleepEachRow(0.3) FROM system.numbers LIMIT 10"  # 3 s

    async def meanwhile() -> tuple[list[Any], list[float]]:
        analysts = asyncio.create_task(_ask(store, settings, slow, slow))
        await asyncio.sleep(0)
        waits = []
        while not analysts.done():
            start = time.monotonic()
            await store.run(store.insert_records, "alerts", [sample_record("Alert") | {"event_id": "beside"}])
            await store.run(store.query, "SELECT count() FROM suanwang.alerts")
            waits.append(time.monotonic() - start)
            await asyncio.sleep(0.05)
        return await analysts, waits

    answers, waits = asyncio.run(meanwhile())
    assert [a[0] for a in answers] == [200, 200]
    assert len(waits) >= 10, waits  # ten writes and reads finished while the 3-s queries ran: none queued behind


def _nice_of_threads() -> set[int]:
    """The nice value of every thread of this process (field 19 of /proc's stat)."""
    tasks = Path("/proc/self/task")
    return {int((t / "stat").read_text().rsplit(")", 1)[1].split()[16]) for t in tasks.iterdir()}


def test_an_analyst_query_runs_on_threads_of_the_lowest_priority(store: Store) -> None:
    """On a full machine the CPU goes to the sink and the API: ClickHouse runs the query at the analysts' nice."""
    assert 19 not in _nice_of_threads()
    seen: set[int] = set()

    async def meanwhile() -> list[Any]:
        slow = "SELECT sleepEachRow(0.2) FROM system.numbers LIMIT 10"
        analyst = asyncio.create_task(_ask(store, store.settings, slow))
        while not analyst.done() and 19 not in seen:
            seen.update(_nice_of_threads())
            await asyncio.sleep(0.05)
        return await analyst

    (answer,) = asyncio.run(meanwhile())
    assert answer[0] == 200 and 19 in seen, seen
    assert 19 not in _nice_of_threads()  # given back with the thread: the sink's next query runs at full priority


def test_the_tree_check_alone() -> None:
    tree = parse_ast(
        [
            "SelectWithUnionQuery (children 2)",
            " ExpressionList (children 1)",
            "  SelectQuery (children 2)",
            "   ExpressionList (children 1)",
            "    Asterisk",
            "   TablesInSelectQuery (children 1)",
            "    TablesInSelectQueryElement (children 1)",
            "     TableExpression (children 1)",
            "      TableIdentifier other.secrets (alias s)",
            " Identifier Native",
        ]
    )
    assert tree.children[0].children[0].kind == "SelectQuery"
    with pytest.raises(Refused, match="other.secrets is outside"):
        check_tree(tree)
    check_tree(Node("SelectWithUnionQuery", children=[Node("ExpressionList")]))
