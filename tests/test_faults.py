"""Fault tests on the real broker and chdb: processes killed with SIGKILL mid-stream, ClickHouse away, a slow
subscriber. Each checks counts exactly."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from suanwang.bus import EventProducer, contract_consumer, ensure_topics
from suanwang.clock import now_ms
from suanwang.lifeline import die_with_parent
from suanwang.process import READY_MARK
from suanwang.schemas.codec import Codec
from suanwang.schemas.topics import ALERT, PANE_CHUNK, PLACEMENT, REJECTION, ROLLUP, TASK_REQUEST, TELEMETRY, Topics
from suanwang.settings import Settings
from suanwang.simulator.workload import TaskGenerator, registration
from suanwang.store import Store
from suanwang.streams.app import create_app
from suanwang.topology import load_network, scaled_nodes
from tests.evidence import caught_up, wait_for
from tests.fleet import closed_minute, fleet, register, send_telemetry, telemetry, wrong_windows


def start_service(settings: Settings, *args: str) -> subprocess.Popen[str]:
    """A `suanwang` service in its own process, once it says it is serving."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUANWANG_")} | settings.to_env()
    process = subprocess.Popen(
        [sys.executable, "-m", "suanwang", *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, preexec_fn=die_with_parent(),
    )  # fmt: skip
    assert process.stdout is not None
    for line in process.stdout:
        if READY_MARK in line:
            return process
    raise AssertionError(f"suanwang {' '.join(args)} exited ({process.wait()}) before it was ready")


async def registered(settings: Settings, regs: list[dict[str, Any]]) -> EventProducer:
    """A started producer, once the contract's topics exist and `regs` are registered."""
    await ensure_topics(settings)
    producer = EventProducer(settings)
    await producer.start()
    await register(producer, regs)
    return producer


class Decisions:
    """Every placement and rejection on the dispatch topics, read from the start."""

    def __init__(self, settings: Settings) -> None:
        self.consumer = contract_consumer(settings, [PLACEMENT, REJECTION], None)
        self.topics, self.codec = Topics(settings.topic_prefix), Codec()
        self.records: list[tuple[str, dict[str, Any]]] = []

    async def until(self, done: Callable[[], bool], timeout_s: float = 120.0, settle_s: float = 0.0) -> bool:
        loop = asyncio.get_running_loop()
        deadline, settled = loop.time() + timeout_s, None
        while loop.time() < deadline and (settled is None or loop.time() < settled):
            for tp, messages in (await self.consumer.getmany(timeout_ms=200)).items():
                kind = self.topics.spec(tp.topic).name
                self.records += [(kind, self.codec.decode(m.value)[1]) for m in messages]
            if settled is None and done():
                settled = loop.time() + settle_s
        return done()


async def stop_all(dispatcher: subprocess.Popen[str], decisions: Decisions, producer: EventProducer) -> None:
    dispatcher.terminate()
    dispatcher.wait(30)
    await decisions.consumer.stop()
    await producer.stop()


def overcommitted(placements: list[dict[str, Any]], regs: dict[str, dict[str, Any]]) -> list[str]:
    """Nodes whose placements together hold more than the node has: CPU, memory, or any accelerator's share."""
    held: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    shares: Counter[tuple[str, int]] = Counter()
    for p in placements:
        held[p["node_id"]][0] += p["cpu_milli"]
        held[p["node_id"]][1] += p["memory_mib"]
        for index in p["accelerator_indices"]:
            shares[(p["node_id"], index)] += p["accelerator_milli"]
    over = [n for n, (cpu, mem) in held.items() if cpu > regs[n]["cpu_milli"] or mem > regs[n]["memory_mib"]]
    return over + [f"{n}#{i}" for (n, i), milli in shares.items() if milli > 1000]


def test_a_dispatcher_killed_mid_stream_decides_every_request_exactly_once(settings: Settings, tmp_path: Path) -> None:
    """SIGKILL after about a third of 600 requests, restart: each request has one decision, no node is overcommitted."""
    network = load_network()
    regs = {r["node_id"]: r for r in (registration(s, network) for s in scaled_nodes(network, 60))}
    generator = TaskGenerator(network, random.Random(11))
    requests = [generator.next(now_ms()) for _ in range(600)]
    ids = {r["task_id"] for r in requests}
    service_settings = settings.model_copy(update={"data_dir": tmp_path})
    kills = []

    async def scenario() -> Decisions:
        producer = await registered(settings, list(regs.values()))
        decisions = Decisions(settings)
        await decisions.consumer.start()
        dispatcher = start_service(service_settings, "dispatcher")
        try:

            async def feed(batch: list[dict[str, Any]]) -> None:
                for request in batch:
                    await producer.send(TASK_REQUEST, {**request, "event_time": now_ms()})
                    await asyncio.sleep(0.004)  # about 250 a second
                await producer.flush()

            feeding = asyncio.create_task(feed(requests))
            assert await decisions.until(lambda: len(decisions.records) >= 200)
            dispatcher.send_signal(signal.SIGKILL)
            kills.append(dispatcher.wait())
            await feeding
            dispatcher = start_service(service_settings, "dispatcher")
            decided = lambda: {r["task_id"] for _, r in decisions.records} >= ids  # noqa: E731
            assert await decisions.until(decided, settle_s=3.0), len({r["task_id"] for _, r in decisions.records})
        finally:
            await stop_all(dispatcher, decisions, producer)
        return decisions

    decisions = asyncio.run(scenario())
    assert kills == [-signal.SIGKILL]
    per_task = Counter(r["task_id"] for _, r in decisions.records if r["task_id"] in ids)
    assert set(per_task) == ids and set(per_task.values()) == {1}, per_task.most_common(3)
    placed = [r for kind, r in decisions.records if kind == PLACEMENT.name and r["task_id"] in ids]
    assert placed and len(placed) < len(ids)  # some capacity ran out: the check below has teeth
    assert overcommitted(placed, regs) == []


def test_the_sink_waits_out_clickhouse_and_then_stores_everything_once(settings: Settings, store: Store) -> None:
    """The telemetry table is detached (every insert fails) while 300 samples arrive; once it is back, each is
    stored exactly once and none is dead-lettered."""
    topic = Topics(settings.topic_prefix).name(TELEMETRY)
    regs = fleet(10)
    end = closed_minute()
    samples = [telemetry(reg, end - 300_000 + i * 10_000) for reg in regs for i in range(30)]
    stored = "SELECT count(), uniqExact(event_id) FROM suanwang.telemetry WHERE kafka_topic = {t:String}"
    dead = "SELECT count() FROM suanwang.dead_letters WHERE source_topic = {t:String}"

    def scalar(sql: str) -> tuple[int, ...]:
        return store.query(sql, {"t": topic})[1][0]

    async def scenario() -> int:
        producer = await registered(settings, regs)
        await send_telemetry(producer, samples[:100])
        app, ctx = create_app(settings, store)
        store.client.command("DETACH TABLE suanwang.telemetry")
        try:
            await app.start()
            await send_telemetry(producer, samples[100:])
            assert await wait_for(lambda: ctx.counts["store_retries"] >= 3)  # it keeps trying, backing off
        finally:
            store.client.command("ATTACH TABLE suanwang.telemetry")
        try:
            assert await wait_for(lambda: scalar(stored)[0] >= len(samples))
            assert await caught_up(settings, TELEMETRY)  # committed only once stored: a doubled row is in by now
        finally:
            await app.stop()
            await producer.stop()
        return ctx.counts["store_retries"]

    retries = asyncio.run(scenario())
    assert scalar(stored) == (len(samples), len(samples)) and scalar(dead) == (0,)
    assert retries >= 3


def _sql_through_api(data_dir: Path, query: str) -> list[list[Any]]:
    """A query through the API of the worker that holds the embedded store in `data_dir`."""
    url = (data_dir / "run" / "api.url").read_text().strip()
    request = urllib.request.Request(
        f"{url}/api/sql", data=json.dumps({"query": query}).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)["rows"]


class ChunkWatch:
    """Every pane chunk the workers deliver, read from the start: which telemetry offsets each run summed."""

    def __init__(self, settings: Settings) -> None:
        self.consumer = contract_consumer(settings, [PANE_CHUNK], None)
        self.codec = Codec()
        self.spans: set[tuple[int, int, int, int, int]] = set()  # partition, run offset, run start, first, end

    async def read(self) -> None:
        for messages in (await self.consumer.getmany(timeout_ms=200)).values():
            for m in messages:
                c = self.codec.decode_as("PaneChunk", m.value)
                run = (c["run_offset"], c["run_started"])
                self.spans.add((c["source_partition"], *run, c["chunk_offset"], c["chunk_end"]))

    async def until_summed(self, samples: int) -> None:
        """Until delivered chunks sum `samples` telemetry offsets, whichever run sent them."""
        while sum(end - first for *_, first, end in {(s[0], s[3], s[4]) for s in self.spans}) < samples:
            await self.read()

    def read_again(self) -> list[tuple[int, int, int]]:
        """(partition, first, end) of chunks a later run summed again: what a kill left uncommitted."""
        return [
            (p, first, end)
            for p, run_offset, started, first, end in self.spans
            if any(q == p and (o, t) > (run_offset, started) and o <= first for q, o, t, _f, _e in self.spans)
        ]


def test_a_worker_killed_mid_stream_stores_every_row_and_every_window_once(settings: Settings, tmp_path: Path) -> None:
    """SIGKILL while 1,200 samples stream in, restart: the table and its hourly view hold each sample once, and
    every rolling window of every scope holds exactly its samples: none lost, none doubled."""
    topic = Topics(settings.topic_prefix).name(TELEMETRY)
    regs = fleet(20)
    end = closed_minute()
    loads = random.Random(8)
    samples = [telemetry(reg, end - 600_000 + i * 10_000, load=loads.random()) for i in range(60) for reg in regs]
    worker_settings = settings.model_copy(update={"data_dir": tmp_path, "web_port": 0, "worker_drain_s": 20.0})
    rows = f"SELECT count(), uniqExact(event_id) FROM suanwang.telemetry WHERE kafka_topic = '{topic}'"
    hourly = (
        "SELECT sum(samples) FROM suanwang.telemetry_hourly WHERE cluster IN "
        f"(SELECT DISTINCT cluster FROM suanwang.telemetry WHERE kafka_topic = '{topic}')"
    )
    windows = (  # the worker has a store of its own: every window in it is this test's
        "SELECT scope_kind, scope_key, window_s, toUnixTimestamp64Milli(window_start), samples, nodes_online, "
        "cpu_util_mean FROM suanwang.rollups FINAL ORDER BY 1, 2, 3, 4"
    )
    last_hub_minute = (
        "SELECT count() FROM suanwang.rollups FINAL WHERE scope_kind = 'hub' AND window_s = 60 "
        f"AND toUnixTimestamp64Milli(window_end) = {end}"
    )
    hubs = len({r["hub"] for r in regs})
    kills = []

    async def scenario() -> tuple[list[Any], list[Any], list[list[Any]], ChunkWatch]:
        producer = await registered(settings, regs)
        chunks = ChunkWatch(settings)
        await chunks.consumer.start()
        worker = start_service(worker_settings, "worker", "--api")
        try:
            await send_telemetry(producer, samples[:600])
            await chunks.until_summed(600)
            assert await caught_up(settings, TELEMETRY, PANE_CHUNK)  # the first 600 are behind the kill
            await send_telemetry(producer, samples[600:700])
            await chunks.until_summed(700)  # delivered, and very likely not yet committed: read again after the kill
            worker.send_signal(signal.SIGKILL)
            kills.append(worker.wait())
            worker = start_service(worker_settings, "worker", "--api")
            await send_telemetry(producer, samples[700:])
            done = await wait_for(lambda: _sql_through_api(tmp_path, rows)[0][0] >= len(samples), timeout_s=120)
            assert done, _sql_through_api(tmp_path, rows)
            closed = await wait_for(lambda: _sql_through_api(tmp_path, last_hub_minute)[0][0] >= hubs, timeout_s=90)
            assert closed, _sql_through_api(tmp_path, last_hub_minute)
            assert await caught_up(settings, TELEMETRY, PANE_CHUNK, ROLLUP)  # a double would be stored by now
            await chunks.until_summed(len(samples))
            return (
                _sql_through_api(tmp_path, rows)[0],
                _sql_through_api(tmp_path, hourly)[0],
                _sql_through_api(tmp_path, windows),
                chunks,
            )
        finally:
            worker.terminate()
            worker.wait(60)
            await chunks.consumer.stop()
            await producer.stop()

    stored, in_hourly_view, published, chunks = asyncio.run(scenario())
    assert kills == [-signal.SIGKILL]
    assert chunks.read_again(), chunks.spans  # the kill left delivered chunks a restarted run summed again
    assert stored == [len(samples), len(samples)]  # every sample once: none lost, none doubled
    assert in_hourly_view == [len(samples)]
    minutes = {(k, w, start) for k, _key, w, start, *_ in published if k == "hub" and w == 60}
    assert {start for _k, _w, start in minutes} >= set(range(end - 600_000, end - 50_000, 10_000))  # every minute
    assert {k for k, *_ in published} == {"node", "cluster", "hub", "province"}
    wrong = wrong_windows(samples, published)
    assert not wrong, f"{len(wrong)} of {len(published)} windows wrong, e.g. {wrong[:3]}"


class OfflineWatch:
    """The nodes called offline, and the clusters whose collector was called silent, on the alert topic, in
    order, read from the start."""

    def __init__(self, settings: Settings) -> None:
        self.consumer = contract_consumer(settings, [ALERT], None)
        self.codec = Codec()
        self.nodes: list[str] = []
        self.clusters: list[str] = []

    async def until(self, done: Callable[[list[str]], bool], timeout_s: float = 60.0) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not done(self.nodes) and loop.time() < deadline:
            for messages in (await self.consumer.getmany(timeout_ms=200)).values():
                alerts = [self.codec.decode_as("Alert", m.value) for m in messages]
                raised = [a for a in alerts if not a["resolved"]]
                self.nodes += [a["scope_key"] for a in raised if a["kind"] == "node_offline"]
                self.clusters += [a["scope_key"] for a in raised if a["kind"] == "collector_silent"]
        return done(self.nodes)


def test_a_worker_frozen_mid_stream_calls_no_node_silent(settings: Settings, tmp_path: Path) -> None:
    """SIGSTOP for twice the silence bound while 20 nodes keep reporting, then SIGCONT: the worker reads what
    came meanwhile before it judges, so it calls no node offline. Then one node stops reporting, and then all:
    that node is called offline, then every other node once, or the collector of its stream (its cluster in
    its partition) when the stream carried several."""
    regs = fleet(20)
    everyone = {reg["node_id"] for reg in regs}
    worker_settings = settings.model_copy(
        update={"data_dir": tmp_path, "web_port": 0, "telemetry_interval_s": 0.5, "offline_after_intervals": 4}
    )  # silent after 2 s
    reporting, rounds = set(everyone), [0]
    stored = (
        f"SELECT count() FROM suanwang.telemetry WHERE kafka_topic = '{Topics(settings.topic_prefix).name(TELEMETRY)}'"
    )

    async def report(producer: EventProducer, stop: asyncio.Event) -> None:
        """Every node still reporting sends a sample of now, twice a second, as a collector does."""
        while not stop.is_set():
            await send_telemetry(producer, [telemetry(reg, now_ms()) for reg in regs if reg["node_id"] in reporting])
            rounds[0] += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)

    cluster_of = {reg["node_id"]: reg["cluster"] for reg in regs}

    async def scenario() -> tuple[list[str], str, list[str], list[str]]:
        producer = await registered(settings, regs)
        offline = OfflineWatch(settings)
        await offline.consumer.start()
        worker = start_service(worker_settings, "worker", "--api")
        stop = asyncio.Event()
        reporter = asyncio.create_task(report(producer, stop))
        try:
            assert await wait_for(lambda: _sql_through_api(tmp_path, stored)[0][0] > 0)  # the worker reads
            worker.send_signal(signal.SIGSTOP)
            frozen_at = rounds[0]
            assert await wait_for(lambda: rounds[0] >= frozen_at + 8, timeout_s=30)  # 4 s of samples, unread
            worker.send_signal(signal.SIGCONT)
            sent = rounds[0] * len(regs)
            assert await wait_for(lambda: _sql_through_api(tmp_path, stored)[0][0] >= sent)  # the backlog is read
            quiet = sorted(everyone)[0]
            reporting.discard(quiet)
            assert await offline.until(lambda nodes: quiet in nodes), offline.nodes
            one_quiet = list(offline.nodes)
            reporting.clear()

            def all_called(nodes: list[str]) -> bool:
                return set(nodes) | {n for n, c in cluster_of.items() if c in offline.clusters} >= everyone

            assert await offline.until(all_called), (offline.nodes, offline.clusters)
            return one_quiet, quiet, list(offline.nodes), list(offline.clusters)
        finally:
            stop.set()
            await reporter
            worker.send_signal(signal.SIGCONT)
            worker.terminate()
            worker.wait(60)
            await offline.consumer.stop()
            await producer.stop()

    one_quiet, quiet, nodes, clusters = asyncio.run(scenario())
    assert one_quiet == [quiet]  # the node that stopped, and none that reported through the stall
    assert len(nodes) == len(set(nodes)) and len(clusters) == len(set(clusters))  # each called once
    assert clusters  # 20 nodes over 3 partitions: some streams carry several nodes


