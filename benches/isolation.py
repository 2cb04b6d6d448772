"""`suanwang bench isolation`: the platform at its default rate while analysts hammer `/api/sql`.

A run has three phases of equal length: quiet (the same-run baseline), loaded (ANALYSTS clients, each sending
a heavy query as soon as the last is answered, waiting out a 429's Retry-After), and quiet again. Throughout,
a prober times `GET /api/hubs`. After the run, ClickHouse's rows are set beside the counts read from Kafka,
and each phase's sink delay (a sample's insert time less its event time) and the gaps between its flushes
are read from the stored rows.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import aiohttp
import numpy as np

from suanwang.devstack.runtime import Monitor, Platform
from suanwang.errors import SuanwangError
from suanwang.settings import Settings
from suanwang.store import DATABASE, Store

ANALYSTS = 10
PROBE_S = 0.25
PHASES = ("quiet_before", "loaded", "quiet_after")
HEAVY = (  # each runs until a limit cuts it: rows read, or execution time
    "SELECT sleep(3), number FROM system.numbers ORDER BY number DESC LIMIT 1",
    f"SELECT count() FROM {DATABASE}.telemetry AS a CROSS JOIN {DATABASE}.telemetry AS b WHERE a.cpu_util < b.cpu_util",
)


class Load:
    """Started on the platform's first tick, once the worker's API is up; ends on its own after three phases."""

    def __init__(self, settings: Settings, seconds: float) -> None:
        self.settings = settings
        self.phase_s = seconds / len(PHASES)
        self.hubs_ms: dict[str, list[float]] = {p: [] for p in PHASES}
        self.answers: Counter[str] = Counter()
        self.windows: dict[str, tuple[int, int]] = {}  # phase: wall-clock ms it ran from and to
        self._task: asyncio.Task[None] | None = None

    async def __call__(self, platform: Platform, monitor: Monitor) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(platform))
        elif self._task.done():
            self._task.result()  # a failure of the bench itself is raised, not lost

    async def _run(self, platform: Platform) -> None:
        base = self.settings.api_url_path.read_text().strip()
        async with aiohttp.ClientSession(base, timeout=aiohttp.ClientTimeout(total=120)) as http:
            for phase in PHASES:
                started, deadline = time.time(), time.monotonic() + self.phase_s
                work = [self._probe(http, phase, deadline)]
                if phase == "loaded":  # the phase ends with the last answer: a query a limit cuts runs past it
                    work += [self._analyst(http, n, deadline) for n in range(ANALYSTS)]
                await asyncio.gather(*work)
                self.windows[phase] = (int(started * 1000), int(time.time() * 1000))
        platform.stopping.set()

    async def _probe(self, http: aiohttp.ClientSession, phase: str, deadline: float) -> None:
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            async with http.get("/api/hubs") as resp:
                await resp.read()
                self.answers[f"hubs {resp.status}"] += 1
            self.hubs_ms[phase].append((time.perf_counter() - t0) * 1000)
            await asyncio.sleep(PROBE_S)

    async def _analyst(self, http: aiohttp.ClientSession, n: int, deadline: float) -> None:
        sent = n
        while time.monotonic() < deadline:
            async with http.post("/api/sql", json={"query": HEAVY[sent % len(HEAVY)]}) as resp:
                body = await resp.json()
                self.answers[f"sql {resp.status}"] += 1
                if resp.status == 429:
                    await asyncio.sleep(float(resp.headers.get("Retry-After", "1")))
                elif resp.status not in (200, 422):
                    raise SuanwangError(f"/api/sql answered {resp.status}: {body}")
            sent += 1


def _ms(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def sink_figures(store: Store, windows: dict[str, tuple[int, int]]) -> dict[str, dict[str, float | None]]:
    """Per phase, over the telemetry sampled in it: the sink's delay (insert time less event time, p99 and worst)
    and the longest gap between two of its flushes (an insert stamps every row of its batch alike)."""
    out = {}
    for phase, (start, end) in windows.items():
        _, rows = store.query(
            "SELECT quantile(0.99)(d), max(d), count() FROM (SELECT toUnixTimestamp64Milli(ingested_at) - "
            f"toUnixTimestamp64Milli(event_time) AS d FROM {DATABASE}.telemetry "
            "WHERE toUnixTimestamp64Milli(event_time) BETWEEN {a:Int64} AND {b:Int64})",
            {"a": start, "b": end},
        )
        p99, worst, n = rows[0]
        _, flushes = store.query(
            f"SELECT DISTINCT toUnixTimestamp64Milli(ingested_at) AS at FROM {DATABASE}.telemetry "
            "WHERE at BETWEEN {a:Int64} AND {b:Int64} ORDER BY at",
            {"a": start, "b": end},
        )
        gaps = np.diff([at for (at,) in flushes])
        out[phase] = {
            "delay_p99_ms": round(float(p99), 1),
            "delay_max_ms": float(worst),
            "flushes": len(flushes),
            "flush_gap_max_ms": float(gaps.max()) if len(gaps) else None,
            "samples": int(n),
        }
    return out


def isolation(settings: Settings, seconds: float) -> dict[str, Any]:
    """Run the platform for SECONDS with the load in its middle third; the figures of each phase side by side."""
    load = Load(settings, seconds)
    run = Platform(settings, live=False, on_tick=load).run(None)
    if len(load.windows) != len(PHASES):
        raise SuanwangError(f"the run ended after phases {list(load.windows)}")
    store = Store(settings)
    try:
        sink = sink_figures(store, load.windows)
    finally:
        store.close()
    kafka = {"telemetry": run["telemetry_events"], "placements": run["placements"], "alerts": run["alerts"]}
    stored = {t: run["clickhouse_rows"][t] for t in kafka}
    phases = {
        p: {"hubs_p50_ms": _ms(load.hubs_ms[p], 50), "hubs_max_ms": _ms(load.hubs_ms[p], 100), **sink[p]}
        for p in PHASES
    }
    return {
        "analysts": ANALYSTS,
        "answers": dict(sorted(load.answers.items())),
        "sink_flush_s": settings.sink_flush_s,
        "phases": phases,
        "kafka_rows": kafka,
        "clickhouse_rows": stored,
        "rows_match": stored == kafka,
        "run": run,
    }
