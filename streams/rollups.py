"""Per-hub load and power over tumbling event-time windows, published when a window closes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from suanwang.bus import event
from suanwang.schemas.topics import ROLLUP, TELEMETRY
from suanwang.streams.app import Context

LATENESS_S = 5.0


@dataclass
class Totals:
    samples: int = 0
    cpu_sum: float = 0.0
    cpu_max: float = 0.0
    mem_sum: float = 0.0
    acc_sum: float = 0.0
    acc_max: float = 0.0
    power_sum: float = 0.0
    nodes: set[str] = field(default_factory=set)

    def add(self, t: dict[str, Any]) -> None:
        self.samples += 1
        self.cpu_sum += t["cpu_util"]
        self.cpu_max = max(self.cpu_max, t["cpu_util"])
        self.mem_sum += t["memory_util"]
        self.acc_sum += t["accelerator_util"]
        self.acc_max = max(self.acc_max, t["accelerator_util"])
        self.power_sum += t["power_kw"]
        self.nodes.add(t["node_id"])


def rollup(hub: str, start_ms: int, window_ms: int, t: Totals) -> dict[str, Any]:
    n = t.samples
    power_mean = t.power_sum / n
    # each node reported about samples/nodes times; hub power is the mean per sample times the nodes seen
    hub_kw = power_mean * len(t.nodes)
    return event(
        scope_kind="hub",
        scope_key=hub,
        window_start=start_ms,
        window_end=start_ms + window_ms,
        samples=n,
        nodes_reporting=len(t.nodes),
        cpu_util_mean=t.cpu_sum / n,
        cpu_util_max=t.cpu_max,
        memory_util_mean=t.mem_sum / n,
        accelerator_util_mean=t.acc_sum / n,
        accelerator_util_max=t.acc_max,
        power_kw_mean=hub_kw,
        energy_kwh=hub_kw * window_ms / 3_600_000,
    )


def register(ctx: Context) -> None:
    window_ms = int(ctx.settings.rollup_window_s * 1000)
    windows: dict[tuple[str, int], Totals] = {}
    watermark = {"ms": 0}

    @ctx.app.agent(ctx.topic(TELEMETRY), name="hub_rollups")
    async def hub_rollups(stream: Any) -> None:
        async for ev in stream.events():
            t = ctx.decode(ev)
            if t is None:
                continue
            ts = int(t["event_time"].timestamp() * 1000)
            start = ts - ts % window_ms
            if start + window_ms + LATENESS_S * 1000 < watermark["ms"]:
                continue  # later than the allowed lateness: its window was published already
            windows.setdefault((t["hub"], start), Totals()).add(t)
            watermark["ms"] = max(watermark["ms"], ts)
            closed = [k for k in windows if k[1] + window_ms + LATENESS_S * 1000 <= watermark["ms"]]
            for hub, wstart in closed:
                await ctx.send(ROLLUP, rollup(hub, wstart, window_ms, windows.pop((hub, wstart))))
