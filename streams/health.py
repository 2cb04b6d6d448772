"""Node health: a node silent for a few telemetry intervals goes offline, and back online when it reports.

The `node_offline` alert (and its resolution) is also the health event the dispatcher consumes. Silence is
measured on the telemetry event clock, which keeps moving with the wall clock when everything is quiet.
Each worker watches the nodes of the partitions it holds.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from suanwang.schemas.topics import TELEMETRY
from suanwang.streams.app import Context
from suanwang.streams.windows import EventClock

TEMP_MARGIN_C = 3.0
CHECK_EVERY_S = 1.0


def register(ctx: Context) -> Callable[[list[tuple[Any, dict[str, Any]]]], Awaitable[None]]:
    """Registers the silence check and returns the step that watches telemetry batches."""
    settings = ctx.settings
    silence_ms = int(settings.offline_after_intervals * settings.telemetry_interval_s * 1000)
    last_seen: dict[str, tuple[int, int]] = {}  # node -> (event ms, partition)
    offline: set[str] = set()
    clock = EventClock()  # its own: the clock of an agent further ahead would find nodes silent

    @ctx.app.on_partitions_revoked.connect
    async def forget_revoked(app: Any, revoked: set[Any], **_: Any) -> None:
        gone = {tp.partition for tp in revoked if tp.topic == ctx.topics.name(TELEMETRY)}
        for node in [n for n, (_ms, partition) in last_seen.items() if partition in gone]:
            del last_seen[node]
            offline.discard(node)

    async def mark(node: str, is_offline: bool, silent_s: float) -> None:
        if is_offline:
            offline.add(node)
        else:
            offline.discard(node)
        await ctx.alerts.set(
            f"node_offline:node:{node}", "node_offline", "node", node, is_offline, silent_s,
            silence_ms / 1000, f"{node} silent for {silent_s:.0f} s",
        )  # fmt: skip

    async def watch(valid: list[tuple[Any, dict[str, Any]]]) -> None:
        """Notes when each node of a batch of valid telemetry last reported, and judges its temperature."""
        for ev, t in valid:
            await saw(t, ev.message.partition)

    async def saw(t: dict[str, Any], partition: int) -> None:
        node, ms = t["node_id"], int(t["event_time"].timestamp() * 1000)
        clock.saw(ms)
        previous = last_seen.get(node, (0, 0))[0]
        last_seen[node] = (max(ms, previous), partition)
        if node in offline:
            await mark(node, False, (ms - previous) / 1000)
        temp = t["inlet_temp_c"]
        await ctx.alerts.judge(
            "overheating", "node", node, temp, settings.alert_inlet_temp_c, TEMP_MARGIN_C,
            f"{node} inlet {temp:.1f} °C in {t['cluster']}",
        )  # fmt: skip

    @ctx.app.timer(CHECK_EVERY_S, name="find_silent_nodes")
    async def find_silent_nodes() -> None:
        now = clock.now_ms()
        for node, (ms, _partition) in list(last_seen.items()):
            if node not in offline and now - ms > silence_ms:
                await mark(node, True, (now - ms) / 1000)

    return watch
