"""Rolling utilisation, power, PUE, green share and free capacity per node, cluster, hub and province.

Two steps, so that N workers can split the telemetry and still agree on one number per scope, and a worker
killed mid-stream neither loses nor doubles a sample:

- `aggregate` (run by the telemetry intake) holds each telemetry partition's samples in an open chunk until
  the event clock enters a new half pane, then sums them into 10-s panes with NumPy and sends them on
  `monitor.pane-chunk`, one message per bucket of scopes, tagged with the offsets they sum. Their events
  are acked only then, and Faust flushes the producer before it commits, so every committed offset's
  samples are in a delivered chunk.
- `scope_rollups` keeps each scope's partial panes by chunk, merges them into the hopping windows,
  publishes them on `monitor.rollup`, and judges the alerts that need a whole scope: sustained overload,
  PUE, green share, and tidal imbalance between hubs. A chunk read again after a crash replaces its first
  delivery, and a worker taking a chunk partition reads back what it held before its committed offset.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer, TopicPartition

from suanwang.bus import client_kwargs, event
from suanwang.clock import now_ms
from suanwang.schemas.codec import DecodeError
from suanwang.schemas.topics import PANE_CHUNK, ROLLUP
from suanwang.streams.app import Context, worker_group
from suanwang.streams.readings import Readings
from suanwang.streams.windows import (
    PANE_MS,
    SCOPE_KINDS,
    Chunk,
    EventClock,
    HoppingWindows,
    Pane,
    Run,
    Samples,
    Window,
    keep_ms,
    pane_sums,
    rollup_fields,
)

CLOSE_EVERY_S = 1.0
# how long an open chunk gathers: half a pane, so telemetry is acked (and committed) within about ten seconds of
# being written, at the cost of two partials a node per pane in the windows
CHUNK_MS = PANE_MS // 2
SHARED_SHARDS = {"hub", "province"}  # every hub on one worker, so it can compare them
BUCKETS = 64  # scopes travel in this many buckets: at most this many workers share the windows
READ_BACK_MARGIN_MS = 120_000  # beyond the panes kept: clock skew between a chunk's send and its panes


def joined_samples(readings: Readings, ctx: Context) -> Samples:
    """A batch of valid telemetry joined with its nodes' registrations and its provinces' grid hours."""
    facts = ctx.facts
    regs = [facts.nodes[node] for node in readings.node_ids]
    figures, event_ms = readings.figures, readings.event_ms

    def column(name: str) -> np.ndarray:
        return np.fromiter((g[name] for g in regs), np.float64, len(regs))

    return Samples(
        event_ms=event_ms,
        scope_keys={
            "node": readings.node_ids,
            **{kind: readings.places[kind] for kind in SCOPE_KINDS if kind != "node"},
        },
        cpu=figures["cpu_util"],
        mem=figures["memory_util"],
        acc=figures["accelerator_util"],
        power_kw=figures["power_kw"],
        pue=column("pue"),
        green=facts.green_shares(readings.places["province"], event_ms),
        compute_class=[g["compute_class"] for g in regs],
        cpu_milli=column("cpu_milli"),
        accelerators=column("accelerators"),
    )


def bucket_of(kind: str, key: str) -> str:
    """The chunk bucket of a scope: its shard hashed, so one worker owns each scope and one owns every hub."""
    shard = kind if kind in SHARED_SHARDS else key
    return str(zlib.crc32(shard.encode()) % BUCKETS)


@dataclass
class OpenChunk:
    """Telemetry of one partition read since its last chunk went out; its events are acked when it goes."""

    chunk: Chunk
    end: int
    due_ms: int  # the end of the half pane the event clock was in when it opened
    events: list[Any] = field(default_factory=list)
    readings: list[Readings] = field(default_factory=list)


class Intake:
    """Per telemetry partition, the run it is read in (a new one whenever its offsets do not follow on) and
    the chunk still open. Chunks close at half-pane boundaries, so a node's samples of one half pane mostly
    travel as one partial, and the events are acked only when their chunk is sent: commits fall on chunk
    boundaries."""

    def __init__(self) -> None:
        self.runs: dict[int, Run] = {}
        self.next_offset: dict[int, int] = {}
        self.open: dict[int, OpenChunk] = {}

    def hold(self, partition: int, events: list[Any], readings: Readings, clock_ms: int) -> None:
        first = min(ev.message.offset for ev in events)
        if self.next_offset.get(partition) != first:  # taken up, or read again from the committed offset
            self.runs[partition] = Run(first, now_ms())
            self.open.pop(partition, None)  # its events come again
        self.next_offset[partition] = max(ev.message.offset for ev in events) + 1
        if partition not in self.open:
            due_ms = clock_ms - clock_ms % CHUNK_MS + CHUNK_MS
            self.open[partition] = OpenChunk(Chunk(partition, self.runs[partition], first), first, due_ms)
        held = self.open[partition]
        held.end = self.next_offset[partition]
        held.events += events
        if len(readings):
            held.readings.append(readings)

    def due(self, clock_ms: int, partitions: set[int] | None = None) -> list[OpenChunk]:
        """Removes and returns the chunks to send: due by the clock, or of the given partitions."""
        names = [p for p, c in self.open.items() if c.due_ms <= clock_ms or (partitions and p in partitions)]
        return [self.open.pop(p) for p in names]


class Aggregate:
    """The telemetry intake's step that sums its batches into pane chunks; it acks their events."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.intake = Intake()
        self.clock = EventClock()  # the newest telemetry aggregated here
        self.stream: Any = None
        self.last_batch = 0.0  # monotonic time of the newest batch

    async def __call__(
        self, stream: Any, events: list[Any], by_event: np.ndarray, valid: Readings, sources: np.ndarray
    ) -> None:
        """Holds a telemetry batch in its partitions' open chunks (`by_event`: each event's telemetry source,
        `sources`: each valid sample's), and sends the chunks now due."""
        self.stream, self.last_batch = stream, time.monotonic()
        if len(valid):
            self.clock.saw(int(valid.event_ms.max()))
        events_of: dict[int, list[Any]] = defaultdict(list)
        for ev, source in zip(events, by_event.tolist(), strict=True):
            events_of[source].append(ev)
        for partition, held in events_of.items():
            self.intake.hold(partition, held, valid.take(sources == partition), self.clock.now_ms())
        await self.send_due()

    async def send_due(self, partitions: set[int] | None = None) -> None:
        """Sends the chunks due (and those of `partitions`), then acks their events."""
        for held in self.intake.due(self.clock.now_ms(), partitions):
            await self._send(held)

    async def send_idle(self, rebalancing: bool) -> None:
        """Sends every open chunk when no telemetry came for a while, or a rebalance waits for the acks."""
        if self.stream is not None:
            idle = time.monotonic() - self.last_batch > 2 * CLOSE_EVERY_S
            await self.send_due(set(self.intake.open) if idle or rebalancing else None)

    async def _send(self, held: OpenChunk) -> None:
        ctx, chunk = self.ctx, held.chunk
        if held.readings:
            readings = Readings.concat(held.readings)
            buckets: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for kind, key, start, pane, node_ids in pane_sums(joined_samples(readings, ctx)):
                scope = {"scope_kind": kind, "scope_key": key, "pane_start": start, "node_ids": node_ids}
                buckets[bucket_of(kind, key)].append({**scope, **pane.to_record()})
            watermark = self.clock.now_ms()
            for bucket, panes in buckets.items():
                await ctx.send(
                    PANE_CHUNK,
                    event(
                        bucket=bucket,
                        source_partition=chunk.partition,
                        run_offset=chunk.run.offset,
                        run_started=chunk.run.started_ms,
                        chunk_offset=chunk.start,
                        chunk_end=held.end,
                        watermark=watermark,
                        panes=panes,
                    ),
                )
            ctx.counts["samples_aggregated"] += len(readings)
        for ev in held.events:  # no await suspends in Stream.ack: a commit never splits a chunk
            await self.stream.ack(ev)


