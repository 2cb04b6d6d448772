"""Node health: a node silent for a few telemetry intervals goes offline, and back online when it reports.

The `node_offline` alert (and its resolution) is also the health event the dispatcher consumes. Silence is
measured on the event clock of the node's cluster within its telemetry partition (one collector's stream),
which keeps moving with the wall clock when that stream is quiet: a partition read behind the others (a
busy worker, a skewed fetch), or a collector catching up on a backlog beside clusters that are current,
does not make its nodes look silent. Each worker watches the nodes of the partitions it holds.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from suanwang.streams.app import Context
from suanwang.streams.readings import Readings
from suanwang.streams.rules import OVERHEATING
from suanwang.streams.windows import EventClock

CHECK_EVERY_S = 1.0


Stream = tuple[int, str]  # (telemetry partition, cluster): one collector's samples as this worker reads them


class Silence:
    """When each node last reported, on its stream's event clock; which nodes are silent past a bound."""

    def __init__(self, silence_ms: int) -> None:
        self.silence_ms = silence_ms
        self.last_seen: dict[str, tuple[int, Stream]] = {}  # node -> (event ms, its stream)
        self.clocks: dict[Stream, EventClock] = {}
        self.offline: set[str] = set()

    def saw(self, node: str, event_ms: int, partition: int, cluster: str = "") -> int | None:
        """Notes a report; the ms it was silent for if it was offline (it is back), else None."""
        stream = (partition, cluster)
        self.clocks.setdefault(stream, EventClock()).saw(event_ms)
        previous = self.last_seen.get(node, (0, stream))[0]
        self.last_seen[node] = (max(event_ms, previous), stream)
        if node in self.offline:
            self.offline.discard(node)
            return event_ms - previous
        return None

    def newly_silent(self, paused: Callable[[str], bool] = lambda _node: False) -> list[tuple[str, int]]:
        """Nodes silent longer than the bound on their own stream's clock, not yet offline, and for how long;
        a node `paused` (its collector stopped on purpose) is quiet, not silent."""
        found = []
        for node, (ms, stream) in self.last_seen.items():
            silent = self.clocks[stream].now_ms() - ms
            if node not in self.offline and silent > self.silence_ms and not paused(node):
                self.offline.add(node)
                found.append((node, silent))
        return found

    def forget(self, partitions: set[int]) -> None:
        """Partitions handed to another worker: their nodes are watched there now."""
        for node in [n for n, (_ms, stream) in self.last_seen.items() if stream[0] in partitions]:
            del self.last_seen[node]
            self.offline.discard(node)
        for stream in [s for s in self.clocks if s[0] in partitions]:
            del self.clocks[stream]


def register(ctx: Context) -> Callable[[Readings, np.ndarray], Awaitable[None]]:
    """Registers the silence check and returns the step that watches telemetry batches."""
    silence = Silence(ctx.rules.silence_ms)

    @ctx.app.on_partitions_revoked.connect
    async def forget_revoked(app: Any, revoked: set[Any], **_: Any) -> None:
        silence.forget({ctx.source(tp.topic, tp.partition) for tp in revoked} - {None})

    async def alert(node: str, is_offline: bool, silent_ms: int) -> None:
        await ctx.alerts.apply(ctx.rules.silence(node, is_offline, silent_ms))

    async def watch(valid: Readings, sources: np.ndarray) -> None:
        """Notes when each node of a batch of valid telemetry last reported, and judges its temperature (only
        where it is hot, or its node was or becomes overheated: elsewhere the rule says nothing new)."""
        nodes, clusters = valid.node_ids, valid.places["cluster"]
        for node, at, source, cluster in zip(nodes, valid.event_ms.tolist(), sources.tolist(), clusters, strict=True):
            back_after = silence.saw(node, at, source, cluster)
            if back_after is not None:
                await alert(node, False, back_after)
        temps = valid.figures["inlet_temp_c"]
        hot = temps > ctx.settings.alert_inlet_temp_c
        watched = ctx.alerts.raised_keys(OVERHEATING, "node") | {nodes[i] for i in np.flatnonzero(hot).tolist()}
        for i in [i for i, node in enumerate(nodes) if node in watched] if watched else ():
            await ctx.alerts.apply(ctx.rules.inlet(nodes[i], clusters[i], temps[i].item()))

    @ctx.app.timer(CHECK_EVERY_S, name="find_silent_nodes")
    @ctx.contain.timer("find_silent_nodes")
    async def find_silent_nodes() -> None:
        if ctx.draining:  # a worker stopping reads what is left, not what is live: it judges no silence
            return
        for node, silent_ms in silence.newly_silent(paused):
            await alert(node, True, silent_ms)

    def paused(node: str) -> bool:
        return bool(ctx.facts.nodes.get(node, {}).get("paused"))

    return watch
