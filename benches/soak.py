"""`suanwang bench soak`: the whole platform for minutes on end, sampled at intervals for what degrades slowly.

Each sample records every service's resident memory, the consumer lag of the workers and the dispatcher
(newest offset minus committed offset, summed over the topics they read, and in seconds: the age of the
oldest message not committed), and the dispatch latency of
the interval (request produced to placement consumed). The summary gives each figure's trend: memory
growth in MB per minute (a least-squares slope over the samples after the first minute), lag at the end
and at its worst (in messages and in seconds), and the p99 of each half of the run.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import psutil

from suanwang.bus import Lag, batches_held
from suanwang.ddl import DATABASE
from suanwang.devstack.runtime import Monitor, Platform
from suanwang.dispatcher.tiers import Scope, dispatcher_group
from suanwang.schemas.topics import (
    ALL_TOPICS,
    PANE_CHUNK,
    PLACEMENT,
    TASK_LIFECYCLE,
    TASK_REQUEST,
    TELEMETRY,
    TELEMETRY_FRAME,
    Topics,
)
from suanwang.schemas.values import COLLECTOR_SILENT, NODE_OFFLINE
from suanwang.settings import Settings
from suanwang.store import Store
from suanwang.streams.app import worker_group
from suanwang.streams.rules import Rules

SETTLE_S = 60.0  # memory grows while caches and numba warm up: the slope starts after this
AROUND_ALERT_MS = (120_000, 60_000)  # where a node_offline alert's silence must show in the node's own samples


class Sampler:
    """Called on every tick of the platform; takes a sample every `every_s` seconds, and once `count_after_s`
    has passed counts the batches each topic's log holds (`batches`)."""

    def __init__(self, every_s: float, count_after_s: float = float("inf")) -> None:
        self.every_s = every_s
        self.count_after_s = count_after_s
        self.batches: dict[str, int] = {}
        self.samples: list[dict[str, Any]] = []
        self._next = 0.0
        self._seen_latencies = 0
        self._started = time.monotonic()
        self._broker_cpu: tuple[float, float] | None = None  # (monotonic, CPU seconds) of the broker at the last sample

    async def __call__(self, platform: Platform, monitor: Monitor) -> None:
        now = time.monotonic()
        if not self.batches and now - self._started >= self.count_after_s:  # after the last sample: it reads it all
            topics = Topics(platform.settings.topic_prefix)
            held = await batches_held(platform.settings, [topics.name(spec) for spec in ALL_TOPICS])
            self.batches = {spec.name: held[topics.name(spec)] for spec in ALL_TOPICS}
            return
        if now < self._next:
            return
        self._next = now + self.every_s
        latencies = monitor.latency_ms[self._seen_latencies :]
        self._seen_latencies = len(monitor.latency_ms)
        self.samples.append(
            {
                "t_s": round(now - self._started, 1),
                "rss_mb": {c.name: _rss_mb(c.proc.pid) for c in platform.children if c.alive and c.proc},
                **self._broker(platform, now),
                **await consumer_lag(platform.settings),
                "placements": len(latencies),
                "dispatch_p99_ms": round(float(np.percentile(latencies, 99)), 2) if latencies else None,
            }
        )

    def _broker(self, platform: Platform, now: float) -> dict[str, Any]:
        """The embedded broker's memory, and its CPU since the last sample in cores: its cost grows with its log."""
        pid = platform.broker.pid if platform.broker and platform.broker.alive() else None
        if pid is None:
            return {}
        times = psutil.Process(pid).cpu_times()
        last, self._broker_cpu = self._broker_cpu, (now, times.user + times.system)
        cores = round((self._broker_cpu[1] - last[1]) / (now - last[0]), 2) if last else None
        return {"broker_mb": _rss_mb(pid), "broker_cores": cores}


def _rss_mb(pid: int) -> float:
    """Resident memory of a service and the processes it started."""
    process = psutil.Process(pid)
    total = process.memory_info().rss + sum(c.memory_info().rss for c in process.children(recursive=True))
    return round(total / 2**20, 1)


async def consumer_lag(settings: Settings) -> dict[str, dict[str, Any]]:
    """Messages not yet committed by the workers' group (telemetry, the pane chunks its windows merge, and
    what it stores of dispatch) and by the national dispatcher's group (`lag`), and how long ago the oldest
    of them was written (`lag_s`, and by topic: which one holds a group back)."""
    topics = Topics(settings.topic_prefix)
    groups = {
        "worker": (worker_group(settings), [TELEMETRY, TELEMETRY_FRAME, PANE_CHUNK, PLACEMENT, TASK_REQUEST]),
        "dispatcher": (dispatcher_group(Scope("national")), [TASK_REQUEST, TASK_LIFECYCLE]),
    }
    named = {name: (group, [topics.name(s) for s in specs]) for name, (group, specs) in groups.items()}
    async with Lag(settings) as lag:
        ages = {name: await lag.behind_s_by_topic(*read) for name, read in named.items()}
        return {
            "lag": {name: await lag.behind(*read) for name, read in named.items()},
            "lag_s": {name: round(max(by_topic.values(), default=0.0), 1) for name, by_topic in ages.items()},
            "lag_s_by_topic": {name: {t: round(s, 1) for t, s in by_topic.items()} for name, by_topic in ages.items()},
        }


