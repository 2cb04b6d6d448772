"""The market's prices and the month's statements, as each caller may see them."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from suanwang.api.common import STORE, caller_of, reply, rows_of, scope_of
from suanwang.api.guard import AUDIT_DETAIL, http_error
from suanwang.api.models import StatementsQuery, query_of
from suanwang.billing.book import Book, period_of
from suanwang.billing.statements import balanced, statements
from suanwang.clock import now_ms
from suanwang.errors import SuanwangError
from suanwang.store import DATABASE

BOOK = web.AppKey("book", Book)


async def prices(request: web.Request) -> web.Response:
    """The price in force for each hub and compute class of a scope, and the figures that set it."""
    where, params = scope_of(request).where("hub")
    sql = (
        "SELECT hub, compute_class, argMax(price_index, event_time) AS price_index, "
        "argMax(yuan_per_cu_hour, event_time) AS yuan_per_cu_hour, argMax(utilisation, event_time) AS utilisation, "
        "argMax(pressure, event_time) AS pressure, argMax(nodes, event_time) AS nodes, max(event_time) AS set_at "
        f"FROM {DATABASE}.market_prices WHERE {where} GROUP BY hub, compute_class ORDER BY hub, compute_class"
    )
    return reply(await rows_of(request, sql, params))


async def billing_statements(request: web.Request) -> web.Response:
    """A month's statements (default: this month so far), reconciled to the ledger; each caller sees its own:
    a tenant its statement and vouchers, a provincial or industry operator the providers in its scope."""
    period = query_of(request, StatementsQuery).period or period_of(now_ms())
    request[AUDIT_DETAIL] = period
    store = request.app[STORE]
    try:
        report = await store.run(statements, store, request.app[BOOK], period)
    except SuanwangError as exc:
        if "YYYY-MM" in str(exc):
            raise http_error(web.HTTPUnprocessableEntity, str(exc)) from None
        raise
    report["balanced"] = balanced(report)
    return reply(_visible(request, report))


def _visible(request: web.Request, report: dict[str, Any]) -> dict[str, Any]:
    caller = caller_of(request)
    if caller.everywhere:
        return report
    if caller.role == "tenant":
        mine = f"tenant:{caller.tenant}"
        return {
            **report,
            "tenants": [s for s in report["tenants"] if s["account"] == mine],
            "providers": [],
            "network_operators": [],
            "vouchers": [v for v in report["vouchers"] if v["tenant"] == caller.tenant],
        }
    clusters = scope_of(request).clusters
    return {
        **report,
        "tenants": [],
        "providers": [s for s in report["providers"] if s["account"].removeprefix("provider:") in clusters],
        "network_operators": [],
        "vouchers": [],
    }
