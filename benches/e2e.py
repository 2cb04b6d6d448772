"""`suanwang bench e2e`: decision latency through the broker, against a relay that does no work at all.

Both paths run in one invocation at the same rate on the same broker: a child process that only relays
each message from one topic to another (the floor any service pays for a consume and a produce), and the
dispatcher service deciding real requests. Latency is from the moment a record is sent to the moment
the answer is consumed here.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import random
import struct
import subprocess
import sys
import time
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from rich.console import Console

from suanwang.bus import EventProducer, client_kwargs, consumer_kwargs, ensure_topics, make_codec
from suanwang.clock import now_ms
from suanwang.devstack.broker import EmbeddedBroker
from suanwang.errors import SuanwangError
from suanwang.lifeline import die_with_parent, end_with
from suanwang.process import READY_MARK
from suanwang.schemas.topics import PLACEMENT, REGISTRY, REJECTION, TASK_REQUEST, Topics
from suanwang.settings import Settings
from suanwang.simulator.workload import TaskGenerator, registration
from suanwang.topology import load_network, scaled_nodes

PROBE = b"probe"  # the key prefix of messages sent before the timed run
WARM_UP_SHARE = 0.1  # the first tenth of each run is left out: connections and caches settle


def _relay(settings: Settings, source: str, target: str, ready: Any) -> None:
    """Child process: consumes `source` and produces each message unchanged to `target`, with the services' settings."""
    end_with(os.getppid())  # a bench killed takes its producer with it

    async def run() -> None:
        producer = AIOKafkaProducer(**client_kwargs(settings), linger_ms=0, acks=1)
        consumer = AIOKafkaConsumer(source, **consumer_kwargs(settings, f"{source}-relay"))
        await producer.start()
        await consumer.start()
        ready.set()
        while True:
            for messages in (await consumer.getmany(timeout_ms=100, max_records=500)).values():
                for msg in messages:
                    await producer.send(target, msg.value, key=msg.key)

    asyncio.run(run())


def bench_e2e(settings: Settings, rate: float, seconds: float, nodes: int, console: Console) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        update: dict[str, Any] = {"topic_prefix": f"e2e{os.getpid()}-{now_ms()}."}
        if not settings.kafka_bootstrap:
            update["kafka_bootstrap"] = stack.enter_context(EmbeddedBroker()).bootstrap
        return asyncio.run(_run(settings.model_copy(update=update), rate, seconds, nodes, console))


async def _run(settings: Settings, rate: float, seconds: float, nodes: int, console: Console) -> dict[str, Any]:
    await ensure_topics(settings)
    console.print(f"relay at {rate:g}/s for {seconds:g} s …")
    relay = await _relay_run(settings, rate, seconds)
    console.print(f"dispatcher at {rate:g}/s for {seconds:g} s on {nodes:,} nodes …")
    dispatch = await _dispatch_run(settings, rate, seconds, nodes)
    figures = {"rate": rate, "seconds": seconds, "nodes": nodes}
    figures["sent"] = int(rate * seconds)
    for name, ms in (("relay", relay), ("dispatch", dispatch)):
        kept = np.array(ms[int(len(ms) * WARM_UP_SHARE) :])
        figures[f"{name}_answers"] = len(ms)
        figures[f"{name}_p50_ms"] = float(np.percentile(kept, 50))
        figures[f"{name}_p99_ms"] = float(np.percentile(kept, 99))
    figures["dispatch_over_relay_p99"] = figures["dispatch_p99_ms"] / figures["relay_p99_ms"]
    return figures


async def _paced(rate: float, seconds: float, send: Any) -> None:
    """Calls `send(i)` `rate` times a second, `rate` × `seconds` times in all."""
    start, sent, total = time.perf_counter(), 0, int(rate * seconds)
    while sent < total:
        due = min(total, int((time.perf_counter() - start) * rate) + 1)
        while sent < due:
            await send(sent)
            sent += 1
        await asyncio.sleep(0.001)


async def _until_answering(send: Any, consumer: AIOKafkaConsumer) -> None:
    """Sends probes until one is answered: the service has joined its group and consumes (a join takes
    about a session timeout), so the timed run measures the path, not the join."""
    deadline, probe = time.monotonic() + 90, 0
    while time.monotonic() < deadline:
        await send(probe)
        probe += 1
        if any((await consumer.getmany(timeout_ms=1000)).values()):
            while any((await consumer.getmany(timeout_ms=500)).values()):
                pass  # the probes' answers are not measured
            return
    raise SuanwangError("no answer within 90 s: the service is not consuming")