def summarise(samples: list[dict[str, Any]], run: dict[str, Any]) -> dict[str, Any]:
    """Trends over the samples: memory slope per service, lag at the end and at worst, p99 of each half."""
    steady = [s for s in samples if s["t_s"] >= SETTLE_S] or samples
    growth = {}
    for name in samples[0]["rss_mb"] if samples else ():
        points = [(s["t_s"] / 60, s["rss_mb"][name]) for s in steady if name in s["rss_mb"]]
        slope = float(np.polyfit(*zip(*points, strict=True), 1)[0]) if len(points) >= 2 else 0.0
        growth[name] = {
            "first_mb": samples[0]["rss_mb"][name],
            "last_mb": samples[-1]["rss_mb"].get(name),
            "growth_mb_per_min": round(slope, 2),
        }
    half = len(samples) // 2
    halves = (samples[:half], samples[half:])
    p99 = [[s["dispatch_p99_ms"] for s in part if s["dispatch_p99_ms"] is not None] for part in halves]
    return {
        "minutes": round(run["seconds"] / 60, 2),
        "samples": len(samples),
        "memory": growth,
        "lag_final": samples[-1]["lag"] if samples else {},
        "lag_max": {k: max(s["lag"][k] for s in samples) for k in (samples[0]["lag"] if samples else {})},
        "lag_s_max": {k: max(s["lag_s"][k] for s in samples) for k in (samples[0]["lag_s"] if samples else {})},
        "lag_s_max_by_topic": {
            group: {
                topic: max(s["lag_s_by_topic"][group].get(topic, 0.0) for s in samples)
                for topic in sorted({t for s in samples for t in s["lag_s_by_topic"][group]})
            }
            for group in (samples[0]["lag_s_by_topic"] if samples else {})
        },
        "broker_cores_first_last": [
            next((s["broker_cores"] for s in samples if s.get("broker_cores") is not None), None),
            samples[-1].get("broker_cores") if samples else None,
        ],
        "dispatch_p99_ms_first_half": round(float(np.median(p99[0])), 2) if p99[0] else None,
        "dispatch_p99_ms_second_half": round(float(np.median(p99[1])), 2) if p99[1] else None,
        "run": run,
        "series": samples,
    }


def offline_alerts(store: Store, silence_ms: int, kind: str = NODE_OFFLINE, scope: str = "node_id") -> dict[str, int]:
    """The alerts of `kind` (`node_offline`, or `collector_silent` by cluster) raised in the store, and how many
    their scope's own stored samples contradict: samples stamped through the silence, that came late."""
    _, alerts = store.query(
        f"SELECT scope_key, toUnixTimestamp64Milli(event_time) FROM {DATABASE}.alerts "
        "WHERE kind = {kind:String} AND NOT resolved",
        {"kind": kind},
    )
    if not alerts:
        return {"raised": 0, "false": 0}
    _, rows = store.query(
        f"SELECT {scope}, groupUniqArray(toUnixTimestamp64Milli(event_time)) FROM {DATABASE}.telemetry "
        f"WHERE {scope} IN {{keys:Array(String)}} GROUP BY {scope}",
        {"keys": sorted({key for key, _at in alerts})},
    )
    samples = {key: np.sort(np.array(times, dtype=np.int64)) for key, times in rows}
    _, span = store.query(
        "SELECT toUnixTimestamp64Milli(min(event_time)), toUnixTimestamp64Milli(max(event_time)) "
        f"FROM {DATABASE}.telemetry"
    )
    return {"raised": len(alerts), "false": contradicted(alerts, samples, silence_ms, span[0])}


def contradicted(
    alerts: list[tuple[str, int]], samples: dict[str, np.ndarray], silence_ms: int, span: tuple[int, int] | None = None
) -> int:
    """The (node, ms) offline alerts none of whose node's gaps between samples (`samples`: sorted ms), from 2
    minutes before the alert to 1 minute after, is as long as the silence bound. A real failure (the
    simulator's last a minute or more) leaves such a gap; a worker that merely fell behind does not. The
    window is cut to the run's `span` (its first and last sample of any node): the quiet before a run starts
    or after it stops is no node's silence, and would pass every alert of its first or last minute."""
    before, after = AROUND_ALERT_MS
    first, last = span if span is not None else (-np.inf, np.inf)
    count = 0
    for node, at in alerts:
        times = samples.get(node, np.zeros(0, dtype=np.int64))
        start, end = max(at - before, first), min(at + after, max(last, at))
        near = times[(times >= start) & (times <= end)]
        edges = np.concatenate(([start], near, [end]))
        count += bool(np.diff(edges).max() < silence_ms)
    return count


def soak(settings: Settings, minutes: float, every_s: float) -> dict[str, Any]:
    sampler = Sampler(every_s, count_after_s=minutes * 60 - every_s)
    run = Platform(settings, live=False, on_tick=sampler).run(minutes * 60)
    figures = summarise(sampler.samples, run)
    figures["batches_held"] = sampler.batches  # by topic, near the end: what the embedded broker's cost grows with
    store = Store(settings)
    try:
        silence_ms = Rules(settings).silence_ms
        figures["node_offline"] = offline_alerts(store, silence_ms)
        quiet = offline_alerts(store, silence_ms, COLLECTOR_SILENT, "cluster")
        # a collector alert its cluster's samples contradict was not wrong: its frames, stamped in time, came late
        figures["collector_silent"] = {"raised": quiet["raised"], "late": quiet["false"]}
    finally:
        store.close()
    return figures
