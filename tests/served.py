"""The API served from a thread of the test process, for clients that need a real port (a browser, schemathesis)."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from suanwang.api.server import create_api
from suanwang.bus import EventProducer, ensure_topics
from suanwang.schemas.topics import TopicSpec
from suanwang.settings import Settings
from suanwang.store import Store


@dataclass
class Live:
    """The API serving on a loop in its own thread, and a producer on that loop to make events happen."""

    url: str
    loop: asyncio.AbstractEventLoop
    producer: EventProducer
    tag: str = field(default_factory=lambda: f"b{os.getpid()}")

    def send(self, spec: TopicSpec, record: dict[str, Any]) -> None:
        async def send() -> None:
            await self.producer.send(spec, record)
            await self.producer.flush()

        asyncio.run_coroutine_threadsafe(send(), self.loop).result(30)


@contextmanager
def serving(store: Store, settings: Settings) -> Iterator[Live]:
    """The API on a loop in its own thread, for a browser to load."""
    loop = asyncio.new_event_loop()
    ready: Future[tuple[web.AppRunner, EventProducer, str]] = Future()

    async def serve() -> None:
        await ensure_topics(settings)
        runner = web.AppRunner(create_api(store, settings))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        producer = EventProducer(settings)
        await producer.start()
        ready.set_result((runner, producer, f"http://127.0.0.1:{runner.addresses[0][1]}"))

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(serve(), loop).result(60)
    runner, producer, url = ready.result()
    yield Live(url, loop, producer)
    asyncio.run_coroutine_threadsafe(producer.stop(), loop).result(30)
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
