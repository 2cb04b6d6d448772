"""Rolling utilisation, power, PUE, green share and free capacity per node, cluster, hub and province.

Two steps, so that N workers can split the telemetry and still agree on one number per scope, and a worker
killed mid-stream neither loses nor doubles a sample:

- `aggregate` (run by the telemetry intake) holds each telemetry partition's samples in an open chunk until
  the event clock enters a new pane, then sums them into 10-s panes with NumPy and sends them on
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

from suanwang.bus import client_kwargs, event, now_ms
from suanwang.schemas.codec import DecodeError
from suanwang.schemas.topics import PANE_CHUNK, ROLLUP, TELEMETRY
from suanwang.streams.app import Context, worker_group
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
SHARED_SHARDS = {"hub", "province"}  # every hub on one worker, so it can compare them
BUCKETS = 64  # scopes travel in this many buckets: at most this many workers share the windows
READ_BACK_MARGIN_MS = 120_000  # beyond the panes kept: clock skew between a chunk's send and its panes
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


def bucket_of(kind: str, key: str) -> str:
    """The chunk bucket of a scope: its shard hashed, so one worker owns each scope and one owns every hub."""
    shard = kind if kind in SHARED_SHARDS else key
    return str(zlib.crc32(shard.encode()) % BUCKETS)


@dataclass
class OpenChunk:
    """Telemetry of one partition read since its last chunk went out; its events are acked when it goes."""

    chunk: Chunk
    end: int
    due_ms: int  # the end of the pane the event clock was in when it opened
    events: list[Any] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)


class Intake:
    """Per telemetry partition, the run it is read in (a new one whenever its offsets do not follow on) and
    the chunk still open. Chunks close at pane boundaries, so a node's samples of one pane mostly travel as
    one partial, and the events are acked only when their chunk is sent: commits fall on chunk boundaries."""

    def __init__(self) -> None:
        self.runs: dict[int, Run] = {}
        self.next_offset: dict[int, int] = {}
        self.open: dict[int, OpenChunk] = {}

    def hold(self, partition: int, events: list[Any], records: list[dict[str, Any]], clock_ms: int) -> None:
        first = min(ev.message.offset for ev in events)
        if self.next_offset.get(partition) != first:  # taken up, or read again from the committed offset
            self.runs[partition] = Run(first, now_ms())
            self.open.pop(partition, None)  # its events come again
        self.next_offset[partition] = max(ev.message.offset for ev in events) + 1
        if partition not in self.open:
            due_ms = clock_ms - clock_ms % PANE_MS + PANE_MS
            self.open[partition] = OpenChunk(Chunk(partition, self.runs[partition], first), first, due_ms)
        held = self.open[partition]
        held.end = self.next_offset[partition]
        held.events += events
        held.records += records

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

    async def __call__(self, stream: Any, events: list[Any], valid: list[tuple[Any, dict[str, Any]]]) -> None:
        """Holds a telemetry batch in its partitions' open chunks, and sends the chunks now due."""
        self.stream, self.last_batch = stream, time.monotonic()
        events_of: dict[int, list[Any]] = defaultdict(list)
        for ev in events:
            events_of[ev.message.partition].append(ev)
        records_of: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for ev, record in valid:
            records_of[ev.message.partition].append(record)
        if valid:
            self.clock.saw(int(max(record["event_time"] for _ev, record in valid).timestamp() * 1000))
        for partition, held in events_of.items():
            self.intake.hold(partition, held, records_of[partition], self.clock.now_ms())
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
        if held.records:
            buckets: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for kind, key, start, pane, node_ids in pane_sums(samples_of(held.records, ctx)):
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
            ctx.counts["samples_aggregated"] += len(held.records)
        for ev in held.events:  # no await suspends in Stream.ack: a commit never splits a chunk
            await self.stream.ack(ev)


