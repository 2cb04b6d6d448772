"""Billing in the worker: the leader meters and posts what changed, every `billing_interval_s`."""

from __future__ import annotations

import logging

from suanwang.billing.book import load_book
from suanwang.billing.run import BillingRun
from suanwang.errors import SuanwangError
from suanwang.streams.app import Context
from suanwang.topology import load_network

log = logging.getLogger("suanwang.billing")


def register(ctx: Context) -> BillingRun:
    """The billing timer (one worker of the group, the leader, runs it: vouchers are drawn in one order)."""
    run = BillingRun(ctx.store, load_network(), load_book(ctx.settings.tenants_file), ctx.settings.billing_grace_s)

    @ctx.app.timer(interval=ctx.settings.billing_interval_s, on_leader=True)
    @ctx.contain.timer("billing")
    async def billing() -> None:
        try:
            report = await ctx.store.run(run.cycle)
        except SuanwangError as exc:  # ClickHouse away: nothing was posted half, the next run finds the gap
            ctx.counts["billing_failures"] += 1
            log.warning("billing run failed (%s); the next one retries", exc)
            return
        ctx.counts["billing_runs"] += 1
        ctx.counts["billing_entries"] += report.entries

    return run
