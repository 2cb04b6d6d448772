"""Every contract topic that has a table lands in ClickHouse exactly once, in batches bounded by size and time.

Offsets are committed only after ClickHouse holds the batch (Faust acks a taken batch once the loop body
returns). A message read again after a crash is skipped: the table keeps each row's source offset, and
the sink resumes each partition after the highest offset stored.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable
from typing import Any, TypeVar

from suanwang.bus import dead_letter
from suanwang.dispatcher.tiers import tier_request_topics
from suanwang.errors import SuanwangError
from suanwang.schemas.codec import DecodeError
from suanwang.schemas.frames import frame_problem, samples_of
from suanwang.schemas.topics import ALL_TOPICS, DEADLETTER, TELEMETRY, TELEMETRY_FRAME, TELEMETRY_TOPICS
from suanwang.streams.app import Context

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
        checked = []
        for ev in events:
            spec = ctx.topics.spec(ev.message.topic)
            ctx.counts[f"events:{spec.name}"] += 1
            try:
                record = ctx.codec.decode_as(spec.schema, ev.value)
            except DecodeError as exc:
                checked.append([ev, spec, None, str(exc), -1])
                continue
            if spec is not TELEMETRY_FRAME:
                checked.append([ev, spec, record, ctx.problem(spec, record), -1])
            elif (bad := frame_problem(record)) is not None:  # the whole frame: it cannot be taken apart
                checked.append([ev, spec, None, bad, -1])
            else:  # each sample on its own: a bad one is dead-lettered alone, with its index; the rest stored
                for i, sample in enumerate(samples_of(record)):
                    checked.append([ev, TELEMETRY, sample, ctx.problem(TELEMETRY, sample), i])
        unregistered = [
            c for c in checked if c[1] is TELEMETRY and c[2] is not None and c[2]["node_id"] not in ctx.facts.nodes
        ]
        if unregistered:  # a node's first telemetry may overtake its registration: catch up once, look again
            await ctx.facts.caught_up()
            for c in unregistered:
                c[3] = ctx.problem(c[1], c[2])
        for ev, spec, record, problem, sample in checked:
            msg = ev.message
            stored_before = msg.offset <= await self.stored.get(spec.table, msg.topic, msg.partition)
            if problem is not None:
                if not stored_before:  # else it was reported when first read
                    alone = ctx.codec.encode(TELEMETRY.schema, record) if sample >= 0 else None
                    where = f"sample {sample}: " if sample >= 0 else ""
                    await ctx.send(DEADLETTER, dead_letter("sink", msg, where + problem, sample, alone))
                continue
            valid.append((ev, record))
            if not stored_before:
                rows[spec.table].append(record)
                sources[spec.table].append((msg.topic, msg.partition, msg.offset))
        for table, records in rows.items():
            await retrying(ctx, ctx.store.insert_records, table, records, sources[table])
            ctx.counts[f"rows:{table}"] += len(records)
            for topic, partition, offset in sources[table]:
                key = (table, topic, partition)
                self.stored.upto[key] = max(self.stored.upto[key], offset)
        return valid


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
