"""What every long-running service shares: a stop signal, readiness, and a decode-or-dead-letter loop."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from suanwang.bus import EventProducer
from suanwang.errors import SuanwangError
from suanwang.schemas.codec import DecodeError
from suanwang.schemas.topics import Topics

READY_MARK = "suanwang-ready:"
COMMIT_EVERY_S = 0.2  # how much a crash may make a service read again (its answers are never repeated)

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
    """Decodes each message and hands (schema, record) to `handle`; undecodable ones go to the dead letters.

    Offsets are committed (every COMMIT_EVERY_S, and at the end) only after all that was produced for the
    messages before them is delivered; the consumer must be made with `auto_commit=False`."""
    last_commit = time.monotonic()
    try:
        while not stop.is_set():
            await _consume_batch(consumer, topics, producer, component, handle)
            if time.monotonic() - last_commit >= COMMIT_EVERY_S:
                await _commit(consumer, producer, component)
                last_commit = time.monotonic()
    finally:
        await _commit(consumer, producer, component)


async def _commit(consumer: AIOKafkaConsumer, producer: EventProducer, component: str) -> None:
    await producer.flush()
    try:
        await consumer.commit()
    except KafkaError as exc:  # a rebalance took the partitions: their new owner reads the tail again
        print(f"{component}: offsets not committed ({exc!r}); the tail will be redelivered", file=sys.stderr)


async def _consume_batch(
    consumer: AIOKafkaConsumer, topics: Topics, producer: EventProducer, component: str, handle: Handler
) -> None:
    batches = await consumer.getmany(timeout_ms=100, max_records=500)
    for messages in batches.values():
        for msg in messages:
            try:
                record = producer.codec.decode_as(topics.spec(msg.topic).schema, msg.value)
            except DecodeError as exc:
                await producer.dead_letter(component, msg, str(exc))
                continue
            try:
                await handle(msg.topic, record)
            except Exception as exc:  # a bad record must not stop the stream
                print(f"{component}: {msg.topic}@{msg.partition}:{msg.offset} failed: {exc!r}", file=sys.stderr)
                await producer.dead_letter(component, msg, f"handler failed: {exc!r}")


def check_port_free(port: int, what: str, setting: str) -> None:
    """SuanwangError naming the port and the setting to change when something already listens there."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            raise SuanwangError(
                f"port {port} for the {what} is in use; free it or choose another with {setting}"
            ) from None
