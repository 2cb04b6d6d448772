"""Node health: a node silent for a few telemetry intervals goes offline, and back online when it reports.

The `node_offline` alert (and its resolution) is also the health event the dispatcher consumes. Silence is
measured on the event clock of the node's cluster within its telemetry partition (one collector's stream),
which keeps moving with the wall clock when that stream is quiet: a partition read behind the others (a
busy worker, a skewed fetch), or a collector catching up on a backlog beside clusters that are current,
does not make its nodes look silent. Each worker watches the nodes of the partitions it holds.

A silence the stream's own later samples prove is called at once. One that rests on the wall clock alone (the
whole stream quiet) may only be unread: it is called once the worker has read every registration (a stop
pauses its nodes first) and has watched the node's partition up to the end offset it had when the node was
found overdue, without a sample of the node. A stalled worker reads its backlog before it judges.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, NamedTuple

import numpy as np

from suanwang.streams.app import Context
from suanwang.streams.readings import Readings
from suanwang.streams.rules import OVERHEATING
from suanwang.streams.windows import EventClock

CHECK_EVERY_S = 1.0


Stream = tuple[int, str]  # (telemetry partition, cluster): one collector's samples as this worker reads them


class Overdue(NamedTuple):
    """A node silent past the bound; `proven` when later samples of its own stream show it, not the wall clock."""

    node: str
    silent_ms: int
    source: int
    proven: bool


class Silence:
    """When each node last reported, on its stream's event clock; which nodes are silent past a bound."""

    def __init__(self, silence_ms: int) -> None:
        self.silence_ms = silence_ms
        self.last_seen: dict[str, tuple[int, Stream]] = {}  # node -> (event ms, its stream)
        self.clocks: dict[Stream, EventClock] = {}
        self.offline: set[str] = set()
        self.read_to: dict[int, int] = {}  # source -> the offset after the last event of its partition watched
        self.confirm_at: dict[str, int] = {}  # node overdue on the wall clock -> offset to read before calling it

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

    def overdue(self, paused: Callable[[str], bool] = lambda _node: False) -> list[Overdue]:
        """Nodes silent longer than the bound on their own stream's clock, not yet offline, and for how long;
        a node `paused` (its collector stopped on purpose) is quiet, not silent."""
        return [late for node in self.last_seen if (late := self._late(node, paused)) is not None]

    def _late(self, node: str, paused: Callable[[str], bool]) -> Overdue | None:
        ms, stream = self.last_seen[node]
        clock = self.clocks[stream]
        silent = clock.now_ms() - ms
        if node in self.offline or silent <= self.silence_ms or paused(node):
            return None
        return Overdue(node, silent, stream[0], clock.max_event_ms - ms > self.silence_ms)

    def unconfirmed(self, overdue: list[Overdue]) -> set[int]:
        """The sources whose end offsets `newly_silent` needs: those of wall-clock silences not yet noted."""
        return {late.source for late in overdue if not late.proven and late.node not in self.confirm_at}

    def newly_silent(
        self,
        paused: Callable[[str], bool] = lambda _node: False,
        ends: Mapping[int, int] | None = None,
        overdue: list[Overdue] | None = None,
    ) -> list[tuple[str, int]]:
        """The overdue nodes (`overdue`, when just found) now called offline, and for how long. A wall-clock
        silence first notes its partition's end offset (from `ends`, read from the broker now), and is called
        once read to there."""
        found, confirm_at = [], {}
        if overdue is not None:  # found before the broker was asked: judged again, as a node may have reported since
            overdue = [late for o in overdue if o.node in self.last_seen and (late := self._late(o.node, paused))]
        for late in self.overdue(paused) if overdue is None else overdue:
            if not late.proven:
                at = self.confirm_at.get(late.node, (ends or {}).get(late.source))
                if at is None:
                    continue
                if self.read_to.get(late.source, 0) < at:
                    confirm_at[late.node] = at
                    continue
            self.offline.add(late.node)
            found.append((late.node, late.silent_ms))
        self.confirm_at = confirm_at  # a node that reported, or is no longer watched, waits for nothing
        return found

    def forget(self, partitions: set[int]) -> None:
        """Partitions handed to another worker: their nodes are watched there now."""
        for node in [n for n, (_ms, stream) in self.last_seen.items() if stream[0] in partitions]:
            del self.last_seen[node]
            self.offline.discard(node)
        for stream in [s for s in self.clocks if s[0] in partitions]:
            del self.clocks[stream]
        for source in partitions:
            self.read_to.pop(source, None)


def register(ctx: Context) -> Callable[[Readings, np.ndarray, dict[int, int]], Awaitable[None]]:
    """Registers the silence check and returns the step that watches telemetry batches."""
    silence = Silence(ctx.rules.silence_ms)

    @ctx.app.on_partitions_revoked.connect
    async def forget_revoked(app: Any, revoked: set[Any], **_: Any) -> None:
        silence.forget({ctx.source(tp.topic, tp.partition) for tp in revoked} - {None})

    async def alert(node: str, is_offline: bool, silent_ms: int) -> None:
        await ctx.alerts.apply(ctx.rules.silence(node, is_offline, silent_ms))

    async def watch(valid: Readings, sources: np.ndarray, read: dict[int, int]) -> None:
        """Notes when each node of a batch of valid telemetry last reported, how far each partition was
        read (`read`), and judges its temperature (only where it is hot, or its node was or becomes
        overheated: elsewhere the rule says nothing new)."""
        silence.read_to.update(read)
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

    async def end_offsets(sources: set[int]) -> dict[int, int]:
        """The broker's end offset of each source's partition, now."""
        partitions = {ctx.partition_of(source): source for source in sources}
        ends = await ctx.app.consumer.highwaters(*partitions)
        return {source: ends.get(tp, 0) for tp, source in partitions.items()}

    @ctx.app.timer(CHECK_EVERY_S, name="find_silent_nodes")
    @ctx.contain.timer("find_silent_nodes")
    async def find_silent_nodes() -> None:
        if ctx.draining:  # a worker stopping reads what is left, not what is live: it judges no silence
            return
        overdue = silence.overdue(paused)
        if not overdue or not await ctx.facts.caught_up():  # a stop's pauses are read before its quiet is judged
            return
        ends = await end_offsets(needed) if (needed := silence.unconfirmed(overdue)) else {}
        for node, silent_ms in silence.newly_silent(paused, ends, overdue):
            await alert(node, True, silent_ms)

    def paused(node: str) -> bool:
        return bool(ctx.facts.nodes.get(node, {}).get("paused"))

    return watch
