"""The simulator service: drives the platform with the reference model, or replays a recorded trace."""

from __future__ import annotations

import asyncio
import heapq
import logging
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import prometheus_client as prometheus

from suanwang.bus import EventProducer, contract_consumer, ensure_topics, event
from suanwang.clock import now_ms
from suanwang.dispatcher.tiers import tier_request_topics
from suanwang.metrics import ServiceMetrics
from suanwang.process import announce_ready, consume
from suanwang.schemas.frames import frame_of
from suanwang.schemas.topics import (
    GRID_SIGNAL,
    NETWORK_PROBE,
    PLACEMENT,
    REGISTRY,
    TASK_LIFECYCLE,
    TASK_REQUEST,
    TELEMETRY,
    TELEMETRY_FRAME,
    Topics,
)
from suanwang.settings import Settings
from suanwang.simulator.trace import TraceNode, TraceTask, node_registration, task_request
from suanwang.simulator.workload import (
    IDLE,
    Held,
    NodeBehaviour,
    TaskGenerator,
    grid_signal,
    network_probe,
    registration,
    usage_telemetry,
    utc_hour_start,
)
from suanwang.topology import load_network, scaled_nodes

TICK_S = 0.02
PROBE_INTERVAL_S = 5.0
PROGRESS_INTERVAL_S = 5.0
log = logging.getLogger("suanwang.simulator.simulate")


@dataclass(frozen=True)
class Replay:
    """A recorded cluster to feed instead of the model: its nodes, its tasks in arrival order, its hub."""

    nodes: list[TraceNode]
    tasks: list[TraceTask]
    hub: str


