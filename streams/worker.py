"""Runs the Faust worker (and, when asked, the API beside it, sharing its ClickHouse client)."""

from __future__ import annotations

import asyncio

from suanwang.bus import ensure_topics
from suanwang.service import announce_ready
from suanwang.settings import Settings
from suanwang.store import Store
from suanwang.streams.app import create_app


async def run_worker(settings: Settings, stop: asyncio.Event, with_api: bool = False) -> None:
    store = Store(settings)
    await store.run(store.migrate)
    await ensure_topics(settings)
    app, _ctx = create_app(settings, store)
    runner = None
    try:
        await app.start()
        if with_api:
            from suanwang.dashboards.api import start_api

            runner = await start_api(settings, store)
        announce_ready("worker")
        await stop.wait()
    finally:
        if runner is not None:
            await runner.cleanup()
        await app.stop()
        store.close()
