"""Every contract topic that has a table lands in ClickHouse exactly once, in batches bounded by size and time.

Offsets are committed only after ClickHouse holds the batch (Faust acks a taken batch once the loop body
returns). A message read again after a crash is skipped: the table keeps each row's source offset, and
the sink resumes each partition after the highest offset stored.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import numpy as np

from suanwang.bus import dead_letter
from suanwang.clock import now_ms
from suanwang.dispatcher.tiers import tier_request_topics
from suanwang.errors import SuanwangError
from suanwang.schemas.codec import DecodeError
from suanwang.schemas.frames import frame_problem
from suanwang.schemas.topics import ALL_TOPICS, DEADLETTER, TELEMETRY, TELEMETRY_FRAME, TELEMETRY_TOPICS
from suanwang.streams.app import Context
from suanwang.streams.checks import telemetry_problems
from suanwang.streams.readings import Readings

log = logging.getLogger("suanwang.sink")
BACKOFF_FIRST_S, BACKOFF_MAX_S = 0.5, 30.0  # between retries of a failed store call
T = TypeVar("T")


async def retrying(ctx: Context, call: Callable[..., T], *args: Any) -> T:
    """A store call, retried with backoff while ClickHouse fails. The batch waits unacknowledged meanwhile, so
    no offset is committed and Kafka keeps everything behind it."""
    delay = BACKOFF_FIRST_S
    while True:
        try:
            return await ctx.store.run(call, *args)
        except SuanwangError as exc:
            ctx.counts["store_retries"] += 1
            log.warning("%s; retrying in %.1f s", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX_S)


class StoredOffsets:
    """Per table and topic partition, the highest offset ClickHouse holds, read once per assignment."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.upto: dict[tuple[str, str, int], int] = {}

    async def get(self, table: str, topic: str, partition: int) -> int:
        key = (table, topic, partition)
        if key not in self.upto:
            self.upto[key] = await retrying(self.ctx, self.ctx.store.stored_upto, table, topic, partition)
        return self.upto[key]

    def forget(self, assigned: set[Any]) -> None:
        """Partitions (re)assigned may have been written by another worker meanwhile: read them again."""
        fresh = {(tp.topic, tp.partition) for tp in assigned}
        self.upto = {k: v for k, v in self.upto.items() if (k[1], k[2]) not in fresh}


