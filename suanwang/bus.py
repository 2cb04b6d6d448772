"""Kafka for every service: topic creation, client settings, and a producer that speaks the contract."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.record.memory_records import MemoryRecords

from suanwang.clock import now_ms
from suanwang.errors import SuanwangError
from suanwang.schemas.codec import Codec
from suanwang.schemas.topics import ALL_TOPICS, DEADLETTER, Topics, TopicSpec
from suanwang.security import kafka_security, registry_conf
from suanwang.settings import Settings


def event(**fields: Any) -> dict[str, Any]:
    """A record with a fresh event id (128 random bits, hex: a uuid4 costs ten times more) and the current time."""
    return {"event_id": os.urandom(16).hex(), "event_time": now_ms(), **fields}


def dead_letter(component: str, msg: Any, error: str, sample: int = -1, payload: bytes | None = None) -> dict[str, Any]:
    """A DeadLetter record keeping an unprocessable message whole (or, for one `sample` of a frame, that
    sample's `payload`), with where it came from and why."""
    return event(
        component=component,
        source_topic=msg.topic,
        partition=msg.partition,
        offset=msg.offset,
        key=msg.key,
        payload=payload if payload is not None else msg.value or b"",
        error=error,
        sample=sample,
    )


def client_kwargs(settings: Settings) -> dict[str, Any]:
    """Every aiokafka client's connection arguments, transport security included."""
    return {"bootstrap_servers": settings.kafka_bootstrap, "client_id": "suanwang", **kafka_security(settings)}


def consumer_kwargs(
    settings: Settings, group_id: str | None, auto_commit: bool = True, dispatch_path: bool = False
) -> dict[str, Any]:
    """Low-latency consumer settings: fetches return as soon as a record is there (on Kafka).

    `auto_commit=False` for a consumer whose offsets `consume` commits only after what it produced is
    delivered: a crash then redelivers, and never loses, the requests whose answers were still unsent.
    `dispatch_path` for a consumer a request's latency waits on: it fetches with the shorter wait."""
    return {
        **client_kwargs(settings),
        "group_id": group_id,
        "session_timeout_ms": settings.session_timeout_ms,
        "heartbeat_interval_ms": max(500, settings.session_timeout_ms // 6),
        "auto_offset_reset": "earliest",
        "fetch_max_wait_ms": settings.dispatch_fetch_max_wait_ms if dispatch_path else settings.fetch_max_wait_ms,
        "enable_auto_commit": group_id is not None and auto_commit,
    }


def make_codec(settings: Settings) -> Codec:
    topics = Topics(settings.topic_prefix)
    return Codec(registry_conf(settings), {spec.schema: topics.name(spec) for spec in ALL_TOPICS})


def partitions_of(spec: TopicSpec, settings: Settings) -> int:
    """Partitions a contract topic is created with: the dispatch path's topics have their own count."""
    return settings.dispatch_partitions if spec.one_per_batch else settings.topic_partitions


async def ensure_topics(settings: Settings, also: Sequence[str] = (), timeout_s: float = 15.0) -> None:
    """Creates every contract topic that is missing, and the topics named in `also` (the dispatch tiers'
    request topics); a clear error when Kafka cannot be reached."""
    topics = Topics(settings.topic_prefix)
    admin = AIOKafkaAdminClient(**client_kwargs(settings), request_timeout_ms=int(timeout_s * 1000))
    try:
        await admin.start()
    except KafkaError as exc:
        raise SuanwangError(
            f"cannot reach Kafka at {settings.kafka_bootstrap} ({exc.__class__.__name__}); "
            "check SUANWANG_KAFKA_BOOTSTRAP, or unset it to use the embedded broker"
        ) from None
    try:
        existing = set(await admin.list_topics())
        contract = [(topics.name(spec), spec.compacted, partitions_of(spec, settings)) for spec in ALL_TOPICS]
        tiers = [(name, False, settings.dispatch_partitions) for name in also]
        wanted = [
            NewTopic(
                name,
                partitions,
                settings.topic_replication,
                topic_configs={"cleanup.policy": "compact"} if compacted else {},
            )
            for name, compacted, partitions in contract + tiers
            if name not in existing
        ]
        if wanted:
            with contextlib.suppress(TopicAlreadyExistsError):  # another service created them first
                await admin.create_topics(wanted)
    finally:
        await admin.close()


BULK_BATCH_BYTES = 512 * 1024  # a bulk producer's batch: a burst of rollups whole, under Kafka's 1-MB message limit


class EventProducer:
    """Publishes contract records: Avro-encoded, keyed by the topic's key field. A bulk stream's producer
    lingers (`linger_ms`) to send fewer, larger batches: the broker's cost grows with the batches it holds."""

    def __init__(self, settings: Settings, codec: Codec | None = None, linger_ms: int = 0) -> None:
        self.topics = Topics(settings.topic_prefix)
        self.codec = codec or make_codec(settings)
        self._settings = settings
        self._linger_ms = linger_ms
        self._producer: AIOKafkaProducer

    async def start(self) -> None:
        self._producer = AIOKafkaProducer(
            **client_kwargs(self._settings),
            linger_ms=self._linger_ms,
            max_batch_size=BULK_BATCH_BYTES if self._linger_ms else 16384,  # 16 kB: aiokafka's own default
            acks=1,
        )
        try:
            await self._producer.start()
        except KafkaConnectionError as exc:
            raise SuanwangError(f"cannot reach Kafka: {exc}; check SUANWANG_KAFKA_BOOTSTRAP") from None

    async def stop(self) -> None:
        await self._producer.stop()

    async def send(self, spec: TopicSpec, record: dict[str, Any], topic: str | None = None) -> None:
        """Queues the record for its topic (or `topic`, e.g. a tier's request topic); delivery errors surface
        in flush()/stop()."""
        await self._producer.send(
            topic or self.topics.name(spec), self.codec.encode(spec.schema, record), key=spec.key_of(record)
        )

    async def dead_letter(self, component: str, msg: Any, error: str) -> None:
        await self.send(DEADLETTER, dead_letter(component, msg, error))

    async def flush(self) -> None:
        await self._producer.flush()


def contract_consumer(
    settings: Settings, specs: list[TopicSpec], group_id: str | None, auto_commit: bool = True
) -> AIOKafkaConsumer:
    topics = Topics(settings.topic_prefix)
    return AIOKafkaConsumer(*(topics.name(s) for s in specs), **consumer_kwargs(settings, group_id, auto_commit))


MessageHandler = Callable[[str, Any], Awaitable[None]]


async def read_to_end(consumer: AIOKafkaConsumer, topic_names: list[str], handle: MessageHandler) -> None:
    """Hands every message of the topics (all partitions, no group), from the start up to their current end."""
    await consumer.topics()  # loads partition metadata
    parts = [TopicPartition(t, p) for t in topic_names for p in (consumer.partitions_for_topic(t) or ())]
    consumer.assign(parts)
    await consumer.seek_to_beginning(*parts)
    ends = await consumer.end_offsets(parts)
    while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
        for tp, messages in (await consumer.getmany(timeout_ms=200)).items():
            for msg in messages:
                await handle(tp.topic, msg)


async def follow(consumer: AIOKafkaConsumer, handle: MessageHandler, stop: asyncio.Event) -> None:
    """Keeps handing new messages of an assigned consumer until stopped."""
    while not stop.is_set():
        for tp, messages in (await consumer.getmany(timeout_ms=100)).items():
            for msg in messages:
                await handle(tp.topic, msg)


class Lag:
    """How far consumer groups are behind: end offset minus committed offset, summed over topics' partitions.
    0 means a group has processed, and produced for, everything the topics hold when asked."""

    def __init__(self, settings: Settings) -> None:
        self.admin = AIOKafkaAdminClient(**client_kwargs(settings))
        self.ends = AIOKafkaConsumer(**client_kwargs(settings), enable_auto_commit=False)

    async def __aenter__(self) -> Lag:
        await self.admin.start()
        await self.ends.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.ends.stop()
        await self.admin.close()

    async def behind(self, group: str, topic_names: list[str]) -> int:
        return sum((await self.by_partition(group, topic_names)).values())

    async def by_partition(self, group: str, topic_names: list[str]) -> dict[TopicPartition, int]:
        """What `group` has not committed yet, per partition of the topics."""
        committed, latest = await self._offsets(group, topic_names)
        # an end offset read from another broker view can trail a commit made a moment before: never below 0
        return {tp: max(0, latest[tp] - done) for tp, done in committed.items()}

    async def behind_s(self, group: str, topic_names: list[str]) -> float:
        """How long ago the oldest message `group` has not committed was written: its lag in time (0 when none),
        read from that message's own timestamp."""
        return max((await self.behind_s_by_topic(group, topic_names)).values(), default=0.0)

    async def behind_s_by_topic(self, group: str, topic_names: list[str]) -> dict[str, float]:
        """`behind_s` per topic (topics with nothing waiting are left out): which of them holds a group back."""
        committed, latest = await self._offsets(group, topic_names)
        waiting = {tp: done for tp, done in committed.items() if latest[tp] > done}
        if not waiting:
            return {}
        self.ends.assign(list(waiting))
        for tp, done in waiting.items():
            self.ends.seek(tp, done)
        oldest_ms: dict[TopicPartition, int] = {}
        deadline = time.monotonic() + 5.0
        while len(oldest_ms) < len(waiting) and time.monotonic() < deadline:
            for tp, messages in (await self.ends.getmany(timeout_ms=500)).items():
                if messages and tp not in oldest_ms:
                    oldest_ms[tp] = messages[0].timestamp
                    self.ends.pause(tp)
        self.ends.assign([])
        now = time.time()
        ages: dict[str, float] = {}
        for tp, written_ms in oldest_ms.items():
            ages[tp.topic] = max(ages.get(tp.topic, 0.0), now - written_ms / 1000)
        return ages

    async def _offsets(
        self, group: str, topic_names: list[str]
    ) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
        """Per partition of the topics, the offset `group` committed (0 when none) and the end offset."""
        await self.ends.topics()
        parts = [TopicPartition(n, p) for n in topic_names for p in self.ends.partitions_for_topic(n) or ()]
        committed = await self.admin.list_consumer_group_offsets(group, partitions=parts)
        latest = await self.ends.end_offsets(parts)
        return {tp: max(0, committed[tp].offset) if tp in committed else 0 for tp in parts}, latest

    async def caught_up(self, group: str, topic_names: list[str], timeout_s: float) -> bool:
        """Waits until `group` has committed every partition to its end; False when `timeout_s` ran out first."""
        deadline = time.monotonic() + timeout_s
        while await self.behind(group, topic_names):
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.2)
        return True


HELD_FETCH_BYTES = 64 * 1024 * 1024  # one read of a partition's log by `batches_held`


async def batches_held(settings: Settings, topic_names: list[str]) -> dict[str, int]:
    """How many record batches each topic's log holds now, counted by reading it whole with raw fetches (a
    consumer hides batches): the embedded broker's cost grows with them, not with records or bytes."""
    client = AIOKafkaClient(**client_kwargs(settings))
    await client.bootstrap()
    try:
        client.set_topics(topic_names)
        await client.force_metadata_update()
        held = dict.fromkeys(topic_names, 0)
        for name in topic_names:
            for partition in sorted(client.cluster.partitions_for_topic(name) or ()):
                held[name] += await _partition_batches(client, TopicPartition(name, partition))
        return held
    finally:
        await client.close()


async def _partition_batches(client: AIOKafkaClient, tp: TopicPartition) -> int:
    leader, offset, end, count = client.cluster.leader_for_partition(tp), 0, None, 0
    while end is None or offset < end:
        request = FetchRequest(100, 1, HELD_FETCH_BYTES, 0, [(tp.topic, [(tp.partition, offset, HELD_FETCH_BYTES)])])
        ((_topic, ((_p, error, end, *_, raw),)),) = (await client.send(leader, request)).topics
        if error:
            raise SuanwangError(f"reading {tp.topic}[{tp.partition}] at offset {offset}: Kafka error {error}")
        records, was_at = MemoryRecords(raw), offset
        while (batch := records.next_batch()) is not None:
            count, offset = count + 1, batch.next_offset
        if offset == was_at < end:  # nothing whole came back below the end: stop rather than ask forever
            raise SuanwangError(f"reading {tp.topic}[{tp.partition}] at offset {offset}: no batch below end {end}")
    return count
