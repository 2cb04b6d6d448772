"""A small registered fleet on the real broker, and telemetry from it at chosen times and values."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from suanwang.bus import EventProducer, consumer_kwargs, contract_consumer, event, read_to_end
from suanwang.clock import now_ms
from suanwang.schemas.codec import Codec
from suanwang.schemas.topics import REGISTRY, TELEMETRY, Topics, TopicSpec
from suanwang.settings import Settings
from suanwang.simulator.workload import registration
from suanwang.topology import load_network, scaled_nodes

MINUTE_MS = 60_000


def fleet(size: int) -> list[dict[str, Any]]:
    """Registrations of `size` nodes spread over the hubs like the network model."""
    network = load_network()
    return [registration(spec, network) for spec in scaled_nodes(network, size)]


def telemetry(reg: dict[str, Any], at_ms: int, load: float = 0.5, **overrides: Any) -> dict[str, Any]:
    record = event(
        node_id=reg["node_id"],
        hub=reg["hub"],
        cluster=reg["cluster"],
        province=reg["province"],
        cpu_util=load,
        memory_util=load / 2,
        accelerator_util=load if reg["accelerators"] else 0.0,
        power_kw=reg["idle_power_kw"] + (reg["power_kw"] - reg["idle_power_kw"]) * load,
        inlet_temp_c=22.0,
        running_tasks=1,
    )
    record["event_time"] = at_ms
    return {**record, **overrides}


def closed_minute(behind_s: float = 300) -> int:
    """A minute boundary at least `behind_s` ago: windows ending there close once the clock passes it."""
    t = now_ms() - int(behind_s * 1000)
    return t - t % MINUTE_MS


async def register(producer: EventProducer, regs: list[dict[str, Any]]) -> None:
    for reg in regs:
        await producer.send(REGISTRY, reg)
    await producer.flush()


async def send_telemetry(producer: EventProducer, records: list[dict[str, Any]]) -> None:
    for record in records:
        await producer.send(TELEMETRY, record)
    await producer.flush()


async def send_raw(settings: Settings, topic: str, payloads: list[bytes], key_prefix: str) -> None:
    """Bytes as a broken producer would send them, bypassing the contract's encoder."""
    raw = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await raw.start()
    try:
        for i, payload in enumerate(payloads):
            await raw.send(topic, payload, key=f"{key_prefix}{i}".encode())
        await raw.flush()
    finally:
        await raw.stop()


def wrong_windows(samples: list[dict[str, Any]], published: list[list[Any]]) -> list[tuple[list[Any], list[Any]]]:
    """(published, expected) of each window that does not hold what the samples sent make: samples, nodes online
    and mean CPU (within Float32's precision). `published` rows: kind, key, window_s, start ms, those three."""
    out = []
    for kind, key, window_s, start_ms, *_ in published:
        inside = [
            s
            for s in samples
            if s["node_id" if kind == "node" else kind] == key
            and start_ms <= s["event_time"] < start_ms + window_s * 1000
        ]
        panes: dict[int, set[str]] = defaultdict(set)
        for s in inside:
            panes[s["event_time"] // 10_000].add(s["node_id"])
        nodes_online = max(1, round(sum(len(n) for n in panes.values()) / max(len(panes), 1)))
        mean = sum(s["cpu_util"] for s in inside) / max(len(inside), 1)
        out.append([kind, key, window_s, start_ms, len(inside), nodes_online, mean])
    return [
        (got, want)
        for got, want in zip(published, out, strict=True)
        if got[:-1] != want[:-1] or abs(got[-1] - want[-1]) > 1e-6
    ]


async def collect(
    settings: Settings, specs: list[TopicSpec], want: int, timeout_s: float = 60.0, settle_s: float = 0.0
) -> list[tuple[str, dict[str, Any]]]:
    """The records on `specs` (contract name, record) once `want` have come, and any that follow within `settle_s`."""
    consumer = contract_consumer(settings, specs, None)
    await consumer.start()
    codec, topics, out = Codec(), Topics(settings.topic_prefix), []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            if len(out) >= want:
                deadline, want = min(deadline, loop.time() + settle_s), float("inf")
            for tp, msgs in (await consumer.getmany(timeout_ms=200)).items():
                for m in msgs:
                    out.append((topics.spec(tp.topic).name, codec.decode(m.value)[1]))
    finally:
        await consumer.stop()
    return out


async def read_all(settings: Settings, specs: list[TopicSpec]) -> list[tuple[str, dict[str, Any]]]:
    """Every record on `specs` (contract name, record), from the start to the topics' current end."""
    consumer = AIOKafkaConsumer(**consumer_kwargs(settings, None))
    await consumer.start()
    codec, topics, out = Codec(), Topics(settings.topic_prefix), []

    async def keep(topic: str, msg: Any) -> None:
        out.append((topics.spec(topic).name, codec.decode(msg.value)[1]))

    try:
        await read_to_end(consumer, [topics.name(s) for s in specs], keep)
    finally:
        await consumer.stop()
    return out
