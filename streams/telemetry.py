"""The telemetry intake: one agent reads each telemetry batch once and hands it to every concern.

Each Faust agent on a topic costs a full per-event dispatch (about 60 µs here), the largest cost of the
worker; so the three concerns of telemetry — store it, aggregate it, watch node health — share one
agent and one decode per record, and each batch is checked, stored, watched and summed as columns
(`Readings`). Collectors' frames (`telemetry.frame`) come in beside single samples; Faust's cost is then
paid per frame. Its events are acked only once stored, watched, and summed into a pane chunk that went out.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from suanwang.schemas.topics import TELEMETRY_TOPICS
from suanwang.streams.app import Context
from suanwang.streams.readings import Readings
from suanwang.streams.rollups import Aggregate
from suanwang.streams.sink import Sink


def register(
    ctx: Context,
    sink: Sink,
    aggregate: Aggregate,
    watch: Callable[[Readings, np.ndarray, dict[int, int]], Awaitable[None]],
) -> None:
    @ctx.app.agent(ctx.topic(*TELEMETRY_TOPICS), name="telemetry_intake")
    async def telemetry_intake(stream: Any) -> None:
        await ctx.facts.ready.wait()

        async def take_in(events: list[Any]) -> None:
            valid = await sink.store_telemetry(events)
            by_event = np.array([ctx.source(ev.message.topic, ev.message.partition) for ev in events], dtype=np.int64)
            sources = by_event[valid.origin]
            read = {source: ev.message.offset + 1 for source, ev in zip(by_event.tolist(), events, strict=True)}
            await watch(valid, sources, read)
            await aggregate(stream, events, by_event, valid, sources)  # acks the events, once their chunk is sent

        async for events in stream.noack_take(ctx.settings.sink_batch_size, within=ctx.settings.sink_flush_s):
            await ctx.contain.batch("telemetry_intake", events, take_in, ack=stream.ack)
