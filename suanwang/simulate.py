"""The simulator service: drives the platform with the reference model (or a recorded trace, later)."""

from __future__ import annotations

import asyncio
import heapq
import random
import time
from collections import Counter
from typing import Any

from suanwang.bus import EventProducer, contract_consumer, ensure_topics, event, now_ms
from suanwang.schemas.topics import (
    GRID_SIGNAL,
    NETWORK_PROBE,
    PLACEMENT,
    REGISTRY,
    TASK_LIFECYCLE,
    TASK_REQUEST,
    TELEMETRY,
    Topics,
)
from suanwang.service import announce_ready, consume
from suanwang.settings import Settings
from suanwang.topology import load_network, scaled_nodes
from suanwang.workload import NodeBehaviour, TaskGenerator, grid_signal, network_probe, registration, utc_hour_start

TICK_S = 0.02
PROBE_INTERVAL_S = 5.0


class Simulator:
    """Publishes registrations, then telemetry, grid signals, probes and tasks at the configured rates."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.network = load_network()
        self.nodes = scaled_nodes(self.network, settings.sim_nodes)
        rng = random.Random(settings.sim_seed)
        self.behaviour = NodeBehaviour(self.nodes, self.network, random.Random(rng.random()))
        self.tasks = TaskGenerator(self.network, random.Random(rng.random()))
        self.rng = random.Random(rng.random())
        self.producer = EventProducer(settings)
        self.topics = Topics(settings.topic_prefix)
        self.rtt = self.network.rtt_matrix()
        self.running: Counter[str] = Counter()
        self._finishes: list[tuple[int, str, str]] = []  # (due ms, task id, node id)
        self._durations: dict[str, float | None] = {}  # task id -> duration_s, until placed
        self._next_node = 0

    async def _send(self, spec: Any, record: dict[str, Any]) -> None:
        await self.producer.send(spec, record)

    async def _grid_hour(self, hour_start: int) -> None:
        """Signals for this hour and the 23 after it, per province of every hub site."""
        sites = {(c.province, hub_id) for hub_id, h in self.network.hubs.items() for c in h.clusters.values()}
        sites |= {(h.city.province, hub_id) for hub_id, h in self.network.hubs.items()}
        for ahead in range(24):
            for province, hub in sorted(sites):
                await self._send(
                    GRID_SIGNAL, grid_signal(self.network, province, hub, hour_start + ahead * 3_600_000, self.rng)
                )

    async def _probes(self) -> None:
        hubs = self.network.hub_ids
        for i, a in enumerate(hubs):
            for j, b in enumerate(hubs):
                await self._send(NETWORK_PROBE, network_probe(self.network, a, b, float(self.rtt[i, j]), self.rng))

    async def _on_placement(self, topic: str, placement: dict[str, Any]) -> None:
        """A placed task starts now and finishes after its (time-scaled) duration."""
        now = now_ms()
        node = placement["node_id"]
        await self._send(TASK_LIFECYCLE, event(task_id=placement["task_id"], node_id=node, state="STARTED"))
        self.running[node] += 1
        seconds = self._durations.pop(placement["task_id"], None) or 3600.0
        due = now + int(1000 * seconds / self.settings.sim_time_scale)
        heapq.heappush(self._finishes, (due, placement["task_id"], node))

    async def _finish_due(self, now: int) -> None:
        while self._finishes and self._finishes[0][0] <= now:
            _, task_id, node = heapq.heappop(self._finishes)
            self.running[node] -= 1
            state = "FAILED" if self.rng.random() < 0.01 else "FINISHED"
            await self._send(TASK_LIFECYCLE, event(task_id=task_id, node_id=node, state=state))

    async def run(self, stop: asyncio.Event) -> None:
        s = self.settings
        await ensure_topics(s)
        await self.producer.start()
        placements = contract_consumer(s, [PLACEMENT], "suanwang-simulator")
        try:
            await placements.start()
            for spec in self.nodes:
                await self._send(REGISTRY, registration(spec, self.network))
            hour = utc_hour_start(now_ms())
            await self._grid_hour(hour)
            await self.producer.flush()
            announce_ready("simulator")
            await asyncio.gather(
                self._drive(stop, hour),
                consume(placements, self.topics, self.producer, "simulator", self._on_placement, stop),
            )
        finally:
            await placements.stop()
            await self.producer.flush()
            await self.producer.stop()

    async def _drive(self, stop: asyncio.Event, hour: int) -> None:
        s = self.settings
        start = time.monotonic()
        next_probe = start
        node_cursor = 0.0
        telemetry_per_s = len(self.nodes) / s.sim_telemetry_interval_s
        tasks_sent = 0
        last = start
        while not stop.is_set():
            now_mono = time.monotonic()
            now = now_ms()
            if utc_hour_start(now) != hour:
                hour = utc_hour_start(now)
                await self._grid_hour(hour)
            if now_mono >= next_probe:
                await self._probes()
                next_probe += PROBE_INTERVAL_S
            node_cursor += telemetry_per_s * (now_mono - last)
            last = now_mono
            while node_cursor >= 1:
                node_cursor -= 1
                spec = self.nodes[self._next_node]
                self._next_node = (self._next_node + 1) % len(self.nodes)
                sample = self.behaviour.sample(spec, now, self.running[spec.node_id])
                if sample is not None:
                    await self._send(TELEMETRY, sample)
            due = int(s.sim_rate * (now_mono - start))
            while tasks_sent < due:
                req = self.tasks.next(now)
                self._durations[req["task_id"]] = req["duration_s"]
                await self._send(TASK_REQUEST, req)
                tasks_sent += 1
            await self._finish_due(now)
            await asyncio.sleep(TICK_S)
