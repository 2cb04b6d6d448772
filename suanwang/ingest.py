"""`suanwang bench ingest`: telemetry through one worker, produced → aggregated → stored, in one run.

A child process produces telemetry as fast as it can, stamping each event when it is encoded; the worker
runs in this process on the real broker and ClickHouse. Throughput is the events stored over the time
from the first event's stamp to the last row's insert; lag is each row's insert time minus its stamp,
both read from ClickHouse (`ingested_at - event_time`).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from rich.console import Console
from rich.progress import Progress

from suanwang.broker import EmbeddedBroker
from suanwang.bus import EventProducer, client_kwargs, ensure_topics, event, now_ms
from suanwang.errors import SuanwangError
from suanwang.lifeline import end_with
from suanwang.schemas.codec import Codec
from suanwang.schemas.topics import REGISTRY, TELEMETRY, Topics
from suanwang.security import registry_conf
from suanwang.settings import Settings
from suanwang.store import DATABASE, Store
from suanwang.topology import load_network, scaled_nodes
from suanwang.workload import registration

CHUNK = 500
TIMEOUT_S = 600.0


def _produce(settings: Settings, regs: list[dict[str, Any]], events: int, rate: float, done: Any) -> None:
    """Child process: `events` telemetry records round-robin over the nodes, at `rate` per second (0: flat out)."""
    end_with(os.getppid())  # a bench killed takes its producer with it

    async def run() -> float:
        codec = Codec(registry_conf(settings))
        topic = Topics(settings.topic_prefix).name(TELEMETRY)
        producer = AIOKafkaProducer(**client_kwargs(settings), linger_ms=5, acks=1)
        await producer.start()
        start = time.perf_counter()
        try:
            for first in range(0, events, CHUNK):
                if rate:  # paced: this chunk is due at first / rate seconds
                    await asyncio.sleep(max(0.0, start + first / rate - time.perf_counter()))
                for i in range(first, min(first + CHUNK, events)):
                    reg = regs[i % len(regs)]
                    load = 0.3 + 0.4 * ((i * 7919) % 100) / 100
                    record = event(
                        node_id=reg["node_id"], hub=reg["hub"], cluster=reg["cluster"], province=reg["province"],
                        cpu_util=load, memory_util=load / 2, accelerator_util=load if reg["accelerators"] else 0.0,
                        power_kw=reg["idle_power_kw"] + (reg["power_kw"] - reg["idle_power_kw"]) * load,
                        inlet_temp_c=24.0, running_tasks=1,
                    )  # fmt: skip
                    await producer.send(topic, codec.encode("NodeTelemetry", record), key=reg["node_id"].encode())
                await producer.flush()
        finally:
            await producer.stop()
        return time.perf_counter() - start

    done.put(asyncio.run(run()))


def bench_ingest(settings: Settings, events: int, nodes: int, rate: float, console: Console) -> dict[str, Any]:
    """Runs the bench on the configured Kafka and ClickHouse, or on an embedded broker and a temporary chdb."""
    with contextlib.ExitStack() as stack:
        update: dict[str, Any] = {"topic_prefix": f"bench{os.getpid()}-{now_ms()}."}
        if not settings.kafka_bootstrap:
            broker = stack.enter_context(EmbeddedBroker())
            update["kafka_bootstrap"] = broker.bootstrap
        if not settings.clickhouse_url:
            update["data_dir"] = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="suanwang-bench-")))
        return asyncio.run(_run(settings.model_copy(update=update), events, nodes, rate, console))


async def _run(settings: Settings, events: int, nodes: int, rate: float, console: Console) -> dict[str, Any]:
    from suanwang.streams.app import create_app

    network = load_network()
    regs = [registration(spec, network) for spec in scaled_nodes(network, nodes)]
    await ensure_topics(settings)
    store = Store(settings)
    await store.run(store.migrate)
    producer = EventProducer(settings)
    await producer.start()
    for reg in regs:
        await producer.send(REGISTRY, reg)
    await producer.stop()
    app, ctx = create_app(settings, store)
    await app.start()
    child = None
    try:
        await _joined(app)
        spawn = multiprocessing.get_context("spawn")
        done = spawn.Queue()
        child = spawn.Process(target=_produce, args=(settings, regs, events, rate, done), daemon=True)
        child.start()
        await _until_stored(ctx, store, settings, events, console)
        produce_s = done.get(timeout=60)
    finally:
        if child is not None:
            child.join(timeout=10)
        await app.stop()
    figures = await store.run(_figures, store, Topics(settings.topic_prefix).name(TELEMETRY))
    store.close()
    ceiling = await _faust_ceiling(settings, events)
    return {
        "events_sent": events,
        "nodes": nodes,
        "rate_asked": rate or None,
        **figures,
        "events_aggregated": ctx.counts["samples_aggregated"],
        "producer_events_per_s": events / produce_s,
        "faust_ceiling_events_per_s": ceiling,
        "worker_share_of_faust_ceiling": figures["events_per_s"] / ceiling,
    }


async def _faust_ceiling(settings: Settings, events: int) -> float:
    """Events/s of one Faust agent that only counts the same telemetry: what Faust itself allows here."""
    from suanwang.streams.app import faust_app

    app = faust_app(settings, f"{settings.topic_prefix}ceiling")
    seen = {"n": 0, "first": 0.0, "last": 0.0}

    @app.agent(app.topic(Topics(settings.topic_prefix).name(TELEMETRY), value_serializer="raw"), name="count")
    async def count(stream: Any) -> None:
        async for batch in stream.take_events(settings.sink_batch_size, within=0.5):
            if not seen["first"]:  # the clock starts after the first batch, which is not counted
                seen["first"] = time.perf_counter()
                continue
            seen["n"] += len(batch)
            seen["last"] = time.perf_counter()

    await app.start()
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while seen["n"] < events - settings.sink_batch_size and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
    finally:
        await app.stop()
    return seen["n"] / max(seen["last"] - seen["first"], 1e-9)


async def _joined(app: Any) -> None:
    """Waits until the worker's consumer holds its partitions, so the clock starts with it consuming."""
    deadline = time.monotonic() + 60
    while not app.consumer.assignment():
        if time.monotonic() > deadline:
            raise SuanwangError("the worker did not join its consumer group within 60 s")
        await asyncio.sleep(0.2)


