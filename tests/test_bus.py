"""The Kafka helpers on the embedded broker: what a bulk producer leaves in the log, counted in batches."""

from __future__ import annotations

import asyncio

from suanwang.bus import BULK_BATCH_BYTES, EventProducer, batches_held, ensure_topics
from suanwang.schemas.topics import ROLLUP
from suanwang.settings import Settings
from suanwang.streams.app import faust_app
from tests.samples import sample_record


def test_a_burst_through_a_lingering_producer_lands_in_a_batch_a_partition(settings: Settings) -> None:
    """3,000 rollups sent at once, as a closing pane sends them: one batch a partition when the producer
    lingers, tens of 16-kB batches when it goes at once; `batches_held` counts them by reading the log."""

    async def burst(linger_ms: int) -> int:
        producer = EventProducer(settings, linger_ms=linger_ms)
        name = producer.topics.name(ROLLUP)
        before = (await batches_held(settings, [name]))[name]
        await producer.start()
        try:
            for k in range(3000):
                await producer.send(ROLLUP, sample_record("Rollup") | {"scope_key": f"node-{k}"})
            await producer.flush()
        finally:
            await producer.stop()
        return (await batches_held(settings, [name]))[name] - before

    async def scenario() -> tuple[int, int]:
        await ensure_topics(settings)
        return await burst(linger_ms=50), await burst(linger_ms=0)

    lingering, at_once = asyncio.run(scenario())
    assert lingering <= settings.topic_partitions * 2 and at_once >= 10 * lingering, (lingering, at_once)


def test_the_workers_producer_fills_the_same_large_batches(settings: Settings, tmp_path) -> None:
    app = faust_app(settings.model_copy(update={"data_dir": tmp_path}), "bus-test")
    assert app.conf.producer_max_batch_size == BULK_BATCH_BYTES and app.conf.producer_linger > 0
