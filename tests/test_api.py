"""The API over the real chdb store: health, summary, listings, and read-only SQL."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import validate

from suanwang.api.server import create_api
from suanwang.bus import contract_consumer, ensure_topics
from suanwang.schemas.codec import Codec
from suanwang.schemas.topics import TASK_REQUEST
from suanwang.settings import Settings
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
    """The cases one by one are in test_analyst.py; here, that nothing a refused query asked for happened."""
    status, body = call(store, "POST", "/api/sql", json={"query": "SELECT 40 + 2 AS answer"})
    assert status == 200 and body == {"columns": ["answer"], "rows": [[42]]}
    for query in ("DROP TABLE suanwang.alerts", "SELECT 1; DROP TABLE suanwang.alerts"):
        status, body = call(store, "POST", "/api/sql", json={"query": query})
        assert status == 422 and ("SELECT" in body["error"] or "statement" in body["error"]), query
    assert call(store, "GET", "/api/alerts?limit=1")[0] == 200  # still there
    assert call(store, "POST", "/api/sql", json={"nope": 1})[0] == 422
    store.insert_records("alerts", [sample_record("Alert")])  # the store still writes afterwards


def test_dashboard_page_is_served(store: Store) -> None:
    status, page = call(store, "GET", "/")
    assert status == 200 and "suanwang" in page and "/vendor/plotly.min.js" in page
    status, script = call(store, "GET", "/static/dashboard.js")
    assert status == 200 and "/api/stream" in script


def _task(**over: Any) -> dict[str, Any]:
    return {
        "tenant": "tenant-07", "industry": "genomics", "kind": "genomics", "origin_hub": "yangtze",
        "origin_province": "Shanghai", "chip_archs": ["x86_64"], "cpu_milli": 4000, "memory_mib": 8192,
        "data_hub": "yangtze", "duration_s": 3600.0, "deadline": "2026-12-01T00:00:00+00:00", **over,
    }  # fmt: skip


async def _with_broker(settings: Settings, store: Store, method: str, path: str, **kw: Any) -> tuple[int, Any]:
    async with TestClient(TestServer(create_api(store, settings))) as client:
        resp = await client.request(method, path, **kw)
        return resp.status, await resp.json()


def test_openapi_document_is_valid_and_takes_its_task_body_from_avro(store: Store) -> None:
    status, doc = call(store, "GET", "/api/openapi.json")
    assert status == 200
    validate(doc)  # raises on an invalid OpenAPI 3 document
    body = doc["components"]["schemas"]["TaskRequest"]
    assert "cpu_milli" in body["properties"] and "event_id" not in body["properties"]
    assert "/api/tasks" in doc["paths"] and "422" in doc["paths"]["/api/tasks"]["post"]["responses"]


def test_a_submitted_task_goes_to_kafka_as_avro(settings: Settings, store: Store) -> None:
    async def scenario() -> tuple[tuple[int, Any], dict[str, Any]]:
        await ensure_topics(settings)
        answer = await _with_broker(settings, store, "POST", "/api/tasks", json=_task(task_id="api-t1"))
        consumer = contract_consumer(settings, [TASK_REQUEST], None)
        await consumer.start()
        try:
            batch = await consumer.getmany(timeout_ms=10_000)
        finally:
            await consumer.stop()
        (message,) = [m for msgs in batch.values() for m in msgs]
        return answer, Codec().decode_as("TaskRequest", message.value)

    (status, body), record = asyncio.run(scenario())
    assert status == 202 and body == {"task_id": "api-t1", "status": "SUBMITTED", "href": "/api/tasks/api-t1"}
    assert record["task_id"] == "api-t1" and record["cpu_milli"] == 4000 and record["latency_tier_ms"] is None
    assert record["deadline"].isoformat() == "2026-12-01T00:00:00+00:00"


def test_task_status_comes_from_the_history(store: Store) -> None:
    store.insert_records("task_requests", [sample_record("TaskRequest") | {"task_id": "api-s1"}])
    assert call(store, "GET", "/api/tasks/api-s1")[1]["status"] == "SUBMITTED"
    store.insert_records("placements", [sample_record("Placement") | {"task_id": "api-s1", "event_id": "api-s1p"}])
    status, body = call(store, "GET", "/api/tasks/api-s1")
    assert status == 200 and body["status"] == "PLACED" and body["placement"]["task_id"] == "api-s1"
    status, body = call(store, "GET", "/api/tasks/nobody")
    assert status == 404 and "no task 'nobody'" in body["error"]


def test_bad_submissions_get_a_4xx_naming_what_is_wrong(settings: Settings, store: Store) -> None:
    def submit(**kw: Any) -> tuple[int, Any]:
        return asyncio.run(_with_broker(settings, store, "POST", "/api/tasks", **kw))

    status, body = submit(data=b"{not json", headers={"Content-Type": "application/json"})
    assert status == 400 and "not JSON" in body["error"]
    status, body = submit(json=_task(cpu_milli="lots", colour="red", tenant=None) | {"kind": 7})
    assert status == 422
    assert set(body["fields"]) == {"cpu_milli", "colour", "tenant", "kind"}
    assert body["fields"]["colour"] == "is not a TaskRequest field" and "'lots'" in body["fields"]["cpu_milli"]
    status, body = submit(json={"tenant": "x"})
    assert status == 422 and body["fields"]["chip_archs"] == "is required"
    status, body = submit(json=_task(priority="urgent", attempt=3))
    assert status == 422 and set(body["fields"]) == {"priority", "attempt"}
    assert "'urgent'" in body["fields"]["priority"]
    assert "one of emergency, production, best_effort" in body["fields"]["priority"]
    assert body["fields"]["attempt"] == "is not a TaskRequest field"  # set by the dispatcher, never by a client
    status, body = submit(json=[1, 2])
    assert status == 422 and "JSON object" in body["fields"]["(body)"]
    status, body = submit(data=b"x" * 100_000, headers={"Content-Type": "application/json"})
    assert status == 413 and "error" in body
    assert call(store, "POST", "/api/tasks", json=_task())[0] == 503  # this API has no broker
    status, body = call(store, "GET", "/api/nothing-here")
    assert status == 404 and body == {"error": "Not Found"}


def test_nodes_hubs_rollups_latency_and_metrics(store: Store) -> None:
    gansu = sample_record("NodeRegistration") | {
        "node_id": "api-n1",
        "hub": "gansu",
        "province": "Gansu",
        "compute_class": "GPU",
    }
    silent = gansu | {"node_id": "api-n2", "event_id": "api-n2"}
    store.insert_records("nodes", [gansu, silent])
    elsewhere = gansu | {"node_id": "api-n3", "event_id": "api-n3", "cluster": "api-dark"}
    store.insert_records("nodes", [elsewhere])
    alert = sample_record("Alert") | {"resolved": False}
    store.insert_records(
        "alerts",
        [
            alert | {"kind": "node_offline", "scope_key": "api-n2"},
            alert | {"kind": "collector_silent", "scope_key": "api-dark"},
        ],
    )
    rollup = sample_record("Rollup") | {"scope_kind": "hub", "scope_key": "gansu", "window_s": 60, "green_share": 0.9}
    store.insert_records("rollups", [rollup])
    probe = sample_record("LatencyRollup") | {
        "scope_kind": "hub_pair",
        "scope_key": "gansu>yangtze",
        "p99_ms": 21.5,
        "tier_ms": 20,
    }
    store.insert_records("latency_rollups", [probe])

    status, rows = call(store, "GET", "/api/nodes?hub=gansu&class=GPU&limit=1000")
    assert status == 200 and {"api-n1", "api-n2"} <= {r["node_id"] for r in rows}
    offline = call(store, "GET", "/api/nodes?health=offline&limit=1000")[1]
    assert "api-n2" in {r["node_id"] for r in offline} and "api-n1" not in {r["node_id"] for r in offline}
    unreported = {r["node_id"]: r for r in call(store, "GET", "/api/nodes?health=unreported&limit=1000")[1]}
    assert set(unreported) == {"api-n3"} and unreported["api-n3"]["unreported"] and not unreported["api-n3"]["offline"]
    healthy = {r["node_id"] for r in call(store, "GET", "/api/nodes?health=healthy&limit=1000")[1]}
    assert "api-n1" in healthy and not healthy & {"api-n2", "api-n3"}
    status, body = call(store, "GET", "/api/nodes?class=TPU")
    assert status == 422 and body["error"] == "class='TPU' is not one of CPU, GPU, HPC, NPU"
    status, body = call(store, "GET", "/api/hubs")
    assert status == 200 and any(h["hub"] == "gansu" and h["green_share"] == pytest.approx(0.9) for h in body)
    status, body = call(store, "GET", "/api/rollups?scope_kind=hub&scope_key=gansu")
    assert status == 200 and body[0]["scope_key"] == "gansu"
    assert call(store, "GET", "/api/rollups?window_s=7")[0] == 422
    status, body = call(store, "GET", "/api/latency")
    pair = next(p for p in body if (p["from_hub"], p["to_hub"]) == ("gansu", "yangtze"))
    assert pair["p99_ms"] == 21.5 and pair["tier_ms"] == 20
    status, text = call(store, "GET", "/metrics")
    assert status == 200 and 'suanwang_api_requests_total{method="GET",route="/api/latency",status="200"}' in text


def test_network_model_gives_the_map_its_hubs_and_each_scope_its_share(store: Store) -> None:
    status, model = call(store, "GET", "/api/network")
    assert status == 200 and len(model["hubs"]) == 8
    assert sum(len(h["clusters"]) for h in model["hubs"].values()) == 10
    gansu = model["hubs"]["gansu"]
    assert gansu["name"] == {"en": "Gansu", "zh": "甘肃"} and gansu["clusters"]["qingyang"]["lat"] > 30
    scopes = {s["scope"]: s for s in model["scopes"]}
    assert scopes["national"]["hubs"] == sorted(model["hubs"])
    assert scopes["province:Gansu"]["hubs"] == ["gansu"] and scopes["province:Gansu"]["clusters"] == ["qingyang"]
    assert scopes["industry:genomics"] == {
        "scope": "industry:genomics", "name": {"en": "Genomics", "zh": "基因组学"}, "hubs": ["guizhou"],
        "clusters": ["guian"],
    }  # fmt: skip


def test_overview_placements_and_alerts_follow_the_scope(store: Store) -> None:
    def placed(task: str, cluster: str, province: str) -> dict[str, Any]:
        return sample_record("Placement") | {
            "event_id": task, "task_id": task, "cluster": cluster, "province": province, "hub": "h", "origin_hub": "o",
            "saved_yuan": 2.5, "saved_carbon_kg": 1.0,
        }  # fmt: skip

    before = {s: call(store, "GET", f"/api/overview?scope={s}")[1] for s in ("national", "province:Ningxia")}
    store.insert_records("placements", [placed("ov-1", "zhongwei", "Ningxia"), placed("ov-2", "wuhu", "Anhui")])
    store.insert_records("alerts", [sample_record("Alert") | {"alert_key": "ov", "scope_key": "zhongwei-x-1"}])
    national = call(store, "GET", "/api/overview?scope=national")[1]
    ningxia = call(store, "GET", "/api/overview?scope=province:Ningxia")[1]
    assert national["placements"] == before["national"]["placements"] + 2
    assert ningxia["placements"] == before["province:Ningxia"]["placements"] + 1
    assert ningxia["saved_yuan"] == pytest.approx(before["province:Ningxia"]["saved_yuan"] + 2.5)
    assert ningxia["moved"] == before["province:Ningxia"]["moved"] + 1 and ningxia["scope"] == "province:Ningxia"
    rows = call(store, "GET", "/api/placements?scope=province:Ningxia&limit=1000")[1]
    assert "ov-1" in {r["task_id"] for r in rows} and {r["province"] for r in rows} == {"Ningxia"}
    alerts = call(store, "GET", "/api/alerts?scope=province:Ningxia")[1]
    assert [a["alert_key"] for a in alerts] == ["ov"]
    status, body = call(store, "GET", "/api/overview?scope=province:Atlantis")
    assert status == 422 and "Atlantis" in body["error"]


def test_vendor_assets_come_from_the_installed_npm_packages(store: Store, tmp_path: Path) -> None:
    status, script = call(store, "GET", "/vendor/plotly.min.js")
    assert status == 200 and "plotly.js v" in script[:200]
    status, body = call(store, "GET", "/vendor/topojson/asia_50m.json")
    assert status == 200 and body["type"] == "Topology"
    status, body = call(store, "GET", "/vendor/jquery.js")
    assert status == 404 and "'jquery.js'" in body["error"]

    async def without_assets() -> tuple[int, Any]:
        settings = Settings(data_dir=tmp_path, web_assets_dir=tmp_path / "node_modules")
        async with TestClient(TestServer(create_api(store, settings))) as client:
            resp = await client.get("/vendor/plotly.min.js")
            return resp.status, await resp.json()

    status, body = asyncio.run(without_assets())
    assert status == 503 and "npm ci" in body["error"] and "SUANWANG_WEB_ASSETS_DIR" in body["error"]


@pytest.mark.parametrize(
    ("route", "name", "bad", "says"),
    [
        ("/api/nodes", "class", "TPU", "class='TPU' is not one of CPU, GPU, HPC, NPU"),
        ("/api/rollups", "window_s", "90", "window_s='90' is not one of 300, 60"),
        ("/api/alerts", "limit", "1001", "limit='1001' must be 1..1000"),
        ("/api/statements", "period", "2026-1", "period='2026-1': String should match pattern"),
    ],
)
def test_what_the_document_allows_is_what_the_route_accepts(store: Store, route, name, bad, says) -> None:
    """The routes validate their queries with the models the OpenAPI document is generated from."""
    status, doc = call(store, "GET", "/api/openapi.json")
    (parameter,) = [p for p in doc["paths"][route]["get"]["parameters"] if p["name"] == name]
    schema = parameter["schema"]
    if "enum" in schema:
        assert bad not in schema["enum"]
    elif "maximum" in schema:
        assert not schema["minimum"] <= int(bad) <= schema["maximum"]
    else:
        assert schema["pattern"] == "^[0-9]{4}-[0-9]{2}$"
    status, body = call(store, "GET", f"{route}?{name}={bad}")
    assert status == 422 and body["error"].startswith(says), body
    good = schema["enum"][0] if "enum" in schema else schema.get("default", "2026-11")
    assert call(store, "GET", f"{route}?{name}={good}")[0] == 200


@pytest.mark.parametrize(
    ("table", "record", "route"),
    [
        ("placements", "Placement", "/api/placements"),
        ("alerts", "Alert", "/api/alerts"),
        ("rollups", "Rollup", "/api/rollups?scope_kind=node"),
        ("nodes", "NodeRegistration", "/api/nodes"),
    ],
)
def test_the_rows_a_route_returns_are_the_contract_record_its_document_names(store: Store, table, record, route):
    """The document describes stored rows by their Avro record; each row the route returns fits that schema."""
    row = sample_record(record) | {"event_id": f"doc-{table}"}
    if record == "Rollup":
        row |= {"scope_kind": "node", "window_s": 60}
    if record == "NodeRegistration":
        row |= {"active": True}
    store.insert_records(table, [row])
    _, doc = call(store, "GET", "/api/openapi.json")
    schema = doc["paths"][route.split("?")[0]]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert schema["items"] == {"$ref": f"#/components/schemas/{record}Row"}
    validator = OAS30Validator(doc["components"]["schemas"][f"{record}Row"])
    status, rows = call(store, "GET", f"{route}{'&' if '?' in route else '?'}limit=1000")
    assert status == 200 and rows
    for got in rows:
        validator.validate(got)  # raises naming the field that does not fit
