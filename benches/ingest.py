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
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from rich.console import Console
from rich.progress import Progress

from suanwang.bus import EventProducer, client_kwargs, ensure_topics, event, make_codec
from suanwang.clock import now_ms
from suanwang.devstack.broker import EmbeddedBroker
from suanwang.errors import SuanwangError
from suanwang.lifeline import end_with
from suanwang.schemas.frames import frame_of
from suanwang.schemas.topics import REGISTRY, TELEMETRY, TELEMETRY_FRAME, Topics
from suanwang.settings import Settings
from suanwang.simulator.workload import registration
from suanwang.store import DATABASE, Store
from suanwang.topology import load_network, scaled_nodes

CHUNK = 500
TIMEOUT_S = 600.0


def _sample(reg: dict[str, Any], i: int) -> dict[str, Any]:
    load = 0.3 + 0.4 * ((i * 7919) % 100) / 100
    return event(
        node_id=reg["node_id"], hub=reg["hub"], cluster=reg["cluster"], province=reg["province"],
        cpu_util=load, memory_util=load / 2, accelerator_util=load if reg["accelerators"] else 0.0,
        power_kw=reg["idle_power_kw"] + (reg["power_kw"] - reg["idle_power_kw"]) * load,
        inlet_temp_c=24.0, running_tasks=1,
    )  # fmt: skip


def _messages(regs: list[dict[str, Any]], events: int, frame_size: int) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """(index of the first sample, the samples) of each message: one sample, or up to `frame_size` samples of
    distinct nodes of one cluster, the clusters in turn."""
    if not frame_size:
        for i in range(events):
            yield i, [_sample(regs[i % len(regs)], i)]
        return
    by_cluster: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for reg in regs:
        by_cluster[reg["cluster"]].append(reg)
    members, cursor, i = list(by_cluster.values()), defaultdict(int), 0
    while i < events:
        for k, nodes in enumerate(members):
            size = min(frame_size, len(nodes), events - i)
            if size <= 0:
                break
            start = cursor[k]
            yield i, [_sample(nodes[(start + j) % len(nodes)], i + j) for j in range(size)]
            cursor[k], i = start + size, i + size


def _produce(
    settings: Settings, regs: list[dict[str, Any]], events: int, rate: float, frame_size: int, done: Any
) -> None:
    """Child process: `events` samples round-robin over the nodes (one a record, or `frame_size` a collector
    frame), at `rate` samples per second (0: flat out)."""
    end_with(os.getppid())  # a bench killed takes its producer with it

    async def run() -> float:
        codec = make_codec(settings)
        spec = TELEMETRY_FRAME if frame_size else TELEMETRY
        topic = Topics(settings.topic_prefix).name(spec)
        producer = AIOKafkaProducer(**client_kwargs(settings), linger_ms=5, acks=1)
        await producer.start()
        start = time.perf_counter()
        sent = 0
        try:
            for first, samples in _messages(regs, events, frame_size):
                if rate and first >= sent + CHUNK:  # paced: the samples from `first` are due at first / rate s
                    await asyncio.sleep(max(0.0, start + first / rate - time.perf_counter()))
                    sent = first
                record = frame_of(samples, f"f{first}", now_ms()) if frame_size else samples[0]
                await producer.send(topic, codec.encode(spec.schema, record), key=spec.key_of(record))
            await producer.flush()
        finally:
            await producer.stop()
        return time.perf_counter() - start

    done.put(asyncio.run(run()))


def bench_ingest(
    settings: Settings, events: int, nodes: int, rate: float, console: Console, frame_size: int = 0
) -> dict[str, Any]:
    """Runs the bench on the configured Kafka and ClickHouse, or on an embedded broker and a temporary chdb."""
    with contextlib.ExitStack() as stack:
        update: dict[str, Any] = {"topic_prefix": f"bench{os.getpid()}-{now_ms()}."}
        if not settings.kafka_bootstrap:
            broker = stack.enter_context(EmbeddedBroker())
            update["kafka_bootstrap"] = broker.bootstrap
        if not settings.clickhouse_url:
            update["data_dir"] = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="suanwang-bench-")))
        return asyncio.run(_run(settings.model_copy(update=update), events, nodes, rate, console, frame_size))


async def _run(
    settings: Settings, events: int, nodes: int, rate: float, console: Console, frame_size: int
) -> dict[str, Any]:
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
        child = spawn.Process(target=_produce, args=(settings, regs, events, rate, frame_size, done), daemon=True)
        child.start()
        await _until_stored(ctx, store, settings, events, console)
        produce_s = done.get(timeout=60)
    finally:
        if child is not None:
            child.join(timeout=10)
        await app.stop()
    topic = Topics(settings.topic_prefix).name(TELEMETRY_FRAME if frame_size else TELEMETRY)
    figures = await store.run(_figures, store, topic)
    store.close()
    messages = sum(1 for _ in _messages(regs, events, frame_size)) if frame_size else events
    per_message = await _faust_ceiling(settings, topic, messages)
    ceiling = per_message * events / messages if per_message else None  # in samples/s
    return {
        "events_sent": events,
        "nodes": nodes,
        "frame_size": frame_size or None,
        "messages_sent": messages,
        "rate_asked": rate or None,
        **figures,
        "events_aggregated": ctx.counts["samples_aggregated"],
        "producer_events_per_s": events / produce_s,
        "faust_ceiling_events_per_s": ceiling,
        "worker_share_of_faust_ceiling": figures["events_per_s"] / ceiling if ceiling else None,
    }


async def _faust_ceiling(settings: Settings, topic: str, events: int) -> float | None:
    """Messages/s of one Faust agent that only counts the same telemetry: what Faust itself allows here. Its
    batches hold a twentieth of the messages at most, so a few thousand frames are timed too (the first batch
    is not); None if nothing but the first batch came."""
    from suanwang.streams.app import faust_app

    app = faust_app(settings, f"{settings.topic_prefix}ceiling")
    seen = {"n": 0, "first": 0.0, "last": 0.0}
    batch_size = min(settings.sink_batch_size, max(1, events // 20))

    @app.agent(app.topic(topic, value_serializer="raw"), name="count")
    async def count(stream: Any) -> None:
        async for batch in stream.take_events(batch_size, within=0.5):
            if not seen["first"]:  # the clock starts after the first batch, which is not counted
                seen["first"] = time.perf_counter()
                continue
            seen["n"] += len(batch)
            seen["last"] = time.perf_counter()

    await app.start()
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while seen["n"] < events - batch_size and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
    finally:
        await app.stop()
    return seen["n"] / max(seen["last"] - seen["first"], 1e-9) if seen["n"] else None


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
