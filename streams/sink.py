"""Every contract topic that has a table lands in ClickHouse, in batches bounded by size and time."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from suanwang.schemas.topics import ALL_TOPICS
from suanwang.streams.app import Context


def register(ctx: Context) -> None:
    specs = [s for s in ALL_TOPICS if s.table]
    settings = ctx.settings

    @ctx.app.agent(ctx.topic(*specs), name="clickhouse_sink")
    async def clickhouse_sink(stream: Any) -> None:
        async for events in stream.take_events(settings.sink_batch_size, within=settings.sink_flush_s):
            by_table: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for ev in events:
                record = await ctx.decode_or_dead_letter(ev, "sink")
                if record is not None:
                    by_table[ctx.topics.spec(ev.message.topic).table].append(record)
            for table, records in by_table.items():
                await ctx.store.run(ctx.store.insert_records, table, records)
