"""What every worker knows about all nodes and all grid hours: read whole from the compacted topics.

Registrations and grid signals are small and every agent needs them for any node, so each worker reads
both topics in full (no consumer group) and keeps following them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer

from suanwang.bus import consumer_kwargs, follow, read_to_end
from suanwang.clock import HOUR_MS
from suanwang.schemas.codec import Codec, DecodeError
from suanwang.schemas.topics import GRID_SIGNAL, REGISTRY, Topics
from suanwang.settings import Settings
from suanwang.streams.windows import SCOPE_KINDS
from suanwang.topology import load_network


class Facts:
    """Registered nodes, how many each scope holds, and each province's green share per hour."""

    def __init__(self, codec: Codec, topics: Topics) -> None:
        self.codec = codec
        self.topics = topics
        self.nodes: dict[str, dict[str, Any]] = {}
        self.scope_totals: Counter[tuple[str, str]] = Counter()
        self.green: dict[tuple[str, int], float] = {}
        self.default_green = {name: p.green_share for name, p in load_network().provinces.items()}
        self.ready = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None

    def register(self, reg: dict[str, Any]) -> None:
        old = self.nodes.pop(reg["node_id"], None)
        if old is not None:
            self.scope_totals.subtract(_scopes(old))
        if reg["active"]:
            self.nodes[reg["node_id"]] = reg
            self.scope_totals.update(_scopes(reg))

    def green_share(self, province: str, event_ms: int) -> float:
        """The province's green share in that hour; its model average when no signal covers the hour."""
        share = self.green.get((province, event_ms - event_ms % HOUR_MS))
        return share if share is not None else self.default_green.get(province, 0.0)

    def green_shares(self, provinces: list[str], event_ms: np.ndarray) -> np.ndarray:
        """`green_share` of each sample of a batch, looked up once per province and hour."""
        names, province = np.unique(np.asarray(provinces, dtype=object), return_inverse=True)
        hour = event_ms - event_ms % HOUR_MS
        pairs, inverse = np.unique(np.stack([province.reshape(-1), hour]), axis=1, return_inverse=True)
        shares = [self.green_share(names[p], h) for p, h in pairs.T.tolist()]
        return np.asarray(shares, dtype=np.float64)[inverse.reshape(-1)]

    async def _on_message(self, topic: str, msg: Any) -> None:
        spec = self.topics.spec(topic)
        try:
            record = self.codec.decode_as(spec.schema, msg.value)
        except DecodeError:
            return  # the sink reports it
        if spec is REGISTRY:
            self.register(record)
        else:
            hour = int(record["hour_start"].timestamp() * 1000)
            self.green[(record["province"], hour)] = record["green_share"]

    async def caught_up(self, timeout_s: float = 2.0) -> bool:
        """Waits until every registration on the topic now has been read (False when `timeout_s` ran out
        first): a node's first telemetry may overtake its registration, and a stop its pause."""
        consumer = self._consumer
        if consumer is None:
            return False
        name = self.topics.name(REGISTRY)
        parts = [tp for tp in consumer.assignment() if tp.topic == name]
        ends = await consumer.end_offsets(parts)
        deadline = asyncio.get_running_loop().time() + timeout_s
        while any([await consumer.position(tp) < end for tp, end in ends.items()]):
            if asyncio.get_running_loop().time() > deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    async def run(self, settings: Settings) -> None:
        """Reads both topics to their end (then `ready` is set) and follows them until cancelled."""
        consumer = self._consumer = AIOKafkaConsumer(**consumer_kwargs(settings, None))
        await consumer.start()
        try:
            await read_to_end(consumer, [self.topics.name(REGISTRY), self.topics.name(GRID_SIGNAL)], self._on_message)
            self.ready.set()
            with contextlib.suppress(asyncio.CancelledError):
                await follow(consumer, self._on_message, asyncio.Event())
        finally:
            await consumer.stop()


def _scopes(reg: dict[str, Any]) -> list[tuple[str, str]]:
    return [(kind, reg["node_id"] if kind == "node" else reg[kind]) for kind in SCOPE_KINDS]
