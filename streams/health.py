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

A whole stream of several nodes gone quiet together is its collector's silence, or its link's: one
`collector_silent` alert for the cluster, not a `node_offline` for each node, resolved when the stream
reports again. Its nodes' clocks then start again from that first sample, so a node still missing is
called offline one bound later, on the stream's own evidence.
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
    stream: Stream
    proven: bool

    @property
    def source(self) -> int:
        return self.stream[0]


class Called(NamedTuple):
    """What a check calls silent: nodes offline, and the clusters of streams quiet as a whole; how long each was."""

    nodes: list[tuple[str, int]]
    clusters: list[tuple[str, int]]


class Silence:
    """When each node last reported, on its stream's event clock; which nodes are silent past a bound."""

    def __init__(self, silence_ms: int) -> None:
        self.silence_ms = silence_ms
        self.last_seen: dict[str, tuple[int, Stream]] = {}  # node -> (event ms, its stream)
        self.clocks: dict[Stream, EventClock] = {}
        self.offline: set[str] = set()
        self.read_to: dict[int, int] = {}  # source -> the offset after the last event of its partition watched
        self.confirm_at: dict[str, int] = {}  # node overdue on the wall clock -> offset to read before calling it
        self.members: dict[Stream, set[str]] = {}  # the nodes each stream carries
        self.quiet: set[Stream] = set()  # streams called silent as a whole (their collector), until they report
        self.restart: dict[Stream, int] = {}  # stream back from quiet -> the event ms its nodes' clocks start from
        self.back: list[tuple[str, int]] = []  # (cluster, ms it was quiet) of streams back since last taken

    def saw(self, node: str, event_ms: int, partition: int, cluster: str = "") -> int | None:
        """Notes a report; the ms it was silent for if it was offline (it is back), else None."""
        stream = (partition, cluster)
        clock = self.clocks.setdefault(stream, EventClock())
        if stream in self.quiet:
            self.quiet.discard(stream)
            self.restart[stream] = event_ms
            self.back.append((cluster, clock.now_ms() - clock.max_event_ms))  # quiet this long, on the wall clock
        clock.saw(event_ms)
        previous, was_on = self.last_seen.get(node, (0, None))
        if was_on != stream:
            self.members.setdefault(stream, set()).add(node)
            if was_on is not None:
                self.members[was_on].discard(node)
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
        if stream in self.quiet:  # its collector's silence is called: the nodes' is not known
            return None
        clock, since = self.clocks[stream], max(ms, self.restart.get(stream, 0))
        if node in self.offline or clock.now_ms() - since <= self.silence_ms or paused(node):
            return None
        return Overdue(node, clock.now_ms() - ms, stream, clock.max_event_ms - since > self.silence_ms)

    def _carries_several(self, stream: Stream, paused: Callable[[str], bool]) -> bool:
        """Whether a stream carries more than one node that would report: its quiet is then its collector's."""
        live = (node for node in self.members.get(stream, ()) if node not in self.offline and not paused(node))
        return next(live, None) is not None and next(live, None) is not None

    def unconfirmed(self, overdue: list[Overdue]) -> set[int]:
        """The sources whose end offsets `newly_silent` needs: those of wall-clock silences not yet noted."""
        return {late.source for late in overdue if not late.proven and late.node not in self.confirm_at}

    def newly_silent(
        self,
        paused: Callable[[str], bool] = lambda _node: False,
        ends: Mapping[int, int] | None = None,
        overdue: list[Overdue] | None = None,
    ) -> Called:
        """The overdue nodes (`overdue`, when just found) now called offline, and the streams called quiet as a
        whole. A wall-clock silence first notes its partition's end offset (from `ends`, read from the broker
        now), and is called once read to there."""
        called, confirm_at = Called([], []), {}
        if overdue is not None:  # found before the broker was asked: judged again, as a node may have reported since
            overdue = [late for o in overdue if o.node in self.last_seen and (late := self._late(o.node, paused))]
        for late in self.overdue(paused) if overdue is None else overdue:
            if late.stream in self.quiet:
                continue  # called quiet a moment ago, from another of its nodes
            if not late.proven:
                at = self.confirm_at.get(late.node, (ends or {}).get(late.source))
                if at is None:
                    continue
                if self.read_to.get(late.source, 0) < at:
                    confirm_at[late.node] = at
                    continue
                if self._carries_several(late.stream, paused):
                    self.quiet.add(late.stream)
                    called.clusters.append((late.stream[1], late.silent_ms))
                    continue
            self.offline.add(late.node)
            called.nodes.append((late.node, late.silent_ms))
        self.confirm_at = confirm_at  # a node that reported, or is no longer watched, waits for nothing
        return called

    def take_back(self) -> list[tuple[str, int]]:
        """The clusters whose quiet streams reported again since last taken, and how long each was quiet; a
        cluster with another stream still quiet stays called."""
        if not self.back:  # asked after every telemetry batch
            return []
        still = {cluster for _source, cluster in self.quiet}
        back, self.back = [(cluster, ms) for cluster, ms in self.back if cluster not in still], []
        return back

    def forget(self, partitions: set[int]) -> None:
        """Partitions handed to another worker: their nodes are watched there now."""
        for node in [n for n, (_ms, stream) in self.last_seen.items() if stream[0] in partitions]:
            del self.last_seen[node]
            self.offline.discard(node)
        for stream in [s for s in self.clocks if s[0] in partitions]:
            del self.clocks[stream]
            self.members.pop(stream, None)
            self.restart.pop(stream, None)
            self.quiet.discard(stream)
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

    async def collector(cluster: str, is_quiet: bool, silent_ms: int) -> None:
        await ctx.alerts.apply(ctx.rules.collector(cluster, is_quiet, silent_ms))

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
        for cluster, quiet_ms in silence.take_back():
            await collector(cluster, False, quiet_ms)
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
        called = silence.newly_silent(paused, ends, overdue)
        for cluster, silent_ms in called.clusters:
            await collector(cluster, True, silent_ms)
        for node, silent_ms in called.nodes:
            await alert(node, True, silent_ms)

    def paused(node: str) -> bool:
        return bool(ctx.facts.nodes.get(node, {}).get("paused"))

    return watch
