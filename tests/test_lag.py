"""`bus.Lag`: how far a consumer group is behind, in messages and in seconds, read from the broker."""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from suanwang.bus import Lag, client_kwargs, consumer_kwargs, ensure_topics
from suanwang.schemas.topics import DEADLETTER, Topics
from suanwang.settings import Settings

GROUP = "lag-test"


def test_lag_in_seconds_is_the_age_of_the_oldest_message_not_committed(settings: Settings) -> None:
    topic = Topics(settings.topic_prefix).name(DEADLETTER)

    async def scenario() -> tuple[int, float, dict[str, float], float, int, float]:
        await ensure_topics(settings)
        producer = AIOKafkaProducer(**client_kwargs(settings))
        await producer.start()
        await producer.send_and_wait(topic, b"first")
        sent = time.time()
        await asyncio.sleep(1.5)  # the first message ages: the lag in seconds must be its age
        await producer.send_and_wait(topic, b"second")
        await producer.stop()
        async with Lag(settings) as lag:
            behind, age = await lag.behind(GROUP, [topic]), await lag.behind_s(GROUP, [topic])
            by_topic = await lag.behind_s_by_topic(GROUP, [topic])
            reader = AIOKafkaConsumer(topic, **consumer_kwargs(settings, GROUP, auto_commit=False))
            await reader.start()
            read = 0
            while read < 2:
                read += sum(len(m) for m in (await reader.getmany(timeout_ms=500)).values())
            await reader.commit()
            await reader.stop()
            after, age_after = await lag.behind(GROUP, [topic]), await lag.behind_s(GROUP, [topic])
        return behind, age, by_topic, time.time() - sent, after, age_after

    behind, age, by_topic, since_first, after, age_after = asyncio.run(scenario())
    assert behind == 2
    assert 1.5 <= age <= since_first + 1.0  # the first message's age, not the second's
    assert list(by_topic) == [topic] and 1.5 <= by_topic[topic] <= since_first + 1.0
    assert (after, age_after) == (0, 0.0)
