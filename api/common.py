"""What every API handler shares: the store, JSON replies, the caller, and the scope it asks for."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from suanwang.api.access import ANONYMOUS, Principal
from suanwang.api.guard import AUDIT_SCOPE, PRINCIPAL, describe, http_error
from suanwang.api.scopes import ScopeView
from suanwang.dispatcher.tiers import parse_scope
from suanwang.errors import SuanwangError
from suanwang.store import Store
from suanwang.topology import load_network

STORE = web.AppKey("store", Store)


def reply(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda d: json.dumps(d, default=json_default))


def json_default(value: Any) -> Any:
    """JSON for what the store returns beyond JSON's types."""
    if isinstance(value, datetime):  # the store's DateTime64 columns are UTC and come back naive
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    raise TypeError(type(value).__name__)


async def rows_of(request: web.Request, sql: str, parameters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    store = request.app[STORE]
    columns, rows = await store.run(store.query, sql, parameters)
    return [dict(zip(columns, row, strict=True)) for row in rows]


def caller_of(request: web.Request) -> Principal:
    return request.get(PRINCIPAL, ANONYMOUS)


def scope_of(request: web.Request) -> ScopeView:
    """The `scope` query parameter (default: the caller's first scope); 422 if unknown, 403 if not theirs."""
    network, caller = load_network(), caller_of(request)
    text = request.query.get("scope")
    try:
        scope = parse_scope(text, network) if text else caller.scopes()[0]
    except SuanwangError as exc:
        raise http_error(web.HTTPUnprocessableEntity, str(exc)) from None
    if not caller.may_see(scope):
        allowed = ", ".join(str(s) for s in caller.scopes())
        raise http_error(web.HTTPForbidden, f"{describe(caller)} may not see {scope}; it may see: {allowed}")
    request[AUDIT_SCOPE] = str(scope)
    return ScopeView.of(scope, network)
