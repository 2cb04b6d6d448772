"""Every request that reads or changes data shows a token whose role allows it, and leaves an audit row.

401 without a known token, 403 when the role or the scope does not allow it; either way the refusal is
audited with its reason. Without configured tokens the API is open (loopback only, unless
SUANWANG_API_OPEN says otherwise) and the caller is recorded as `anonymous`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from suanwang.api.access import ANONYMOUS, Principal, Role, Tokens
from suanwang.errors import SuanwangError
from suanwang.store import Store

log = logging.getLogger("suanwang.audit")
PRINCIPAL = web.RequestKey("principal", Principal)  # the caller
AUDIT_SCOPE = web.RequestKey("audit_scope", str)  # the scope the caller looked at
AUDIT_DETAIL = web.RequestKey("audit_detail", str)  # what a change concerned: the task submitted, the query run
TOKEN_QUERY = "access_token"  # EventSource cannot send headers, so the stream takes the token here
AUDIT_FLUSH_S = 1.0
AUDIT_DETAIL_CHARS = 500
AUDIT_MAX_BACKLOG = 100_000  # rows kept while ClickHouse is away; the oldest go first, and are counted


def http_error(kind: type[web.HTTPException], message: str, **headers: str) -> web.HTTPException:
    """An HTTP error whose JSON body says what was wrong."""
    return kind(text=json.dumps({"error": message}), content_type="application/json", headers=headers or None)


def describe(principal: Principal) -> str:
    scopes = ", ".join(str(s) for s in principal.scopes())
    return f"{principal.name} ({principal.role}{' of ' + scopes if scopes and not principal.everywhere else ''})"


class AuditLog:
    """API audit rows, written to ClickHouse in batches; kept and retried while the store is unavailable."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.rows: list[dict[str, Any]] = []

    def record(self, request: web.Request, principal: Principal | None, status: int, reason: str) -> None:
        query = [(k, v) for k, v in request.query.items() if k != TOKEN_QUERY]
        self.rows.append(
            {
                "event_time": datetime.now(UTC),
                "request_id": os.urandom(8).hex(),
                "actor": principal.name if principal else "unknown",
                "role": principal.role if principal else "",
                "method": request.method,
                "route": _route(request),
                "target": request.path + ("?" + urlencode(query) if query else "") + _detail(request),
                "scope": request.get(AUDIT_SCOPE, ""),
                "status": status,
                "reason": reason,
            }
        )
        if len(self.rows) > AUDIT_MAX_BACKLOG:
            log.error("audit backlog over %d rows while ClickHouse is away: the oldest is dropped", AUDIT_MAX_BACKLOG)
            del self.rows[: len(self.rows) - AUDIT_MAX_BACKLOG]

    async def flush(self) -> None:
        rows, self.rows = self.rows, []
        if not rows:
            return
        try:
            await self.store.run(self.store.insert_records, "api_audit", rows)
        except SuanwangError as exc:
            log.warning("audit rows wait for ClickHouse (%s): %d held", exc, len(rows))
            self.rows[:0] = rows

    async def run(self) -> None:
        """Flushes every second until cancelled, then once more."""
        try:
            while True:
                await asyncio.sleep(AUDIT_FLUSH_S)
                await self.flush()
        finally:
            with contextlib.suppress(Exception):
                await self.flush()


def _detail(request: web.Request) -> str:
    detail = request.get(AUDIT_DETAIL)
    return f" {detail[:AUDIT_DETAIL_CHARS]}" if detail else ""


def _route(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource else "unmatched"


def identify(request: web.Request, tokens: Tokens | None) -> Principal:
    """The caller, from `Authorization: Bearer <token>` (or `access_token` on the stream); 401 otherwise."""
    if tokens is None:
        return ANONYMOUS
    header = request.headers.get("Authorization", "")
    token = header[7:].strip() if header[:7].lower() == "bearer " else ""
    if not token and _route(request) == "/api/stream":
        token = request.query.get(TOKEN_QUERY, "")
    challenge = {"WWW-Authenticate": 'Bearer realm="suanwang"'}
    if not token:
        needed = "this endpoint needs a token: Authorization: Bearer <token>"
        raise http_error(web.HTTPUnauthorized, needed, **challenge)
    principal = tokens.principal(token)
    if principal is None:
        raise http_error(web.HTTPUnauthorized, "unknown token", **challenge)
    return principal


def guard(
    tokens: Tokens | None, audit: AuditLog, route_roles: dict[tuple[str, str], tuple[Role, ...]]
) -> Callable[[web.Request, Any], Awaitable[web.StreamResponse]]:
    """The middleware: public routes pass; every other one needs a role in `route_roles` and is audited."""

    @web.middleware
    async def authorize(request: web.Request, handler: Any) -> web.StreamResponse:
        roles = route_roles.get((request.method, _route(request)))
        if roles is None:
            return await handler(request)
        principal, status, reason = None, 500, "internal error"
        try:
            principal = identify(request, tokens)
            if principal.role not in roles:
                raise http_error(web.HTTPForbidden, f"{describe(principal)} may not {request.method} {_route(request)}")
            request[PRINCIPAL] = principal
            response = await handler(request)
            status, reason = response.status, ""
            return response
        except web.HTTPException as exc:
            status, reason = exc.status, _reason(exc)
            raise
        finally:
            audit.record(request, principal, status, reason)

    return authorize


def _reason(exc: web.HTTPException) -> str:
    with contextlib.suppress(ValueError, TypeError):
        return str(json.loads(exc.text or "")["error"])
    return exc.reason
