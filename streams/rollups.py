"""Rolling utilisation, power, PUE, green share and free capacity per node, cluster, hub and province.

Two steps, so that N workers can split the telemetry and still agree on one number per scope:
`aggregate` (run by the telemetry intake) sums each worker's samples into 10-s panes with NumPy and hands
each closed pane on to `monitor.pane`, keyed so one worker owns each scope; `scope_rollups` merges the
partial panes into the hopping windows, publishes them on `monitor.rollup`, and judges the alerts that
need a whole scope: sustained overload, PUE, green share, and tidal imbalance between hubs.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from suanwang.bus import event
from suanwang.schemas.topics import PANE, ROLLUP
from suanwang.streams.app import Context
from suanwang.streams.windows import (
    PANE_MS,
    SCOPE_KINDS,
    EventClock,
    HoppingWindows,
    OpenPanes,
    Pane,
    Samples,
    Window,
    pane_sums,
    rollup_fields,
)

CLOSE_EVERY_S = 1.0
SHARED_SHARDS = {"hub", "province"}  # every hub on one worker, so it can compare them
UTIL_MARGIN = 0.1


def samples_of(records: list[dict[str, Any]], ctx: Context) -> Samples:
    """Columns of a batch of valid telemetry, joined with registrations and grid hours."""
    facts = ctx.facts
    regs = [facts.nodes[r["node_id"]] for r in records]
    event_ms = np.fromiter((int(r["event_time"].timestamp() * 1000) for r in records), np.int64, len(records))

    def column(name: str, rows: list[dict[str, Any]] = records) -> np.ndarray:
        return np.fromiter((r[name] for r in rows), np.float64, len(rows))

    return Samples(
        event_ms=event_ms,
        scope_keys={kind: [r["node_id" if kind == "node" else kind] for r in records] for kind in SCOPE_KINDS},
        cpu=column("cpu_util"),
        mem=column("memory_util"),
        acc=column("accelerator_util"),
        power_kw=column("power_kw"),
        pue=column("pue", regs),
        green=np.fromiter(
            (facts.green_share(r["province"], int(ms)) for r, ms in zip(records, event_ms, strict=True)),
            np.float64,
            len(records),
        ),
        compute_class=[g["compute_class"] for g in regs],
        cpu_milli=column("cpu_milli", regs),
        accelerators=column("accelerators", regs),
    )


def register(ctx: Context) -> Callable[[list[dict[str, Any]]], Awaitable[None]]:
    """Registers `scope_rollups` and returns the step that sums telemetry batches into panes."""
    settings = ctx.settings
    lateness_ms = int(settings.window_lateness_s * 1000)
    open_panes = OpenPanes(lateness_ms)
    windows = HoppingWindows(grace_ms=lateness_ms)
    telemetry_clock = EventClock()  # the newest telemetry aggregated here
    pane_clock = EventClock()  # the end of the newest pane handed on, plus lateness, moving with the wall clock

    async def hand_on_panes() -> None:
        for kind, key, start, pane in open_panes.close(telemetry_clock.now_ms()):
            shard = kind if kind in SHARED_SHARDS else key
            await ctx.send(
                PANE, event(shard=shard, scope_kind=kind, scope_key=key, pane_start=start, **pane.to_record())
            )

    async def aggregate(records: list[dict[str, Any]]) -> None:
        """Sums a batch of valid telemetry into the open panes and hands on the panes now closed."""
        if records:
            batch = samples_of(records, ctx)
            telemetry_clock.saw(int(batch.event_ms.max()))
            ctx.counts["samples_aggregated"] += len(records)
            for kind, key, start, pane in pane_sums(batch):
                open_panes.add(kind, key, start, pane)
        await hand_on_panes()

    async def publish(closed: list[Window]) -> None:
        by_end: dict[tuple[str, int, int], list[dict[str, Any]]] = defaultdict(list)
        for window in closed:
            nodes_total = (
                1 if window.scope_kind == "node" else ctx.facts.scope_totals[(window.scope_kind, window.scope_key)]
            )
            rollup = rollup_fields(window, nodes_total)
            await ctx.send(ROLLUP, event(**rollup))
            await judge_scope(rollup, window)
            by_end[(window.scope_kind, window.length_ms, window.end_ms)].append(rollup)
        for (kind, length_ms, _end), group in by_end.items():
            if kind in SHARED_SHARDS and length_ms == 60_000:
                await judge_imbalance(kind, group)

    async def judge_scope(r: dict[str, Any], window: Window) -> None:
        kind, key = r["scope_kind"], r["scope_key"]
        if r["window_s"] != 300:
            return
        if kind == "node" and window.panes >= 0.8 * window.length_ms / PANE_MS:
            load = max(r["cpu_util_mean"], r["accelerator_util_mean"])
            # fires only when every sample of 5 min was over; clears once the mean is back under by the margin
            value = r["load_min"] if f"overload:node:{key}" not in ctx.alerts.raised else load
            await ctx.alerts.judge(
                "overload",
                kind,
                key,
                value,
                settings.alert_overload_util,
                UTIL_MARGIN,
                f"{key} above {settings.alert_overload_util:.0%} for 5 min (mean {load:.0%})",
            )
        if kind == "cluster" and r["power_kw_mean"] > 0:
            await ctx.alerts.judge(
                "pue",
                kind,
                key,
                r["pue"],
                settings.alert_pue_max,
                0.02,
                f"{key} PUE {r['pue']:.2f} above the policy {settings.alert_pue_max:.2f}",
            )
            await ctx.alerts.judge(
                "green_share",
                kind,
                key,
                r["green_share"],
                settings.alert_green_share_min,
                0.02,
                f"{key} green share {r['green_share']:.0%} under {settings.alert_green_share_min:.0%}",
                above=False,
            )

    async def judge_imbalance(kind: str, group: list[dict[str, Any]]) -> None:
        loads = {r["scope_key"]: max(r["cpu_util_mean"], r["accelerator_util_mean"]) for r in group}
        busiest = max(loads, key=loads.__getitem__)
        saturated = loads[busiest] > settings.alert_saturated_util
        for key, load in loads.items():
            idle = saturated and key != busiest and load < settings.alert_idle_util
            await ctx.alerts.set(
                f"imbalance:{kind}:{key}",
                "imbalance",
                kind,
                key,
                idle,
                load,
                settings.alert_idle_util,
                f"{key} idle at {load:.0%} while {busiest} is at {loads[busiest]:.0%}: dispatch should move work",
            )

    @ctx.app.agent(ctx.topic(PANE), name="scope_rollups")
    async def scope_rollups(stream: Any) -> None:
        async for events in stream.take_events(settings.sink_batch_size, within=CLOSE_EVERY_S):
            for ev in events:
                p = ctx.decode(ev)
                if p is None:
                    continue
                pane_clock.saw(p["pane_start"] + PANE_MS + lateness_ms)
                pane = Pane.from_record(p)
                if not windows.add(p["scope_kind"], p["scope_key"], p["pane_start"], pane, pane_clock.now_ms()):
                    ctx.counts[f"panes_too_late:{p['scope_kind']}"] += 1
            await publish(windows.close(pane_clock.now_ms()))

    @ctx.app.timer(CLOSE_EVERY_S, name="close_quiet_windows")
    async def close_quiet_windows() -> None:
        """Closes panes and windows of a stream that went quiet: the event clocks keep moving."""
        await hand_on_panes()
        await publish(windows.close(pane_clock.now_ms()))

    return aggregate
