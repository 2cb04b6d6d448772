"""Two `suanwang worker` processes in one consumer group split the telemetry and count every event once."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer

from suanwang.bus import EventProducer, ensure_topics
from suanwang.schemas.codec import Codec
from suanwang.schemas.topics import ROLLUP, TELEMETRY, Topics
from suanwang.service import READY_MARK
from suanwang.settings import Settings
from tests.conftest import run_cli
from tests.fleet import MINUTE_MS, closed_minute, fleet, register, send_telemetry, telemetry


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
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip


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
        time.sleep(settings.session_timeout_ms / 1000 + 3)  # the group settles with both members

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
            latest: dict[tuple, dict] = {}  # the newest version of each window
            deadline = time.monotonic() + 90
            try:
                while time.monotonic() < deadline:
                    for messages in (await consumer.getmany(timeout_ms=500)).values():
                        for msg in messages:
                            r = Codec().decode_as("Rollup", msg.value)
                            latest[(r["scope_kind"], r["scope_key"], r["window_s"], r["window_start"])] = r
                    if counted(latest, "hub") == len(good) and counted(latest, "node") == len(good):
                        break
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
        for w in workers:
            w.send_signal(signal.SIGTERM)
        for w in workers:
            w.wait(timeout=60)
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
