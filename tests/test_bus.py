"""The Kafka helpers on the embedded broker: what a bulk producer leaves in the log, counted in batches."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer

from suanwang.bus import BULK_BATCH_BYTES, EventProducer, batches_held, client_kwargs, ensure_topics
from suanwang.schemas.topics import PLACEMENT, REJECTION, ROLLUP, TASK_REQUEST, Topics
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


def test_the_dispatch_paths_topics_have_their_own_partition_count(settings: Settings) -> None:
    """The national and a tier's request topic, placements and rejections get `dispatch_partitions` (a fetch
    lists only its partition's batches on the embedded broker); every other topic keeps `topic_partitions`."""
    settings = settings.model_copy(update={"dispatch_partitions": 5, "topic_partitions": 2})
    topics = Topics(settings.topic_prefix)
    tier = topics.requests(".province.Gansu")

    async def counts() -> dict[str, int]:
        await ensure_topics(settings, also=[tier])
        consumer = AIOKafkaConsumer(**client_kwargs(settings))
        await consumer.start()
        try:
            await consumer.topics()  # fetches the cluster's metadata
            names = [topics.name(s) for s in (TASK_REQUEST, PLACEMENT, REJECTION, ROLLUP)] + [tier]
            return {n: len(consumer.partitions_for_topic(n) or ()) for n in names}
        finally:
            await consumer.stop()

    assert asyncio.run(counts()) == {
        **{topics.name(s): 5 for s in (TASK_REQUEST, PLACEMENT, REJECTION)},
        tier: 5,
        topics.name(ROLLUP): 2,
    }


def test_the_workers_producer_fills_the_same_large_batches(settings: Settings, tmp_path) -> None:
    app = faust_app(settings.model_copy(update={"data_dir": tmp_path}), "bus-test")
    assert app.conf.producer_max_batch_size == BULK_BATCH_BYTES and app.conf.producer_linger > 0