def test_a_slow_subscriber_of_the_dispatch_topic_does_not_hold_dispatch_back(
    settings: Settings, tmp_path: Path
) -> None:
    """A downstream consumer taking half a second per placement: every request is still decided, while it has
    read only a few."""
    network = load_network()
    regs = [registration(s, network) for s in scaled_nodes(network, 200)]
    generator = TaskGenerator(network, random.Random(5))
    requests = [generator.next(now_ms()) for _ in range(300)]
    ids = {r["task_id"] for r in requests}
    slow_reads = []

    async def slow_subscriber(stop: asyncio.Event) -> None:
        consumer = contract_consumer(settings, [PLACEMENT], "slow-downstream-system")
        await consumer.start()
        try:
            while not stop.is_set():
                for messages in (await consumer.getmany(timeout_ms=200, max_records=1)).values():
                    slow_reads.extend(messages)
                    await asyncio.sleep(0.5)
        finally:
            await consumer.stop()

    async def scenario() -> Decisions:
        producer = await registered(settings, regs)
        stop = asyncio.Event()
        slow = asyncio.create_task(slow_subscriber(stop))
        decisions = Decisions(settings)
        await decisions.consumer.start()
        dispatcher = start_service(settings.model_copy(update={"data_dir": tmp_path}), "dispatcher")
        try:
            for request in requests:
                await producer.send(TASK_REQUEST, {**request, "event_time": now_ms()})
            await producer.flush()
            assert await decisions.until(lambda: {r["task_id"] for _, r in decisions.records} >= ids)
        finally:
            stop.set()
            await slow
            await stop_all(dispatcher, decisions, producer)
        return decisions

    decisions = asyncio.run(scenario())
    placed = sum(1 for kind, r in decisions.records if kind == PLACEMENT.name and r["task_id"] in ids)
    assert placed > 100 and len(slow_reads) < placed // 4  # dispatch ran far ahead of the slow reader
