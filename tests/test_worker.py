"""The Faust worker on the real broker and chdb: bad records go to the dead letters once, good ones land."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaProducer

from suanwang.bus import EventProducer, ensure_topics, event
from suanwang.schemas.codec import Codec
from suanwang.schemas.topics import TELEMETRY, Topics
from suanwang.settings import Settings
from suanwang.store import Store
from suanwang.streams.app import create_app
from tests.samples import sample_record


def _telemetry(node_id: str) -> dict:
    return event(
        node_id=node_id,
        hub="gansu",
        cluster="qingyang",
        province="Gansu",
        cpu_util=0.4,
        memory_util=0.3,
        accelerator_util=0.2,
        power_kw=0.6,
        inlet_temp_c=22.0,
        running_tasks=1,
    )


async def _wait_for(predicate, timeout_s: float = 60.0) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.2)
    return False


def test_worker_dead_letters_each_bad_record_once_and_keeps_the_stream(settings: Settings, store: Store) -> None:
    prefix = settings.topic_prefix
    garbage = [
        b"nope",  # shorter than the header
        b"\x00\x00\x00\x00\x07abc",  # unknown schema id
        Codec().encode("Alert", sample_record("Alert")),  # a record of another topic's schema
        Codec().encode("NodeTelemetry", _telemetry("cut"))[:12],  # truncated body
    ]

    def count(sql: str) -> int:
        return store.query(sql, {"p": prefix})[1][0][0]

    async def scenario() -> tuple[int, list[tuple]]:
        await ensure_topics(settings)
        app, _ctx = create_app(settings, store)
        await app.start()
        try:
            producer = EventProducer(settings)
            await producer.start()
            raw = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
            await raw.start()
            telemetry_topic = Topics(prefix).name(TELEMETRY)
            for i in range(30):
                await producer.send(TELEMETRY, _telemetry(f"{prefix}n{i}"))
                if i % 8 == 0:
                    await raw.send_and_wait(telemetry_topic, garbage[i // 8], key=f"bad{i}".encode())
            await producer.flush()
            await raw.stop()
            await producer.stop()
            good = "SELECT count() FROM suanwang.telemetry WHERE startsWith(node_id, {p:String})"
            dead = "SELECT count() FROM suanwang.dead_letters WHERE source_topic = concat({p:String}, 'telemetry.node')"
            await _wait_for(lambda: count(good) >= 30 and count(dead) >= len(garbage))
            await asyncio.sleep(1.0)  # a second dead letter per record, if any agent sent one, would land now
        finally:
            await app.stop()
        rows = store.query(
            "SELECT component, key, partition, offset, error FROM suanwang.dead_letters "
            "WHERE startsWith(source_topic, {p:String})",
            {"p": prefix},
        )[1]
        return count(good), rows

    good, dead = asyncio.run(scenario())
    assert good == 30
    by_key = {key: error for _c, key, _p, _o, error in dead}  # keys spread over partitions: no order
    assert len(dead) == 4 and sorted(by_key) == ["bad0", "bad16", "bad24", "bad8"]
    assert {component for component, *_ in dead} == {"sink"}
    assert "shorter than the 5-byte header" in by_key["bad0"]
    assert "unknown schema id 7" in by_key["bad8"]
    assert "a Alert record where NodeTelemetry was expected" in by_key["bad16"]
    assert "does not match schema NodeTelemetry" in by_key["bad24"]
    assert len({(partition, offset) for _c, _k, partition, offset, _e in dead}) == 4