async def _until_stored(ctx: Any, store: Store, settings: Settings, events: int, console: Console) -> None:
    with Progress(console=console, transient=True, disable=not console.is_terminal) as progress:
        bar = progress.add_task("stored and aggregated", total=events)
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            stored, aggregated = ctx.counts["rows:telemetry"], ctx.counts["samples_aggregated"]
            progress.update(bar, completed=min(stored, aggregated))
            if stored >= events and aggregated >= events:
                return
            if time.monotonic() > deadline:
                raise SuanwangError(f"only {stored:,} of {events:,} events stored after {TIMEOUT_S:.0f} s")
            await asyncio.sleep(0.2)


def _figures(store: Store, topic: str) -> dict[str, Any]:
    _, rows = store.query(
        f"SELECT count(), min(event_time), max(ingested_at), "
        "quantile(0.5)(dateDiff('millisecond', event_time, ingested_at)), "
        "quantile(0.99)(dateDiff('millisecond', event_time, ingested_at)) "
        f"FROM {DATABASE}.telemetry WHERE kafka_topic = {{t:String}}",
        {"t": topic},
    )
    count, first, last, p50, p99 = rows[0]
    seconds = (last - first).total_seconds()
    return {
        "rows_in_clickhouse": count,
        "seconds": seconds,
        "events_per_s": count / seconds,
        "p50_lag_ms": float(p50),
        "p99_lag_ms": float(p99),
    }
