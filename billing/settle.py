"""`suanwang settle`: close a month (meter every task that ran in it) and draw its statements."""

from __future__ import annotations

from typing import Any

from suanwang.billing.book import load_book
from suanwang.billing.run import BillingRun
from suanwang.billing.statements import balanced, statements
from suanwang.errors import SuanwangError
from suanwang.query import call_api
from suanwang.settings import Settings
from suanwang.store import Store
from suanwang.topology import load_network


def settle(settings: Settings, period: str) -> dict[str, Any]:
    """The period's statements; on the embedded store it has to itself, after metering every task that ran in
    it. While a running platform holds that store, its API answers (its worker bills as it goes); on a
    ClickHouse server the statements are only read, since the workers' leader is the one billing writer."""
    book = load_book(settings.tenants_file)
    try:
        store = Store(settings)
    except SuanwangError as exc:
        if settings.clickhouse_url or "in use by another process" not in str(exc):
            raise
        return call_api(settings, f"/api/statements?period={period}", exc)
    try:
        store.migrate()
        metered = None
        if not settings.clickhouse_url:
            closed = BillingRun(store, load_network(), book, settings.billing_grace_s).close(period)
            metered = {"tasks": closed.tasks, "transactions": closed.transactions, "entries": closed.entries}
        report = statements(store, book, period)
        report["balanced"] = balanced(report)
        report["metered"] = metered
        return report
    finally:
        store.close()
