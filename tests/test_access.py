"""Access control: tokens, roles and scopes on every endpoint and the stream, and the audit trail they leave."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from suanwang.api.access import hash_token, load_tokens, new_token, token_entry_yaml
from suanwang.api.openapi import openapi_document
from suanwang.api.server import ROUTES, create_api, start_api
from suanwang.bus import ensure_topics
from suanwang.errors import SuanwangError
from suanwang.settings import Settings
from suanwang.store import Store
from suanwang.topology import load_network
from tests.conftest import run_cli
from tests.samples import sample_record

HOLDERS = {
    "nation": ("national_operator", {}),
    "gansu-desk": ("provincial_operator", {"provinces": ["Gansu"]}),
    "genomics-desk": ("industry_operator", {"industries": ["genomics"]}),
    "tenant-07": ("tenant", {"tenant": "tenant-07"}),
    "analyst": ("analyst", {}),
}
TOKENS = {name: new_token() for name in HOLDERS}


def tokens_yaml() -> str:
    network = load_network()
    entries = [token_entry_yaml(n, role, TOKENS[n], network, **scopes) for n, (role, scopes) in HOLDERS.items()]
    return "tokens:\n" + "".join("  " + line + "\n" for e in entries for line in e.splitlines())


@pytest.fixture()
def secured(settings: Settings) -> Settings:
    return Settings(**(settings.model_dump() | {"api_tokens": tokens_yaml()}))


def as_(holder: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[holder]}"} if holder else {}


async def _requests(store: Store, settings: Settings, calls: list[tuple[str | None, str, str, dict[str, Any]]]) -> list:
    """Each (holder, method, path, kwargs) in turn on one app; the answers as (status, JSON body)."""
    out = []
    async with TestClient(TestServer(create_api(store, settings))) as client:
        for holder, method, path, kw in calls:
            resp = await client.request(method, path, headers=kw.pop("headers", as_(holder)), **kw)
            body = await resp.json() if resp.content_type == "application/json" else None
            out.append((resp.status, body, resp.headers.get("WWW-Authenticate")))
            resp.close()
    return out


def ask(store: Store, settings: Settings, holder: str | None, method: str, path: str, **kw: Any) -> tuple[int, Any]:
    status, body, _ = asyncio.run(_requests(store, settings, [(holder, method, path, kw)]))[0]
    return status, body


def test_no_token_or_an_unknown_one_is_401_and_public_routes_stay_open(store: Store, secured: Settings) -> None:
    answers = asyncio.run(
        _requests(
            store,
            secured,
            [(None, "GET", "/api/overview", {}), (None, "GET", "/healthz", {}), (None, "GET", "/", {})],
        )
    )
    (status, body, challenge), health, page = answers
    assert status == 401 and "needs a token" in body["error"] and challenge == 'Bearer realm="suanwang"'
    assert health[0] == 200 and page[0] == 200
    stranger = {"Authorization": f"Bearer {new_token()}"}
    status, body = ask(store, secured, None, "GET", "/api/overview", headers=stranger)
    assert status == 401 and body["error"] == "unknown token"


def test_a_provincial_operator_sees_only_their_province(store: Store, secured: Settings) -> None:
    status, body = ask(store, secured, "gansu-desk", "GET", "/api/overview")
    assert status == 200 and body["scope"] == "province:Gansu"  # their scope is the default
    for scope in ("national", "province:Guangdong", "industry:genomics"):
        status, body = ask(store, secured, "gansu-desk", "GET", f"/api/alerts?scope={scope}")
        assert status == 403 and f"may not see {scope}" in body["error"] and "province:Gansu" in body["error"]
    for path in ("/api/summary", "/metrics"):
        assert ask(store, secured, "gansu-desk", "GET", path)[0] == 403
    assert ask(store, secured, "gansu-desk", "POST", "/api/sql", json={"query": "SELECT 1"})[0] == 403
    status, model = ask(store, secured, "gansu-desk", "GET", "/api/network")
    assert [s["scope"] for s in model["scopes"]] == ["province:Gansu"]
    assert model["you"] == {"name": "gansu-desk", "role": "provincial_operator"}
    store.insert_records(
        "nodes",
        [
            sample_record("NodeRegistration") | {"node_id": f"acc-{c}-1", "hub": h, "cluster": c, "province": p}
            for h, c, p in (("gansu", "qingyang", "Gansu"), ("gba", "shaoguan", "Guangdong"))
        ],
    )
    store.insert_records(
        "latency_rollups",
        [
            sample_record("LatencyRollup") | {"scope_kind": "hub_pair", "scope_key": k}
            for k in ("gansu>gba", "gba>yangtze")
        ],
    )
    nodes = ask(store, secured, "gansu-desk", "GET", "/api/nodes?limit=1000")[1]
    assert "acc-qingyang-1" in {n["node_id"] for n in nodes} and {n["province"] for n in nodes} == {"Gansu"}
    assert {h["hub"] for h in ask(store, secured, "gansu-desk", "GET", "/api/hubs")[1]} == {"gansu"}
    pairs = ask(store, secured, "gansu-desk", "GET", "/api/latency")[1]
    seen = {(p["from_hub"], p["to_hub"]) for p in pairs}  # other tests may add pairs of their own
    assert ("gansu", "gba") in seen and ("gba", "yangtze") not in seen and all("gansu" in pair for pair in seen)
    assert len(ask(store, secured, "nation", "GET", "/api/latency")[1]) >= 2


def test_industry_operators_and_analysts_and_tenants(store: Store, secured: Settings) -> None:
    assert ask(store, secured, "genomics-desk", "GET", "/api/overview")[1]["scope"] == "industry:genomics"
    assert ask(store, secured, "genomics-desk", "GET", "/api/overview?scope=province:Guizhou")[0] == 403
    assert ask(store, secured, "analyst", "GET", "/api/overview?scope=province:Guizhou")[0] == 200
    assert ask(store, secured, "analyst", "POST", "/api/sql", json={"query": "SELECT 1 AS one"})[1]["rows"] == [[1]]
    status, body = ask(store, secured, "analyst", "POST", "/api/tasks", json={})
    assert status == 403 and "analyst (analyst) may not POST /api/tasks" in body["error"]
    for path in ("/api/nodes", "/api/overview", "/api/stream", "/api/summary"):
        assert ask(store, secured, "tenant-07", "GET", path)[0] == 403, path
    mine, theirs = (
        sample_record("Placement") | {"event_id": f"acc-{t}", "task_id": f"acc-{t}", "tenant": t}
        for t in ("tenant-07", "tenant-08")
    )
    store.insert_records("placements", [mine, theirs])
    rows = ask(store, secured, "tenant-07", "GET", "/api/placements?limit=1000")[1]
    assert {r["tenant"] for r in rows} == {"tenant-07"} and "acc-tenant-07" in {r["task_id"] for r in rows}
    assert ask(store, secured, "tenant-07", "GET", "/api/tasks/acc-tenant-07")[0] == 200
    status, body = ask(store, secured, "tenant-07", "GET", "/api/tasks/acc-tenant-08")
    assert status == 403 and "may not see task 'acc-tenant-08'" in body["error"]
    assert ask(store, secured, "nation", "GET", "/api/tasks/acc-tenant-08")[0] == 200


def test_no_one_submits_outside_their_scope(store: Store, secured: Settings) -> None:
    task = {
        "tenant": "tenant-07", "industry": "genomics", "kind": "genomics", "origin_hub": "yangtze",
        "origin_province": "Shanghai", "chip_archs": ["x86_64"], "cpu_milli": 4000, "memory_mib": 8192,
        "data_hub": "yangtze", "duration_s": 60.0, "deadline": "2026-12-01T00:00:00+00:00",
    }  # fmt: skip
    asyncio.run(ensure_topics(secured))
    calls = [
        ("tenant-07", task),
        ("tenant-07", task | {"tenant": "tenant-08"}),
        ("gansu-desk", task),
        ("gansu-desk", task | {"origin_province": "Gansu", "origin_hub": "gansu"}),
        ("genomics-desk", task | {"industry": "autonomous_driving"}),
        ("nation", task | {"tenant": "tenant-99"}),
    ]
    answers = asyncio.run(_requests(store, secured, [(who, "POST", "/api/tasks", {"json": t}) for who, t in calls]))
    assert [a[0] for a in answers] == [202, 403, 403, 202, 403, 202]
    assert "may not submit a task with tenant='tenant-08'" in answers[1][1]["error"]
    assert "origin_province='Shanghai'" in answers[2][1]["error"]


def test_the_stream_takes_its_token_in_the_query_and_keeps_to_the_scope(store: Store, secured: Settings) -> None:
    token = TOKENS["gansu-desk"]

    async def scenario() -> list[int]:
        await ensure_topics(secured)
        statuses = []
        async with TestClient(TestServer(create_api(store, secured))) as client:
            for path in (
                "/api/stream?scope=province:Gansu",
                f"/api/stream?scope=national&access_token={token}",
                f"/api/stream?scope=province:Gansu&access_token={token}",
            ):
                resp = await client.get(path)
                statuses.append(resp.status)
                resp.close()
        return statuses

    assert asyncio.run(scenario()) == [401, 403, 200]


def test_every_api_action_and_every_decision_is_in_the_audit_log(store: Store, secured: Settings) -> None:
    token = TOKENS["gansu-desk"]
    asyncio.run(
        _requests(
            store,
            secured,
            [
                ("gansu-desk", "GET", "/api/overview?scope=national", {}),
                ("gansu-desk", "GET", "/api/alerts?limit=3", {}),
                (None, "GET", f"/api/stream?scope=province:Gansu&access_token={token}", {}),
                (None, "GET", "/api/alerts", {}),
                ("analyst", "POST", "/api/sql", {"json": {"query": "SELECT 'audited' AS x"}}),
            ],
        )
    )  # the app's cleanup flushes the audit rows
    rows = store.query(
        "SELECT actor, role, route, target, scope, status, reason FROM suanwang.api_audit "
        "WHERE actor IN ('gansu-desk', 'unknown') ORDER BY event_time",
        None,
    )[1]
    mine = [r for r in rows if r[0] == "gansu-desk"][-3:]
    assert [(r[2], r[5]) for r in mine] == [("/api/overview", 403), ("/api/alerts", 200), ("/api/stream", 200)]
    assert "may not see national" in mine[0][6] and mine[1][4] == "province:Gansu"
    assert mine[2][3] == "/api/stream?scope=province%3AGansu"  # the token is never written down
    assert any(r[0] == "unknown" and r[5] == 401 for r in rows)
    queried = store.query("SELECT target FROM suanwang.api_audit WHERE actor = 'analyst' AND route = '/api/sql'", None)
    assert "/api/sql SELECT 'audited' AS x" in [r[0] for r in queried[1]]
    assert not any(token in str(r) for r in rows)
    store.insert_records("placements", [sample_record("Placement") | {"task_id": "audit-1", "scope": "national"}])
    decision = store.query(
        "SELECT actor, action, outcome, reason FROM suanwang.audit_log WHERE target = 'audit-1'", None
    )[1]
    assert decision[0][:2] == ("dispatcher:national", "place") and "feasible nodes" in decision[0][3]


def test_tokens_are_checked_when_loaded(tmp_path: Path) -> None:
    network = load_network()
    bad = "tokens:\n  - {name: x, role: provincial_operator, sha256: " + hash_token("t") + "}\n"
    with pytest.raises(SuanwangError, match="SUANWANG_API_TOKENS: tokens.0: .*provinces is required"):
        load_tokens(Settings(api_tokens=bad), network)
    unknown = bad.replace("}", ", provinces: [Atlantis]}")
    with pytest.raises(SuanwangError, match="token 'x': no province 'Atlantis'"):
        load_tokens(Settings(api_tokens=unknown), network)
    with pytest.raises(SuanwangError, match="SUANWANG_API_TOKENS_FILE='/nowhere.yaml'"):
        load_tokens(Settings(api_tokens_file=Path("/nowhere.yaml")), network)
    path = tmp_path / "tokens.yaml"
    path.write_text(tokens_yaml())
    tokens = load_tokens(Settings(api_tokens_file=path), network)
    assert tokens is not None and len(tokens) == len(HOLDERS)
    assert tokens.principal(TOKENS["genomics-desk"]).industries == ("genomics",)
    assert TOKENS["nation"] not in path.read_text()  # only hashes are stored


def test_token_command_prints_a_token_and_an_entry_that_loads(tmp_path: Path) -> None:
    done = run_cli("token", "new", "gansu-desk", "--role", "provincial_operator", "--province", "Gansu")
    assert done.returncode == 0, done.stderr
    token, *entry = done.stdout.splitlines()
    path = tmp_path / "tokens.yaml"
    path.write_text("tokens:\n" + "".join(f"  {line}\n" for line in entry))
    principal = load_tokens(Settings(api_tokens_file=path), load_network()).principal(token)
    assert principal is not None and principal.provinces == ("Gansu",)
    refused = run_cli("token", "new", "x", "--role", "tenant")
    assert refused.returncode == 2 and "tenant is required for role tenant" in refused.stderr


def test_serving_beyond_loopback_without_tokens_is_refused(store: Store, tmp_path: Path) -> None:
    with pytest.raises(SuanwangError, match="SUANWANG_WEB_HOST='0.0.0.0' serves the API beyond this machine"):
        asyncio.run(start_api(Settings(web_host="0.0.0.0", web_port=0, data_dir=tmp_path), store))


def test_openapi_requires_a_token_exactly_where_the_api_does() -> None:
    document = openapi_document(ROUTES)
    for route in ROUTES:
        if route.path in ("/", "/vendor/{asset:.+}"):
            assert route.doc is None and route.path not in document["paths"]  # the page and its assets
            continue
        operation = document["paths"][route.path][route.method.lower()]
        assert ("security" in operation) == (route.roles is not None), route.path