async def _timed_run(rate: float, seconds: float, send: Any, consumer: AIOKafkaConsumer, sent_ms: Any) -> list[float]:
    """Sends at `rate` while reading the answers; each answer's latency in ms."""
    got: list[float] = []
    expected = int(rate * seconds)  # what _paced sends

    async def read() -> None:
        while len(got) < expected:
            for messages in (await consumer.getmany(timeout_ms=20)).values():
                now = time.time() * 1000
                got.extend(now - sent_ms(m) for m in messages if not m.key.startswith(PROBE))

    reader = asyncio.create_task(read())
    await _paced(rate, seconds, send)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(reader, 30)
    return got


async def _relay_run(settings: Settings, rate: float, seconds: float) -> list[float]:
    topics = Topics(settings.topic_prefix)
    source, target = topics.name(TASK_REQUEST) + ".relay-in", topics.name(TASK_REQUEST) + ".relay-out"
    spawn = multiprocessing.get_context("spawn")
    ready = spawn.Event()
    child = spawn.Process(target=_relay, args=(settings, source, target, ready), daemon=True)
    child.start()
    producer = AIOKafkaProducer(**client_kwargs(settings), linger_ms=0, acks=1)
    consumer = AIOKafkaConsumer(target, **consumer_kwargs(settings, None))
    await producer.start()
    await consumer.start()
    try:
        await asyncio.sleep(0)
        if not await asyncio.to_thread(ready.wait, 60):
            raise SuanwangError("the relay did not start within 60 s")
        await consumer.seek_to_end()
        padding = b"x" * 600  # about the size of a request

        async def send(i: int, key: bytes = b"") -> None:
            await producer.send(source, struct.pack("d", time.time() * 1000) + padding, key=key or str(i).encode())

        async def probe(i: int) -> None:
            await send(i, PROBE + str(i).encode())

        await _until_answering(probe, consumer)
        return await _timed_run(rate, seconds, send, consumer, lambda m: struct.unpack("d", m.value[:8])[0])
    finally:
        await consumer.stop()
        await producer.stop()
        child.kill()


async def _dispatch_run(settings: Settings, rate: float, seconds: float, nodes: int) -> list[float]:
    network = load_network()
    producer = EventProducer(settings)
    await producer.start()
    for spec in scaled_nodes(network, nodes):
        await producer.send(REGISTRY, registration(spec, network))
    await producer.flush()
    service = subprocess.Popen(
        [sys.executable, "-m", "suanwang", "dispatcher"],
        env={**os.environ, **settings.to_env()},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        preexec_fn=die_with_parent(),
    )
    consumer = AIOKafkaConsumer(**consumer_kwargs(settings, None))
    try:
        line = await asyncio.to_thread(service.stdout.readline) if service.stdout else ""
        if READY_MARK not in line:
            raise SuanwangError("the dispatcher did not start")
        topics = Topics(settings.topic_prefix)
        consumer.subscribe([topics.name(PLACEMENT), topics.name(REJECTION)])
        await consumer.start()
        while not consumer.assignment():
            await consumer.getmany(timeout_ms=200)
        await consumer.seek_to_end()
        generator = TaskGenerator(network, random.Random(7))
        requests = [generator.next(now_ms()) for _ in range(int(rate * seconds) + 1)]

        async def send(i: int) -> None:
            await producer.send(TASK_REQUEST, {**requests[i], "event_time": now_ms()})

        async def probe(i: int) -> None:
            await producer.send(
                TASK_REQUEST, {**requests[0], "task_id": f"{PROBE.decode()}-{i}", "event_time": now_ms()}
            )
            await producer.flush()

        await _until_answering(probe, consumer)
        codec = make_codec(settings)
        return await _timed_run(
            rate, seconds, send, consumer, lambda m: codec.decode(m.value)[1]["request_time"].timestamp() * 1000
        )
    finally:
        await consumer.stop()
        await producer.stop()
        service.terminate()
        service.wait(timeout=30)