class ScopeRollups:
    """The `scope_rollups` agent: merges pane chunks into each scope's hopping windows, reads back what a chunk
    partition it takes up held before, publishes the windows that close and judges the alert rules on them."""

    def __init__(self, ctx: Context, aggregate: Aggregate) -> None:
        self.ctx = ctx
        self.aggregate = aggregate
        self.lateness_ms = int(ctx.settings.window_lateness_s * 1000)
        self.windows = HoppingWindows(grace_ms=self.lateness_ms)
        self.clock = EventClock()  # the newest sender's clock among the chunks merged here
        self.chunk_topic = ctx.topics.name(PANE_CHUNK)
        self.reading_back: dict[int, asyncio.Task[int]] = {}  # chunk partition taken up -> offset read back up to
        self.reading = asyncio.Lock()

    # intake: the agent and its timer

    async def run(self, stream: Any) -> None:
        """Merges each batch of chunks, then publishes the windows it closed."""
        async for events in stream.take_events(self.ctx.settings.sink_batch_size, within=CLOSE_EVERY_S):
            await self.ctx.contain.batch("scope_rollups", events, self._merge_chunks)

    async def close_quiet_windows(self) -> None:
        """Sends the chunks and closes the windows of a stream that went quiet: the event clocks keep moving."""
        await self.aggregate.send_idle(self.ctx.app.rebalancing)
        await self.publish(self.due())

    async def _merge_chunks(self, events: list[Any]) -> None:
        for ev in events:
            record = self.ctx.decode(ev)
            if record is None:
                continue
            await self.caught_up(ev.message.partition, ev.message.offset)
            self.merge(record, ev.message.partition)
        await self.publish(self.due())

    # merge

    def merge(self, record: dict[str, Any], partition: int) -> None:
        """Keeps a chunk's partial panes, each by its chunk."""
        self.clock.saw(record["watermark"])
        run = Run(record["run_offset"], record["run_started"])
        chunk = Chunk(record["source_partition"], run, record["chunk_offset"])
        of_nodes: dict[int, list[dict[str, Any]]] = defaultdict(list)  # by pane start: kept as columns
        for p in record["panes"]:
            kind = p["scope_kind"]
            if kind == "node":
                of_nodes[p["pane_start"]].append(p)
                continue
            outcome = self.windows.add(
                kind, p["scope_key"], p["pane_start"], chunk, Pane.from_record(p), p["node_ids"],
                self.clock.now_ms(), partition,
            )  # fmt: skip
            if outcome != "added":
                self.ctx.counts[f"panes_{outcome}:{kind}"] += 1
        for start, panes in of_nodes.items():
            outcome = self.windows.add_nodes(start, chunk, record["bucket"], panes, self.clock.now_ms(), partition)
            if outcome != "added":
                self.ctx.counts[f"panes_{outcome}:node"] += len(panes)

    # read-back: partitions taken up and let go

    async def take_up(self, app: Any, assigned: set[Any], **_: Any) -> None:
        for tp in assigned:
            if tp.topic == self.chunk_topic and tp.partition not in self.reading_back:
                self.reading_back[tp.partition] = asyncio.create_task(self.read_back(tp.partition, None, None))

    async def let_go(self, app: Any, revoked: set[Any], **_: Any) -> None:
        sources = {self.ctx.source(tp.topic, tp.partition) for tp in revoked}
        await self.aggregate.send_due(sources - {None})
        gone = {tp.partition for tp in revoked if tp.topic == self.chunk_topic}
        for partition in gone:
            task = self.reading_back.pop(partition, None)
            if task is not None:
                task.cancel()
        self.windows.forget(gone)

    async def caught_up(self, partition: int, offset: int) -> None:
        """Before the first chunk of a partition taken up: what it held before is read back."""
        task = self.reading_back.pop(partition, None)
        if task is None:
            return
        upto = await task
        if offset > upto:  # resumed past the committed offset: what lies between was merged, then let go
            await self.read_back(partition, upto, offset)

    async def read_back(self, partition: int, start: int | None, end: int | None) -> int:
        """Merges the chunks of a partition this worker takes from `start` (or as far back as panes are kept)
        up to `end` (or its group's committed offset), and lets go of the windows that went out meanwhile."""
        async with self.reading:
            return await self._read_back(partition, start, end)

    async def _read_back(self, partition: int, start: int | None, end: int | None) -> int:
        ctx, settings = self.ctx, self.ctx.settings
        tp = TopicPartition(self.chunk_topic, partition)
        reader = AIOKafkaConsumer(**client_kwargs(settings), group_id=worker_group(settings), enable_auto_commit=False)
        await reader.start()  # assigned by hand: it reads the group's offsets, never joins or commits
        try:
            reader.assign([tp])
            if end is None:
                end = await reader.committed(tp) or 0
            if start is None:
                oldest_ms = now_ms() - keep_ms(self.lateness_ms) - READ_BACK_MARGIN_MS
                since = (await reader.offsets_for_times({tp: oldest_ms}))[tp]
                start = since.offset if since is not None and since.timestamp >= 0 else end
            published_by = 0
            if start < end:
                reader.seek(tp, start)
                while (await reader.position(tp)) < end:
                    for message in (await reader.getmany(tp, timeout_ms=1000)).get(tp, []):
                        if message.offset >= end:
                            break
                        try:
                            record = ctx.codec.decode_as(PANE_CHUNK.schema, message.value)
                        except DecodeError:  # skipped as when first read
                            continue
                        published_by = max(published_by, record["watermark"])
                        self.merge(record, partition)
                        ctx.counts["chunks_read_back"] += 1
            self.windows.settle({partition}, published_by)
            return end
        finally:
            await reader.stop()

    # publish

    def due(self) -> list[Window]:
        """Windows to publish now; none while a partition is read back, as its windows are still partial."""
        return [] if self.reading.locked() else self.windows.close(self.clock.now_ms())

    async def publish(self, closed: list[Window]) -> None:
        """Sends each closed window as a rollup and judges the alert rules on it, and on hubs side by side."""
        ctx = self.ctx
        by_end: dict[tuple[str, int, int], list[dict[str, Any]]] = defaultdict(list)
        for window in closed:
            kind, key = window.scope_kind, window.scope_key
            rollup = rollup_fields(window, 1 if kind == "node" else ctx.facts.scope_totals[(kind, key)])
            await ctx.send(ROLLUP, event(**rollup))
            ctx.counts[f"windows_published:{kind}"] += 1
            overloaded = key in ctx.alerts.raised_keys("overload", "node")
            for check in ctx.rules.on_window(rollup, window.panes, overloaded):
                await ctx.alerts.apply(check)
            by_end[(kind, window.length_ms, window.end_ms)].append(rollup)
        for (kind, _length_ms, _end), group in by_end.items():
            if kind in SHARED_SHARDS:
                for check in ctx.rules.imbalance(kind, group):
                    await ctx.alerts.apply(check)


def register(ctx: Context) -> Aggregate:
    """Registers `scope_rollups` and its timer, and returns the step that sums telemetry batches into pane
    chunks."""
    aggregate = Aggregate(ctx)
    rollups = ScopeRollups(ctx, aggregate)
    ctx.app.on_partitions_revoked.connect(rollups.let_go)
    ctx.app.on_partitions_assigned.connect(rollups.take_up)
    ctx.app.agent(ctx.topic(PANE_CHUNK), name="scope_rollups")(rollups.run)
    quiet = ctx.contain.timer("close_quiet_windows")(rollups.close_quiet_windows)
    ctx.app.timer(CLOSE_EVERY_S, name="close_quiet_windows")(quiet)
    return aggregate