def register(ctx: Context) -> Aggregate:
    """Registers `scope_rollups` and returns the step that sums telemetry batches into pane chunks."""
    settings = ctx.settings
    lateness_ms = int(settings.window_lateness_s * 1000)
    windows = HoppingWindows(grace_ms=lateness_ms)
    aggregate = Aggregate(ctx)
    chunk_clock = EventClock()  # the newest sender's clock among the chunks merged here
    chunk_topic = ctx.topics.name(PANE_CHUNK)
    telemetry_topic = ctx.topics.name(TELEMETRY)
    reading_back: dict[int, asyncio.Task[int]] = {}  # chunk partition taken up -> offset read back up to
    reading = asyncio.Lock()

    def merge(record: dict[str, Any], partition: int) -> None:
        """Keeps a chunk's partial panes, each by its chunk."""
        chunk_clock.saw(record["watermark"])
        run = Run(record["run_offset"], record["run_started"])
        chunk = Chunk(record["source_partition"], run, record["chunk_offset"])
        for p in record["panes"]:
            kind = p["scope_kind"]
            outcome = windows.add(
                kind, p["scope_key"], p["pane_start"], chunk, Pane.from_record(p), p["node_ids"],
                chunk_clock.now_ms(), partition,
            )  # fmt: skip
            if outcome != "added":
                ctx.counts[f"panes_{outcome}:{kind}"] += 1

    async def read_back(partition: int, start: int | None, end: int | None) -> int:
        """Merges the chunks of a partition this worker takes from `start` (or as far back as panes are kept)
        up to `end` (or its group's committed offset), and lets go of the windows that went out meanwhile."""
        async with reading:
            return await _read_back(partition, start, end)

    async def _read_back(partition: int, start: int | None, end: int | None) -> int:
        tp = TopicPartition(chunk_topic, partition)
        reader = AIOKafkaConsumer(**client_kwargs(settings), group_id=worker_group(settings), enable_auto_commit=False)
        await reader.start()  # assigned by hand: it reads the group's offsets, never joins or commits
        try:
            reader.assign([tp])
            if end is None:
                end = await reader.committed(tp) or 0
            if start is None:
                oldest_ms = now_ms() - keep_ms(lateness_ms) - READ_BACK_MARGIN_MS
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
                        merge(record, partition)
                        ctx.counts["chunks_read_back"] += 1
            windows.settle({partition}, published_by)
            return end
        finally:
            await reader.stop()

    @ctx.app.on_partitions_revoked.connect
    async def let_go(app: Any, revoked: set[Any], **_: Any) -> None:
        await aggregate.send_due({tp.partition for tp in revoked if tp.topic == telemetry_topic})
        gone = {tp.partition for tp in revoked if tp.topic == chunk_topic}
        for partition in gone:
            task = reading_back.pop(partition, None)
            if task is not None:
                task.cancel()
        windows.forget(gone)

    @ctx.app.on_partitions_assigned.connect
    async def take_up(app: Any, assigned: set[Any], **_: Any) -> None:
        for tp in assigned:
            if tp.topic == chunk_topic and tp.partition not in reading_back:
                reading_back[tp.partition] = asyncio.create_task(read_back(tp.partition, None, None))

    async def caught_up(partition: int, offset: int) -> None:
        """Before the first chunk of a partition taken up: what it held before is read back."""
        task = reading_back.pop(partition, None)
        if task is None:
            return
        upto = await task
        if offset > upto:  # resumed past the committed offset: what lies between was merged, then let go
            await read_back(partition, upto, offset)

    def due() -> list[Window]:
        """Windows to publish now; none while a partition is read back, as its windows are still partial."""
        return [] if reading.locked() else windows.close(chunk_clock.now_ms())

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

    @ctx.app.agent(ctx.topic(PANE_CHUNK), name="scope_rollups")
    async def scope_rollups(stream: Any) -> None:

        async def merge_chunks(events: list[Any]) -> None:
            for ev in events:
                record = ctx.decode(ev)
                if record is None:
                    continue
                await caught_up(ev.message.partition, ev.message.offset)
                merge(record, ev.message.partition)
            await publish(due())

        async for events in stream.take_events(settings.sink_batch_size, within=CLOSE_EVERY_S):
            await ctx.contain.batch("scope_rollups", events, merge_chunks)

    @ctx.app.timer(CLOSE_EVERY_S, name="close_quiet_windows")
    @ctx.contain.timer("close_quiet_windows")
    async def close_quiet_windows() -> None:
        """Sends the chunks and closes the windows of a stream that went quiet: the event clocks keep moving."""
        await aggregate.send_idle(ctx.app.rebalancing)
        await publish(due())

    return aggregate
