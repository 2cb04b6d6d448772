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
    for path in DASHBOARDS:
        board = json.loads(path.read_text(encoding="utf-8"))
        for panel in board["panels"]:
            for target in panel["targets"]:
                out.append((f"{board['title']}: {panel['title']}", expand(target["rawSql"], start, end, variables)))
    return out


def variable_queries() -> dict[str, str]:
    """Each template variable's query, by name."""
    out = {}
    for path in DASHBOARDS:
        for var in json.loads(path.read_text(encoding="utf-8"))["templating"]["list"]:
            out[var["name"]] = var["query"]
    return out


def test_five_dashboards_on_the_provisioned_datasource() -> None:
    titles = {json.loads(p.read_text(encoding="utf-8"))["title"] for p in DASHBOARDS}
    assert {
        "national overview",
        "provincial view",
        "dispatch analytics",
        "energy and carbon",
        "market and billing",
    } <= {t.split(" ", 1)[1] for t in titles}
    provisioned = yaml.safe_load((ROOT / "dashboards/provisioning/datasources/clickhouse.yaml").read_text())
    uid = provisioned["datasources"][0]["uid"]
    for path in DASHBOARDS:
        board = json.loads(path.read_text(encoding="utf-8"))
        for panel in board["panels"]:
            assert panel["datasource"]["uid"] == uid, (path.name, panel["title"])


def test_every_macro_and_variable_expands() -> None:
    now = datetime.now()
    for title, sql in panel_queries(now, now, {"province": "Gansu"}):
        assert "$" not in sql, (title, sql)
    assert variable_queries() == {"province": "SELECT DISTINCT province FROM suanwang.nodes ORDER BY province"}
