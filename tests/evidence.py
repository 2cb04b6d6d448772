"""What tests wait for instead of a fixed time: a condition that can be read, or a consumer group that has
committed every partition of its topics to their end."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

from suanwang.bus import Lag, client_kwargs
from suanwang.schemas.topics import Topics, TopicSpec
from suanwang.settings import Settings
from suanwang.streams.app import worker_group


async def wait_for(predicate: Callable[[], bool], timeout_s: float = 90.0) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.3)
    return False


async def caught_up(settings: Settings, *specs: TopicSpec, group: str | None = None, timeout_s: float = 90.0) -> bool:
    """True once `group` (default: the workers') has committed every partition of `specs` to its end, twice in
    a row: a service commits only what it has processed, stored and produced for, so anything it would store
    or send twice is out by then."""
    names = [Topics(settings.topic_prefix).name(s) for s in specs]
    group = group or worker_group(settings)
    async with Lag(settings) as lag:
        return await lag.caught_up(group, names, timeout_s) and await lag.caught_up(group, names, timeout_s)


async def group_settled(settings: Settings, members: int, group: str | None = None, timeout_s: float = 90.0) -> bool:
    """True once the group (default: the workers') is Stable with `members` members, each assigned partitions:
    its rebalance is over, so what is sent next is read by the members it will stay with. Fails saying what
    the group looked like last."""
    admin = AIOKafkaAdminClient(**client_kwargs(settings))
    await admin.start()
    seen: tuple[str, list[int]] = ("not described", [])  # state, partitions per member
    try:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while asyncio.get_running_loop().time() < deadline:
            (response,) = await admin.describe_consumer_groups([group or worker_group(settings)])
            _error, _id, state, _protocol_type, _protocol, found, *_ = response.groups[0]
            # tansu describes members without their assignments (empty bytes): Stable is its word that it is over
            assigned = [len(ConsumerProtocolMemberAssignment.decode(m[4]).partitions()) for m in found if m[4]]
            seen = (state, assigned)
            if state == "Stable" and len(found) == members and all(assigned):
                return True
            await asyncio.sleep(0.3)
    finally:
        await admin.close()
    raise AssertionError(f"group never settled with {members} members; last: {seen[0]}, assigned {seen[1]}")


async def end_offsets(settings: Settings, topic: str) -> dict[TopicPartition, int]:
    """The end offset of each partition of `topic`: where a reader that has read everything stands."""
    consumer = AIOKafkaConsumer(**client_kwargs(settings), enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()
        return await consumer.end_offsets(
            [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        )
    finally:
        await consumer.stop()
