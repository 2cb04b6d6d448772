"""Server-sent events: placements, alerts and rollups as they happen, filtered by scope.

One Kafka reader per API process fans each event out to every connected client. A client's backlog is a
bounded queue that drops its oldest events, so a slow or vanished client costs a fixed amount of memory
and never slows the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from suanwang.bus import consumer_kwargs, make_codec
from suanwang.schemas.codec import DecodeError
from suanwang.schemas.topics import ALERT, PLACEMENT, ROLLUP, Topics
from suanwang.settings import Settings

BACKLOG = 1000  # events a client may fall behind before its oldest are dropped
KINDS = {PLACEMENT.name: "placement", ALERT.name: "alert", ROLLUP.name: "rollup"}


class Client:
    """One SSE connection's bounded backlog."""

    def __init__(self, accepts: Callable[[str, dict[str, Any]], bool], backlog: int = BACKLOG) -> None:
        self.accepts = accepts
        self.queue: deque[tuple[str, dict[str, Any]]] = deque(maxlen=backlog)
        self.accepted = 0  # events put, dropped ones included
        self.dropped = 0
        self.closed = False
        self._ready = asyncio.Event()

    def close(self) -> None:
        """Ends the connection's stream: the server is shutting down."""
        self.closed = True
        self._ready.set()

    def put(self, kind: str, record: dict[str, Any]) -> None:
        if len(self.queue) == self.queue.maxlen:
            self.dropped += 1
        self.accepted += 1
        self.queue.append((kind, record))
        self._ready.set()

    async def next(self, timeout_s: float) -> tuple[str, dict[str, Any]] | None:
        """The oldest waiting event, or None after `timeout_s` with none (time for a keep-alive)."""
        if not self.queue:
            self._ready.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), timeout_s)
        return self.queue.popleft() if self.queue and not self.closed else None


class Fanout:
    """Reads the three topics from their end and hands each event to every client that accepts it; it reads
    only while a client is connected, as every fetch that returns data costs the embedded broker more as its
    log grows."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topics = Topics(settings.topic_prefix)
        self.codec = make_codec(settings)
        self.clients: set[Client] = set()
        self.ready = asyncio.Event()  # reading from the end of every partition
        self.read_to: dict[TopicPartition, int] = {}  # the next offset of each partition, once handed out
        self._wanted = asyncio.Event()  # a client is connected
        self.consumer: AIOKafkaConsumer | None = None

    def join(self, client: Client) -> None:
        self.clients.add(client)
        self._wanted.set()

    def leave(self, client: Client) -> None:
        self.clients.discard(client)

    async def run(self) -> None:
        consumer = self.consumer = AIOKafkaConsumer(**consumer_kwargs(self.settings, None, dispatch_path=True))
        await consumer.start()
        try:
            names = [self.topics.name(s) for s in (PLACEMENT, ALERT, ROLLUP)]
            await consumer.topics()
            while not all(consumer.partitions_for_topic(n) for n in names):  # topics not created yet
                await asyncio.sleep(1.0)
                await consumer.topics()
            parts = [TopicPartition(n, p) for n in names for p in consumer.partitions_for_topic(n) or ()]
            consumer.assign(parts)
            consumer.pause(*parts)
            while True:
                await self._wanted.wait()
                consumer.resume(*parts)
                await consumer.seek_to_end(*parts)
                for tp in parts:
                    await consumer.position(tp)  # resolves the end offsets now, before any client is told it is on
                self.ready.set()
                while self.clients:
                    self._hand_out(await consumer.getmany(timeout_ms=200))
                self.ready.clear()
                consumer.pause(*parts)
                if not self.clients:
                    self._wanted.clear()
        finally:
            await consumer.stop()

    def _hand_out(self, fetched: dict[TopicPartition, list[Any]]) -> None:
        for tp, messages in fetched.items():
            kind = KINDS[self.topics.spec(tp.topic).name]
            for msg in messages:
                with contextlib.suppress(DecodeError):  # the sink reports it
                    self.publish(kind, {**self.codec.decode(msg.value)[1], "_kafka_ms": msg.timestamp})
            self.read_to[tp] = messages[-1].offset + 1

    def publish(self, kind: str, record: dict[str, Any]) -> None:
        for client in list(self.clients):
            if client.accepts(kind, record):
                client.put(kind, record)


def sse(kind: str, record: dict[str, Any], default: Callable[[Any], Any]) -> bytes:
    """One server-sent event; `_sent_ms` against the Kafka append time `_kafka_ms` gives the lag on one clock."""
    data = json.dumps({**record, "_sent_ms": int(time.time() * 1000)}, default=default)
    return f"event: {kind}\ndata: {data}\n\n".encode()
