"""The Grafana dashboards: valid, on the provisioned ClickHouse datasource, and every panel's SQL (macros
expanded as the ClickHouse plugin expands them) runs against a short `suanwang up` (in tests/test_e2e.py)."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path

import yaml

ROOT = Path(__file__).parents[1]
DASHBOARDS = sorted((ROOT / "dashboards" / "grafana").glob("*.json"))
PLATFORM_HEALTH = ROOT / "dashboards" / "grafana" / "platform-health.json"  # on Prometheus: tests/test_metrics.py
SQL_BOARDS = [p for p in DASHBOARDS if p != PLATFORM_HEALTH]  # on ClickHouse: every panel's SQL runs


def expand(sql: str, start: datetime, end: datetime, variables: dict[str, str]) -> str:
    """The plugin's macros and Grafana's template variables, as they reach ClickHouse."""
    frm, to = int(start.timestamp()), int(end.timestamp())
    sql = re.sub(r"\$__timeFilter\((\w+)\)", rf"\1 >= toDateTime({frm}) AND \1 <= toDateTime({to})", sql)
    sql = sql.replace("$__fromTime", f"toDateTime({frm})").replace("$__toTime", f"toDateTime({to})")
    for name, value in variables.items():
        sql = sql.replace(f"${{{name}}}", value).replace(f"${name}", value)
    return sql


def panel_queries(start: datetime, end: datetime, variables: dict[str, str]) -> list[tuple[str, str]]:
    """(dashboard and panel title, expanded SQL) of every panel."""
    out = []
    for path in SQL_BOARDS:
        board = json.loads(path.read_text(encoding="utf-8"))
        for panel in board["panels"]:
            for target in panel["targets"]:
                out.append((f"{board['title']}: {panel['title']}", expand(target["rawSql"], start, end, variables)))
    return out


def variable_queries() -> dict[str, str]:
    """Each template variable's query, by name."""
    out = {}
    for path in SQL_BOARDS:
        for var in json.loads(path.read_text(encoding="utf-8"))["templating"]["list"]:
            out[var["name"]] = var["query"]
    return out


def _provisioned_uid(name: str) -> str:
    return yaml.safe_load((ROOT / f"dashboards/provisioning/datasources/{name}.yaml").read_text())["datasources"][0][
        "uid"
    ]


def test_six_dashboards_each_on_its_provisioned_datasource() -> None:
    titles = {json.loads(p.read_text(encoding="utf-8"))["title"] for p in DASHBOARDS}
    assert {
        "national overview",
        "provincial view",
        "dispatch analytics",
        "energy and carbon",
        "market and billing",
        "platform health",
    } <= {t.split(" ", 1)[1] for t in titles}
    for path in DASHBOARDS:
        uid = _provisioned_uid("prometheus" if path == PLATFORM_HEALTH else "clickhouse")
        board = json.loads(path.read_text(encoding="utf-8"))
        for panel in board["panels"]:
            assert panel["datasource"]["uid"] == uid, (path.name, panel["title"])


def test_prometheus_scrapes_every_service_where_compose_serves_its_metrics() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    port = compose["x-suanwang-env"]["SUANWANG_METRICS_PORT"]
    scraped = yaml.safe_load((ROOT / "deploy/prometheus.yml").read_text())["scrape_configs"]
    targets = {t for job in scraped for config in job["static_configs"] for t in config["targets"]}
    services = {name: svc for name, svc in compose["services"].items() if svc.get("build")}
    api_port = services["api"]["environment"]["SUANWANG_WEB_PORT"]
    assert targets == {f"{name}:{api_port if name == 'api' else port}" for name in services}
    assert "./deploy/prometheus.yml" in compose["services"]["prometheus"]["volumes"][0]


def test_every_macro_and_variable_expands() -> None:
    now = datetime.now()
    for title, sql in panel_queries(now, now, {"province": "Gansu"}):
        assert "$" not in sql, (title, sql)
    assert variable_queries() == {"province": "SELECT DISTINCT province FROM suanwang.nodes ORDER BY province"}
