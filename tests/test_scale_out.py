"""Two `suanwang worker` processes in one consumer group split the telemetry and count every event once."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from aiokafka import AIOKafkaConsumer

from suanwang.bus import EventProducer, ensure_topics
from suanwang.lifeline import die_with_parent
from suanwang.process import READY_MARK
from suanwang.schemas.codec import Codec
from suanwang.schemas.topics import PANE_CHUNK, ROLLUP, TELEMETRY, Topics
from suanwang.settings import Settings
from tests.conftest import run_cli
from tests.evidence import caught_up, group_settled
from tests.fleet import MINUTE_MS, closed_minute, fleet, register, send_telemetry, telemetry, wrong_windows


def start_worker(settings: Settings, data_dir: Path) -> subprocess.Popen[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SUANWANG_")}
    env = {
        **clean,
        "SUANWANG_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "SUANWANG_TOPIC_PREFIX": settings.topic_prefix,
        "SUANWANG_SESSION_TIMEOUT_MS": str(settings.session_timeout_ms),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "suanwang", "worker", "--data-dir", str(data_dir)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, preexec_fn=die_with_parent(),
    )  # fmt: skip


def stop(workers: list[subprocess.Popen[str]]) -> None:
    for w in workers:
        w.send_signal(signal.SIGTERM)
    for w in workers:
        w.wait(timeout=60)


async def read_rollups(consumer: AIOKafkaConsumer, latest: dict[tuple, dict], done: Callable[[], bool] | None) -> None:
    """Keeps the newest version of each window (a window's versions share its key's partition, so the last
    read is the newest) until `done`, or, when `done` is None, until a poll brings nothing; 90 s at most."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not (done and done()):
        batch = await consumer.getmany(timeout_ms=1000)
        for messages in batch.values():
            for msg in messages:
                r = Codec().decode_as("Rollup", msg.value)
                latest[(r["scope_kind"], r["scope_key"], r["window_s"], int(r["window_start"].timestamp() * 1000))] = r
        if done is None and not batch:
            return


def test_two_workers_split_the_load_and_count_each_event_once(settings: Settings, tmp_path: Path) -> None:
    topics = Topics(settings.topic_prefix)
    regs = fleet(40)
    end = closed_minute()
    good = [telemetry(reg, end - 120_000 + i * 10_000 + 1_000) for reg in regs for i in range(12)]
    movers = [telemetry(regs[0], end + 290_000), telemetry(regs[0], end + 306_000)]
    asyncio.run(ensure_topics(settings))
    workers = [start_worker(settings, tmp_path / f"w{i}") for i in range(2)]
    try:
        for w in workers:
            assert w.stdout is not None and READY_MARK in w.stdout.readline()
        assert asyncio.run(group_settled(settings, members=2))  # both read from the first sample on

        async def produce_and_read_rollups() -> dict[tuple, dict]:
            producer = EventProducer(settings)
            await producer.start()
            await register(producer, regs)
            await send_telemetry(producer, [*good, *movers])
            await producer.stop()
            consumer = AIOKafkaConsumer(
                topics.name(ROLLUP), bootstrap_servers=settings.kafka_bootstrap, auto_offset_reset="earliest"
            )
            await consumer.start()
            latest: dict[tuple, dict] = {}
            try:
                await read_rollups(
                    consumer, latest, lambda: counted(latest, "hub") == counted(latest, "node") == len(good)
                )
            finally:
                await consumer.stop()
            return latest

        def counted(latest: dict[tuple, dict], kind: str) -> int:
            ends = {end, end - MINUTE_MS}
            return sum(
                r["samples"]
                for (k, _key, length, _start), r in latest.items()
                if k == kind and length == 60 and int(r["window_end"].timestamp() * 1000) in ends
            )

        latest = asyncio.run(produce_and_read_rollups())
    finally:
        stop(workers)
    for kind in ("node", "cluster", "hub", "province"):
        assert counted(latest, kind) == len(good), kind
    stored = []
    for i in range(2):
        out = run_cli(
            "sql", "--data-dir", str(tmp_path / f"w{i}"), "--format", "json",
            f"SELECT count() AS n FROM suanwang.telemetry WHERE kafka_topic = '{topics.name(TELEMETRY)}'",
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        stored.append(json.loads(out.stdout)[0]["n"])
    assert sum(stored) == len(good) + len(movers) and min(stored) > 0, stored  # split, each row stored once


def test_a_worker_joining_mid_stream_takes_its_windows_over_exactly(settings: Settings, tmp_path: Path) -> None:
    """A second worker joins halfway through 1,200 samples: the partitions it takes over move with their open
    windows (read back from the chunk topic), and every window's newest version holds exactly its samples."""
    topics = Topics(settings.topic_prefix)
    regs = fleet(40)
    end = closed_minute()
    loads = random.Random(3)
    samples = [telemetry(reg, end - 300_000 + i * 10_000, load=loads.random()) for i in range(30) for reg in regs]
    hubs = {r["hub"] for r in regs}
    asyncio.run(ensure_topics(settings))
    workers = [start_worker(settings, tmp_path / "w0")]

    def hub_minutes(latest: dict[tuple, dict], upto_end: int) -> bool:
        ends = {(h, e - MINUTE_MS) for h in hubs for e in range(end - 240_000, upto_end + 1, 10_000)}
        return ends <= {(key, start) for kind, key, w, start in latest if kind == "hub" and w == 60}

    async def scenario() -> dict[tuple, dict]:
        producer = EventProducer(settings)
        await producer.start()
        consumer = AIOKafkaConsumer(
            topics.name(ROLLUP), bootstrap_servers=settings.kafka_bootstrap, auto_offset_reset="earliest"
        )
        await consumer.start()
        latest: dict[tuple, dict] = {}
        try:
            await register(producer, regs)
            await send_telemetry(producer, samples[:600])
            await read_rollups(consumer, latest, lambda: hub_minutes(latest, end - 160_000))  # windows went out
            workers.append(start_worker(settings, tmp_path / "w1"))
            assert workers[1].stdout is not None and READY_MARK in workers[1].stdout.readline()
            assert await group_settled(settings, members=2)  # the partitions moved, with their open windows
            await send_telemetry(producer, samples[600:])
            await read_rollups(consumer, latest, lambda: hub_minutes(latest, end))
            assert await caught_up(settings, TELEMETRY, PANE_CHUNK)  # every version of every window is out
            await read_rollups(consumer, latest, None)
        finally:
            await consumer.stop()
            await producer.stop()
        return latest

    try:
        assert workers[0].stdout is not None and READY_MARK in workers[0].stdout.readline()
        latest = asyncio.run(scenario())
    finally:
        stop(workers)
    assert hub_minutes(latest, end), "a hub minute never went out"
    published = sorted([*key, r["samples"], r["nodes_online"], r["cpu_util_mean"]] for key, r in latest.items())
    wrong = wrong_windows(samples, published)
    assert not wrong, f"{len(wrong)} of {len(published)} windows wrong, e.g. {wrong[:3]}"
