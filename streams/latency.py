"""Latency per tumbling minute: RTT per hub pair against its tier, and decision latency per dispatcher scope.

Probes are keyed by their origin hub, so one worker sees every probe of a pair. Decisions are keyed by
task; they are regrouped by scope (a Faust repartition topic) so one worker sees a whole scope.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from suanwang.bus import event
from suanwang.schemas.topics import LATENCY, NETWORK_PROBE, PLACEMENT, REJECTION
from suanwang.streams.app import Context
from suanwang.streams.windows import EventClock, percentiles
from suanwang.topology import load_network

WINDOW_MS = 60_000
CLOSE_EVERY_S = 1.0


def pair_tiers() -> dict[tuple[str, str], int | None]:
    """The tightest latency tier each hub pair's modelled RTT meets; None when it meets none."""
    network = load_network()
    rtt = network.rtt_matrix()
    ids = network.hub_ids
    tiers = sorted(network.latency.tiers_ms)
    return {
        (a, b): next((t for t in tiers if rtt[i, j] <= t), None) for i, a in enumerate(ids) for j, b in enumerate(ids)
    }


class Minutes:
    """Values per (scope kind, scope key, minute), handed out once the clock is a minute plus lateness past."""

    def __init__(self, lateness_ms: int) -> None:
        self.lateness_ms = lateness_ms
        self.clock = EventClock()
        self.values: dict[tuple[str, str, int], list[tuple[float, ...]]] = defaultdict(list)

    def add(self, kind: str, key: str, event_ms: int, *values: float) -> None:
        self.clock.saw(event_ms)
        self.values[(kind, key, event_ms - event_ms % WINDOW_MS)].append(values)

    def close(self) -> list[tuple[str, str, int, np.ndarray]]:
        now = self.clock.now_ms()
        due = [k for k in self.values if k[2] + WINDOW_MS + self.lateness_ms <= now]
        return [(kind, key, start, np.asarray(self.values.pop((kind, key, start)))) for kind, key, start in due]


def register(ctx: Context) -> None:
    settings = ctx.settings
    lateness_ms = int(settings.window_lateness_s * 1000)
    probes = Minutes(lateness_ms)
    decisions = Minutes(lateness_ms)
    tiers = pair_tiers()

    async def publish_probes() -> None:
        for _kind, key, start, values in probes.close():
            tier = tiers.get(tuple(key.split(">")))
            stats = percentiles(values[:, 0])
            await ctx.send(
                LATENCY,
                event(
                    scope_kind="hub_pair", scope_key=key, window_start=start, window_end=start + WINDOW_MS,
                    samples=len(values), tier_ms=tier, bandwidth_gbps_p50=float(np.median(values[:, 1])),
                    deferred=0, deferral_s_mean=None, **stats,
                ),
            )  # fmt: skip
            if tier is not None:
                await ctx.alerts.apply(ctx.rules.latency(key, stats["p99_ms"], tier))

    async def publish_decisions() -> None:
        for _kind, scope, start, values in decisions.close():
            deferral = values[:, 1][values[:, 1] > 0]
            await ctx.send(
                LATENCY,
                event(
                    scope_kind="dispatch", scope_key=scope, window_start=start, window_end=start + WINDOW_MS,
                    samples=len(values), tier_ms=None, bandwidth_gbps_p50=None, deferred=len(deferral),
                    deferral_s_mean=float(deferral.mean()) if len(deferral) else None, **percentiles(values[:, 0]),
                ),
            )  # fmt: skip

    @ctx.app.agent(ctx.topic(NETWORK_PROBE), name="hub_pair_latency")
    async def hub_pair_latency(stream: Any) -> None:
        await ctx.facts.ready.wait()

        async def take_probe(events: list[Any]) -> None:
            for ev in events:
                p = ctx.valid(ev)
                if p is not None:
                    ms = int(p["event_time"].timestamp() * 1000)
                    probes.add("hub_pair", f"{p['from_hub']}>{p['to_hub']}", ms, p["rtt_ms"], p["bandwidth_gbps"])
            await publish_probes()

        async for ev in stream.events():
            await ctx.contain.batch("hub_pair_latency", [ev], take_probe)

    def scope_of(value: bytes) -> bytes:
        try:
            return ctx.codec.decode(value)[1]["scope"].encode()
        except (ValueError, KeyError):
            return b""  # undecodable: the sink reports it; it is skipped below

    async def take_decisions(events: list[Any]) -> None:
        for ev in events:
            try:
                _schema, d = ctx.codec.decode(ev.value)
            except ValueError:
                continue
            decided = d["event_time"].timestamp()
            wait_s = max(0.0, d["start_at"].timestamp() - decided) if "start_at" in d else 0.0
            ms = int(decided * 1000)
            decisions.add("dispatch", d["scope"], ms, (decided - d["request_time"].timestamp()) * 1000, wait_s)
        await publish_decisions()

    async def decided(stream: Any, regrouped_as: str) -> None:
        async for ev in stream.group_by(scope_of, name=regrouped_as).events():
            await ctx.contain.batch(regrouped_as, [ev], take_decisions)

    # one agent per topic (Faust regroups one topic at a time); both regrouped topics are keyed by scope, so
    # the same worker holds a scope's placements and rejections
    @ctx.app.agent(ctx.topic(PLACEMENT), name="placement_latency")
    async def placement_latency(stream: Any) -> None:
        await decided(stream, "placements_by_scope")

    @ctx.app.agent(ctx.topic(REJECTION), name="rejection_latency")
    async def rejection_latency(stream: Any) -> None:
        await decided(stream, "rejections_by_scope")

    @ctx.app.timer(CLOSE_EVERY_S, name="close_quiet_minutes")
    @ctx.contain.timer("close_quiet_minutes")
    async def close_quiet_minutes() -> None:
        await publish_probes()
        await publish_decisions()
