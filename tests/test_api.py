"""The API over the real chdb store: health, summary, listings, and read-only SQL."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from suanwang.dashboards.api import create_api
from suanwang.store import Store
from tests.samples import sample_record


async def _call(store: Store, method: str, path: str, **kw: Any) -> tuple[int, Any]:
    async with TestClient(TestServer(create_api(store))) as client:
        resp = await client.request(method, path, **kw)
        body = await (resp.json() if resp.content_type == "application/json" else resp.text())
        return resp.status, body


def call(store: Store, method: str, path: str, **kw: Any) -> tuple[int, Any]:
    return asyncio.run(_call(store, method, path, **kw))


def test_health_and_readiness(store: Store) -> None:
    assert call(store, "GET", "/healthz") == (200, {"status": "ok"})
    assert call(store, "GET", "/readyz") == (200, {"status": "ready"})


def test_summary_counts_rows(store: Store) -> None:
    before = call(store, "GET", "/api/summary")[1]["placements"]
    record = sample_record("Placement") | {"event_id": "api-summary", "event_time": 1_795_000_000_000}
    store.insert_records("placements", [record])
    status, body = call(store, "GET", "/api/summary")
    assert status == 200 and body["placements"] == before + 1


def test_placements_listing_and_bad_limit(store: Store) -> None:
    store.insert_records("placements", [sample_record("Placement") | {"event_id": "api-list"}])
    status, rows = call(store, "GET", "/api/placements?limit=5")
    assert status == 200 and 1 <= len(rows) <= 5 and "total_cost" in rows[0]
    status, body = call(store, "GET", "/api/placements?limit=-1")
    assert status == 422 and "limit='-1'" in body["error"]


def test_sql_is_read_only(store: Store) -> None:
    status, body = call(store, "POST", "/api/sql", json={"query": "SELECT 40 + 2 AS answer"})
    assert status == 200 and body == {"columns": ["answer"], "rows": [[42]]}
    for query in (
        "DROP TABLE suanwang.alerts",
        "SELECT 1; DROP TABLE suanwang.alerts",
        "SELECT 1 INTO OUTFILE '/tmp/x'",
    ):
        status, body = call(store, "POST", "/api/sql", json={"query": query})
        assert status == 400 and "only a single read statement" in body["error"], query
    assert call(store, "GET", "/api/alerts?limit=1")[0] == 200  # still there
    assert call(store, "POST", "/api/sql", json={"nope": 1})[0] == 422
    store.insert_records("alerts", [sample_record("Alert")])  # the store still writes afterwards


def test_dashboard_page_is_served(store: Store) -> None:
    status, page = call(store, "GET", "/")
    assert status == 200 and "suanwang" in page and "/api/summary" in page