class Sink:
    """Stores batches of contract records; the one place a bad record is reported."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.stored = StoredOffsets(ctx)

    async def store(self, events: list[Any]) -> list[tuple[Any, dict[str, Any]]]:
        """Inserts the batch's rows ClickHouse lacks; returns every (event, record) that decodes and is sound."""
        ctx = self.ctx
        valid = []
        rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
        sources: dict[str, list[tuple[str, int, int]]] = defaultdict(list)
        for ev in events:
            spec = ctx.topics.spec(ev.message.topic)
            ctx.counts[f"events:{spec.name}"] += 1
            try:
                record = ctx.codec.decode_as(spec.schema, ev.value)
            except DecodeError as exc:
                record, problem = None, str(exc)
            else:
                problem = ctx.problem(spec, record)
            stored_before = await self._stored_before(spec.table, ev)
            if problem is not None:
                if not stored_before:  # else it was reported when first read
                    await ctx.send(DEADLETTER, dead_letter("sink", ev.message, problem))
                continue
            valid.append((ev, record))
            if not stored_before:
                rows[spec.table].append(record)
                sources[spec.table].append((ev.message.topic, ev.message.partition, ev.message.offset))
        for table, records in rows.items():
            await retrying(ctx, ctx.store.insert_records, table, records, sources[table])
            self._stored(table, sources[table])
        return valid

    async def store_telemetry(self, events: list[Any]) -> Readings:
        """Stores a batch of telemetry (single samples and frames) as columns; returns its sound samples.

        A record that does not decode, or a frame that cannot be taken apart, is dead-lettered whole; a bad
        sample of a sound frame alone, with its index, as a `NodeTelemetry` record."""
        ctx = self.ctx
        parts, stored_before = [], np.zeros(len(events), dtype=bool)
        for k, ev in enumerate(events):
            spec = ctx.topics.spec(ev.message.topic)
            ctx.counts[f"events:{spec.name}"] += 1
            stored_before[k] = await self._stored_before(spec.table, ev)
            try:
                record = ctx.codec.decode_as(spec.schema, ev.value)
            except DecodeError as exc:
                problem = str(exc)
            else:
                problem = frame_problem(record) if spec is TELEMETRY_FRAME else None
                if problem is None:
                    parts.append(
                        Readings.of_frame(record, k) if spec is TELEMETRY_FRAME else Readings.of_sample(record, k)
                    )
                    continue
            if not stored_before[k]:  # else it was reported when first read
                await ctx.send(DEADLETTER, dead_letter("sink", ev.message, problem))
        readings = Readings.concat(parts)
        problems = await self._problems(readings)
        for i, problem in problems.items():
            ev, sample = events[readings.origin[i]], int(readings.sample[i])
            if not stored_before[readings.origin[i]]:
                alone = ctx.codec.encode(TELEMETRY.schema, readings.record(i)) if sample >= 0 else None
                where = f"sample {sample}: " if sample >= 0 else ""
                await ctx.send(DEADLETTER, dead_letter("sink", ev.message, where + problem, sample, alone))
        sound = np.ones(len(readings), dtype=bool)
        sound[list(problems)] = False
        valid = readings.take(sound)
        new = valid.take(~stored_before[valid.origin])
        if len(new):
            messages = [events[k].message for k in new.origin.tolist()]
            source = {
                "kafka_topic": [m.topic for m in messages],
                "kafka_partition": [m.partition for m in messages],
                "kafka_offset": [m.offset for m in messages],
            }
            await retrying(ctx, ctx.store.insert_columns, TELEMETRY.table, new.columns(), source)
            self._stored(TELEMETRY.table, zip(*source.values(), strict=True))
        return valid

    async def _problems(self, readings: Readings) -> dict[int, str]:
        """Each unsound sample's problem; a node's first telemetry may overtake its registration: catch up
        once and look again."""
        ctx, s = self.ctx, self.ctx.settings
        problems = telemetry_problems(readings, ctx.facts, now_ms(), s.max_clock_skew_s)
        if any(readings.node_ids[i] not in ctx.facts.nodes for i in problems):
            await ctx.facts.caught_up()
            problems = telemetry_problems(readings, ctx.facts, now_ms(), s.max_clock_skew_s)
        return problems

    async def _stored_before(self, table: str, ev: Any) -> bool:
        """Whether ClickHouse holds this event's rows already (it is read again after a crash)."""
        msg = ev.message
        return msg.offset <= await self.stored.get(table, msg.topic, msg.partition)

    def _stored(self, table: str, sources: Iterable[tuple[str, int, int]]) -> None:
        count = 0
        for topic, partition, offset in sources:
            key = (table, topic, partition)
            self.stored.upto[key] = max(self.stored.upto[key], offset)
            count += 1
        self.ctx.counts[f"rows:{table}"] += count


def register(ctx: Context) -> Sink:
    """The sink agent for every tabled topic (and the tiers' request topics) but telemetry, which the
    telemetry intake stores with it."""
    specs = [s for s in ALL_TOPICS if s.table and s not in TELEMETRY_TOPICS]
    sink = Sink(ctx)

    @ctx.app.on_partitions_assigned.connect
    async def reread_offsets(app: Any, assigned: set[Any], **_: Any) -> None:
        sink.stored.forget(assigned)

    names = [ctx.topics.name(s) for s in specs] + tier_request_topics(ctx.settings)
    source = ctx.app.topic(*names, value_serializer="raw", key_serializer="raw")

    @ctx.app.agent(source, name="clickhouse_sink")
    async def clickhouse_sink(stream: Any) -> None:
        await ctx.facts.ready.wait()
        async for events in stream.take_events(ctx.settings.sink_batch_size, within=ctx.settings.sink_flush_s):
            await ctx.contain.batch("clickhouse_sink", events, sink.store)

    return sink
