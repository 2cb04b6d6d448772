"""What every long-running service shares: a stop signal, readiness, and a decode-or-dead-letter loop."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer

from suanwang.bus import EventProducer
from suanwang.schemas.codec import DecodeError
from suanwang.schemas.topics import Topics

READY_MARK = "suanwang-ready:"

Handler = Callable[[str, dict[str, Any]], Awaitable[None]]


def announce_ready(service: str) -> None:
    """Tells a supervising `suanwang up` (which reads our stdout) that the service is serving."""
    print(f"{READY_MARK} {service}", flush=True)


def stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


async def consume(
    consumer: AIOKafkaConsumer,
    topics: Topics,
    producer: EventProducer,
    component: str,
    handle: Handler,
    stop: asyncio.Event,
) -> None:
    """Decodes each message and hands (schema, record) to `handle`; undecodable ones go to the dead letters."""
    codec = producer.codec
    while not stop.is_set():
        batches = await consumer.getmany(timeout_ms=100, max_records=500)
        for messages in batches.values():
            for msg in messages:
                try:
                    record = codec.decode_as(topics.spec(msg.topic).schema, msg.value)
                except DecodeError as exc:
                    await producer.dead_letter(component, msg, str(exc))
                    continue
                try:
                    await handle(msg.topic, record)
                except Exception as exc:  # a bad record must not stop the stream
                    print(f"{component}: {msg.topic}@{msg.partition}:{msg.offset} failed: {exc!r}", file=sys.stderr)
                    await producer.dead_letter(component, msg, f"handler failed: {exc!r}")