class Simulator:
    """Publishes registrations, then telemetry, grid signals, probes and tasks at the configured rates."""

    def __init__(self, settings: Settings, replay: Replay | None = None) -> None:
        self.settings = settings
        self.network = load_network()
        self.replay = replay
        rng = random.Random(settings.sim_seed)
        self.rng = random.Random(rng.random())
        if replay is None:
            nodes = scaled_nodes(self.network, settings.sim_nodes)
            behaviour = NodeBehaviour(nodes, self.network, random.Random(rng.random()))
            self.registrations = [registration(spec, self.network) for spec in nodes]
            self._samplers = [_model_sampler(behaviour, spec) for spec in nodes]
            self._tasks = TaskGenerator(self.network, random.Random(rng.random()))
        else:
            self.registrations = [node_registration(node, self.network) for node in replay.nodes]
            self._samplers = [_usage_sampler(reg) for reg in self.registrations]
            self._archs = sorted({reg["chip_arch"] for reg in self.registrations})
        self.producer = EventProducer(settings, linger_ms=settings.bulk_linger_ms)  # telemetry and the rest
        self.requests = EventProducer(settings, self.producer.codec)  # task requests: sent at once
        self.topics = Topics(settings.topic_prefix)
        self.rtt = self.network.rtt_matrix()
        self.running: Counter[str] = Counter()
        self.used: dict[str, Held] = {}  # node id -> what its running tasks hold
        self.sent: Counter[str] = Counter()
        self.metrics = ServiceMetrics("simulator")
        self._sent_metric = prometheus.Counter(
            "suanwang_simulator_sent_total", "Records the simulator sent, by topic.", ["topic"],
            registry=self.metrics.registry,
        )  # fmt: skip
        prometheus.Gauge(
            "suanwang_simulator_running_tasks", "Tasks running on simulated nodes.", registry=self.metrics.registry
        ).set_function(lambda: sum(self.running.values()))
        self._finishes: list[tuple[int, str]] = []  # (due ms, task id) of running tasks
        self._running_tasks: dict[str, tuple[str, Held, float | None]] = {}  # task id -> (node, holds, duration_s)
        self.dead: set[str] = set()  # nodes killed: silent, their tasks gone, nothing starts on them
        self._durations: dict[str, float | None] = {}  # task id -> duration_s, until placed
        self._starts: list[tuple[int, str, dict[str, Any]]] = []  # (due ms, task id, placement) of deferred ones
        self._next_node = 0
        self._framing: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)  # cluster -> samples to frame
        last_of = {reg["cluster"]: i for i, reg in enumerate(self.registrations)}
        self._frame_ends = set(last_of.values()) if settings.sim_frames else set()  # a cluster's last node
        self._next_task = 0

    async def _sample(self, sample: dict[str, Any]) -> None:
        """A node's sample: gathered into its cluster's next frame, or (without frames) sent alone."""
        if not self.settings.sim_frames:
            await self._send(TELEMETRY, sample)
            return
        self.sent[TELEMETRY.name] += 1
        self._framing[sample["cluster"]].append(sample)

    async def _send_frame(self, cluster: str, now: int) -> None:
        """Sends a cluster's frame once each of its nodes had its turn, as a data centre's collector does."""
        samples = self._framing.pop(cluster, [])
        if samples:
            await self._send(TELEMETRY_FRAME, frame_of(samples, f"{cluster}@{now}", now))

    async def _send(self, spec: Any, record: dict[str, Any]) -> None:
        self.sent[spec.name] += 1
        self._sent_metric.labels(spec.name).inc()
        await (self.requests if spec is TASK_REQUEST else self.producer).send(spec, record)

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

    async def _on_dispatch(self, topic: str, record: dict[str, Any]) -> None:
        """What the platform decided: a placement to start, or a task it ended."""
        if self.topics.spec(topic) is TASK_LIFECYCLE:
            self._on_lifecycle(record)
        else:
            await self._on_placement(record)

    async def _on_placement(self, placement: dict[str, Any]) -> None:
        """A placed task starts at its start time (deferred ones later, time-scaled), or now."""
        now = now_ms()
        wait_ms = (placement["start_at"].timestamp() * 1000 - now) / self.settings.sim_time_scale
        if wait_ms > 0:
            heapq.heappush(self._starts, (now + int(wait_ms), placement["task_id"], placement))
        else:
            await self._start(placement, now)

    async def _start_due(self, now: int) -> None:
        while self._starts and self._starts[0][0] <= now:
            await self._start(heapq.heappop(self._starts)[2], now)

    async def _start(self, placement: dict[str, Any], now: int) -> None:
        """The task runs from now and finishes after its (time-scaled) duration; open-ended ones never do."""
        node, task_id = placement["node_id"], placement["task_id"]
        if node in self.dead or task_id in self._running_tasks:
            return  # a dead node starts nothing (the dispatcher moves the task once it is declared offline)
        seconds = self._durations.pop(task_id, None)
        await self._send(TASK_LIFECYCLE, event(task_id=task_id, node_id=node, state="STARTED"))
        self.running[node] += 1
        usage = Held(
            placement["cpu_milli"],
            placement["memory_mib"],
            placement["accelerator_milli"] * len(placement["accelerator_indices"]),
        )
        self.used[node] = self.used.get(node, IDLE) + usage
        self._running_tasks[task_id] = node, usage, seconds
        if seconds is None and self.replay is None:
            seconds = 3600.0  # the model's open-ended work is costed and run per hour
        if seconds is not None:
            heapq.heappush(self._finishes, (now + int(1000 * seconds / self.settings.sim_time_scale), task_id))

    def _stop(self, task_id: str) -> tuple[str, float | None] | None:
        """The task no longer runs (ended, or ended by the platform): its node and duration, or None if it was
        not running."""
        running = self._running_tasks.pop(task_id, None)
        if running is None:
            return None
        node, usage, seconds = running
        self.running[node] -= 1
        self.used[node] = self.used[node] - usage
        return node, seconds

    async def _finish_due(self, now: int) -> None:
        while self._finishes and self._finishes[0][0] <= now:
            _, task_id = heapq.heappop(self._finishes)
            node = self._running_tasks.get(task_id, ("", IDLE, None))[0]
            if node in self.dead or self._stop(task_id) is None:
                continue  # it was stopped, or died with its node: no end of its own
            state = "FAILED" if self.rng.random() < 0.01 else "FINISHED"
            await self._send(TASK_LIFECYCLE, event(task_id=task_id, node_id=node, state=state))

    def _on_lifecycle(self, record: dict[str, Any]) -> None:
        """The platform ended a task (preempted, or its node declared offline): it stops running here."""
        if record["state"] == "FAILED" and record["cause"]:
            stopped = self._stop(record["task_id"])
            seconds = stopped[1] if stopped else self._durations.pop(record["task_id"], None)
            if record["retry_task_id"] and seconds is not None:
                self._durations[record["retry_task_id"]] = seconds  # it runs again from the start

    def kill(self, count: int) -> list[str]:
        """Kills the `count` live nodes running the most tasks: they fall silent and their tasks are lost."""
        live = [reg["node_id"] for reg in self.registrations if reg["node_id"] not in self.dead]
        victims = sorted(live, key=lambda node: (-self.running[node], node))[:count]
        self.dead.update(victims)
        for node in victims:
            log.warning("simulator: node %s killed with %d tasks running", node, self.running[node])
        return victims

    def _due_requests(self, elapsed_s: float, now: int) -> list[dict[str, Any]]:
        """Requests due by now: at `sim_rate` from the model, or at trace arrival times scaled to real time."""
        out = []
        if self.replay is None:
            while self._next_task < int(self.settings.sim_rate * elapsed_s):
                out.append(self._tasks.next(now))
                self._next_task += 1
            return out
        tasks, trace_s = self.replay.tasks, elapsed_s * self.settings.sim_time_scale
        while self._next_task < len(tasks) and tasks[self._next_task].arrival_s <= trace_s:
            out.append(task_request(tasks[self._next_task], self._archs, self.replay.hub, self.network))
            self._next_task += 1
        return out

    def progress(self) -> str:
        total = f"/{len(self.replay.tasks)}" if self.replay else ""
        return (
            f"simulator: {self.sent[TELEMETRY.name]} telemetry, {self.sent[TASK_REQUEST.name]}{total} tasks, "
            f"{sum(self.running.values())} running, {self.sent[TASK_LIFECYCLE.name]} lifecycle events"
        )

    async def run(self, stop: asyncio.Event) -> None:
        s = self.settings
        await ensure_topics(s, tier_request_topics(s))
        self.metrics.serve(s.metrics_port)
        await self.producer.start()
        await self.requests.start()
        try:
            for reg in self.registrations:
                await self._send(REGISTRY, reg)
            hour = utc_hour_start(now_ms())
            await self._grid_hour(hour)
            await self.producer.flush()
            announce_ready("simulator")
            await asyncio.gather(self._drive_then_pause(stop, hour), self._follow_placements(stop))
        finally:
            for producer in (self.requests, self.producer):
                await producer.flush()
                await producer.stop()
            log.info(self.progress())

    async def _follow_placements(self, stop: asyncio.Event) -> None:
        """Starts placed tasks and stops those the platform ends; joining the group takes seconds, so it runs
        beside the drive, not before it."""
        placements = contract_consumer(
            self.settings, [PLACEMENT, TASK_LIFECYCLE], "suanwang-simulator", auto_commit=False
        )
        try:
            await placements.start()
            await consume(placements, self.topics, self.producer, "simulator", self._on_dispatch, stop)
        finally:
            await placements.stop()

    async def _drive_then_pause(self, stop: asyncio.Event, hour: int) -> None:
        """Drives until `stop`, then says at once that every node is paused: a stop, not an outage, so the
        worker calls none of them silent (it does not wait for the placement follower to end)."""
        await self._drive(stop, hour)
        for reg in self.registrations:
            await self._send(REGISTRY, {**reg, "event_time": now_ms(), "paused": True})
        await self.producer.flush()

    async def _drive(self, stop: asyncio.Event, hour: int) -> None:
        s = self.settings
        start = time.monotonic()
        next_probe = next_progress = start
        kill_at = start + s.sim_kill_after_s if s.sim_kill_nodes else float("inf")
        node_cursor = 0.0
        telemetry_per_s = len(self.registrations) / s.telemetry_interval_s
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
            if now_mono >= kill_at:
                self.kill(s.sim_kill_nodes)
                kill_at = float("inf")
            if now_mono >= next_progress:
                log.info(self.progress())
                next_progress += PROGRESS_INTERVAL_S
            node_cursor += telemetry_per_s * (now_mono - last)
            last = now_mono
            while node_cursor >= 1:
                node_cursor -= 1
                i = self._next_node
                self._next_node = (i + 1) % len(self.registrations)
                reg = self.registrations[i]
                if reg["node_id"] not in self.dead:
                    sample = self._samplers[i](now, self.running[reg["node_id"]], self.used.get(reg["node_id"], IDLE))
                    if sample is not None:
                        await self._sample(sample)
                if i in self._frame_ends:
                    await self._send_frame(reg["cluster"], now)
            for req in self._due_requests(now_mono - start, now):
                self._durations[req["task_id"]] = req["duration_s"]
                await self._send(TASK_REQUEST, req)
            await self._start_due(now)
            await self._finish_due(now)
            await asyncio.sleep(TICK_S)


Sampler = Callable[[int, int, Held], dict[str, Any] | None]


def _model_sampler(behaviour: NodeBehaviour, spec: Any) -> Sampler:
    return lambda now, running, _used: behaviour.sample(spec, now, running)


def _usage_sampler(reg: dict[str, Any]) -> Sampler:
    return lambda now, running, used: usage_telemetry(reg, running, used)
