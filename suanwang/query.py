"""`suanwang sql`: straight to ClickHouse, or through the running API when it holds the embedded store."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from suanwang.errors import SuanwangError
from suanwang.settings import Settings
from suanwang.store import Store


def run_query(settings: Settings, query: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    try:
        store = Store(settings)
    except SuanwangError as exc:
        if settings.clickhouse_url or "in use by another process" not in str(exc):
            raise
        return _through_api(settings, query, exc)
    try:
        return store.query(query)
    finally:
        store.close()


def _through_api(settings: Settings, query: str, cause: SuanwangError) -> tuple[list[str], list[tuple[Any, ...]]]:
    from suanwang.dashboards.api import api_url_file

    path = api_url_file(settings)
    if not path.exists():
        raise cause
    url = path.read_text().strip() + "/api/sql"
    headers = {"Content-Type": "application/json"}
    if settings.api_token is not None:
        headers["Authorization"] = f"Bearer {settings.api_token.get_secret_value()}"
    req = urllib.request.Request(url, data=json.dumps({"query": query}).encode(), headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            body = json.load(resp)
    except urllib.error.HTTPError as exc:
        hint = "; set SUANWANG_API_TOKEN to an analyst's token" if exc.code in (401, 403) else ""
        raise SuanwangError(json.load(exc).get("error", str(exc)) + hint) from None
    except OSError:
        raise cause from None
    return body["columns"], [tuple(r) for r in body["rows"]]
