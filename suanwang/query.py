"""`suanwang sql` and `settle`: straight to ClickHouse, or through the running API when it holds the embedded store."""

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
    body = call_api(settings, "/api/sql", cause, {"query": query}, hint="an analyst's token")
    return body["columns"], [tuple(r) for r in body["rows"]]


def call_api(
    settings: Settings, path: str, cause: SuanwangError, payload: dict[str, Any] | None = None, hint: str = "a token"
) -> Any:
    """The running API's answer (GET, or POST of `payload`), for a command whose store that API holds; `cause`
    is raised when no API runs. The token is SUANWANG_API_TOKEN's."""
    where = settings.api_url_path
    if not where.exists():
        raise cause
    headers = {"Content-Type": "application/json"}
    if settings.api_token is not None:
        headers["Authorization"] = f"Bearer {settings.api_token.get_secret_value()}"
    data = json.dumps(payload).encode() if payload is not None else None
    req = urllib.request.Request(where.read_text().strip() + path, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as exc:
        more = f"; set SUANWANG_API_TOKEN to {hint}" if exc.code in (401, 403) else ""
        raise SuanwangError(json.load(exc).get("error", str(exc)) + more) from None
    except OSError:
        raise cause from None
