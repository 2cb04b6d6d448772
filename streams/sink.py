"""Every contract topic that has a table lands in ClickHouse exactly once, in batches bounded by size and time.

Offsets are committed only after ClickHouse holds the batch (Faust acks a taken batch once the loop body
returns). A message read again after a crash is skipped: the table keeps each row's source offset, and
the sink resumes each partition after the highest offset stored.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from suanwang.bus import dead_letter
from suanwang.schemas.codec import DecodeError
from suanwang.schemas.topics import ALL_TOPICS, DEADLETTER
from suanwang.streams.app import Context


class StoredOffsets:
    """Per table and topic partition, the highest offset ClickHouse holds, read once per assignment."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.upto: dict[tuple[str, str, int], int] = {}

    async def get(self, table: str, topic: str, partition: int) -> int:
        key = (table, topic, partition)
        if key not in self.upto:
            self.upto[key] = await self.ctx.store.run(self.ctx.store.stored_upto, table, topic, partition)
        return self.upto[key]

    def forget(self, assigned: set[Any]) -> None:
        """Partitions (re)assigned may have been written by another worker meanwhile: read them again."""
        fresh = {(tp.topic, tp.partition) for tp in assigned}
        self.upto = {k: v for k, v in self.upto.items() if (k[1], k[2]) not in fresh}


def register(ctx: Context) -> None:
    specs = [s for s in ALL_TOPICS if s.table]
    settings = ctx.settings
    stored = StoredOffsets(ctx)

    @ctx.app.on_partitions_assigned.connect
    async def reread_offsets(app: Any, assigned: set[Any], **_: Any) -> None:
        stored.forget(assigned)

    @ctx.app.agent(ctx.topic(*specs), name="clickhouse_sink")
    async def clickhouse_sink(stream: Any) -> None:
        await ctx.facts.ready.wait()
        async for events in stream.take_events(settings.sink_batch_size, within=settings.sink_flush_s):
            rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
            sources: dict[str, list[tuple[str, int, int]]] = defaultdict(list)
            for ev in events:
                msg = ev.message
                spec = ctx.topics.spec(msg.topic)
                if msg.offset <= await stored.get(spec.table, msg.topic, msg.partition):
                    continue  # read again after a restart: ClickHouse has it
                try:
                    record = ctx.codec.decode_as(spec.schema, ev.value)
                except DecodeError as exc:
                    await ctx.send(DEADLETTER, dead_letter("sink", msg, str(exc)))
                    continue
                problem = ctx.problem(spec, record)
                if problem is not None:
                    await ctx.send(DEADLETTER, dead_letter("sink", msg, problem))
                    continue
                rows[spec.table].append(record)
                sources[spec.table].append((msg.topic, msg.partition, msg.offset))
            for table, records in rows.items():
                await ctx.store.run(ctx.store.insert_records, table, records, sources[table])
                for topic, partition, offset in sources[table]:
                    key = (table, topic, partition)
                    stored.upto[key] = max(stored.upto[key], offset)
