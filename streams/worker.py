"""Runs the Faust worker (and, when asked, the API beside it, on ClickHouse connections of its own)."""

from __future__ import annotations

import asyncio
import sys

from suanwang.bus import Lag, ensure_topics
from suanwang.dispatcher.tiers import tier_request_topics
from suanwang.metrics import ServiceMetrics, Tallies
from suanwang.process import announce_ready
from suanwang.schemas.topics import ALL_TOPICS, Topics
from suanwang.settings import Settings
from suanwang.store import Store
from suanwang.streams.app import TALLIES, create_app, worker_group


async def run_worker(settings: Settings, stop: asyncio.Event, with_api: bool = False) -> None:
    store = Store(settings)
    await store.run(store.migrate)
    await ensure_topics(settings, tier_request_topics(settings))
    app, ctx = create_app(settings, store)
    metrics = ServiceMetrics("worker")
    metrics.registry.register(Tallies("worker", ctx.counts, TALLIES))
    metrics.serve(settings.metrics_port)
    runner = api_store = None
    lag_stop = asyncio.Event()
    lag = metrics.keep_lag(settings, worker_group(settings), stored_topics(settings), lag_stop)
    try:
        await app.start()
        if with_api:
            from suanwang.api.server import start_api

            api_store = Store(settings)  # a connection and thread of its own: its reads never queue behind the sink's
            runner = await start_api(settings, api_store)
        announce_ready("worker")
        await stop.wait()
        ctx.draining = True
        await drain(settings, settings.worker_drain_s)
    finally:
        lag_stop.set()
        await lag
        if runner is not None:
            await runner.cleanup()
        if api_store is not None:
            api_store.close()
        await app.stop()
        store.close()


async def drain(settings: Settings, timeout_s: float) -> bool:
    """After a stop request, keeps the worker consuming until its group has committed every topic with a
    table up to its end, so ClickHouse has every row (on the memory-only embedded broker this is the
    last chance); False when `timeout_s` ran out first."""
    names = stored_topics(settings)
    async with Lag(settings) as lag:
        if await lag.caught_up(worker_group(settings), names, timeout_s):
            return True
        behind = await lag.behind(worker_group(settings), names)
    print(f"worker: stopped with {behind} messages not yet stored", file=sys.stderr)
    return False


def stored_topics(settings: Settings) -> list[str]:
    """Every topic the worker stores: the contract's topics with a table, and the tiers' request topics."""
    return [Topics(settings.topic_prefix).name(s) for s in ALL_TOPICS if s.table] + tier_request_topics(settings)
