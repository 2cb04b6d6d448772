"""Collector frames on the real broker and chdb: a frame's samples are stored, summed into the windows and
watched like single samples; a bad sample is dead-lettered alone with its frame and index, a frame that
cannot be taken apart whole with the reason, and the frames around them flow."""

from __future__ import annotations

import asyncio
from collections import defaultdict

from suanwang.bus import EventProducer, ensure_topics
from suanwang.clock import now_ms
from suanwang.devstack.runtime import COUNT_FETCH_WAIT_MS, Monitor
from suanwang.schemas.codec import Codec
from suanwang.schemas.frames import frame_of, frame_problem, samples_of
from suanwang.schemas.topics import (
    ALERT,
    PANE_CHUNK,
    PLACEMENT,
    REJECTION,
    ROLLUP,
    TASK_REQUEST,
    TELEMETRY,
    TELEMETRY_FRAME,
    Topics,
)
from suanwang.settings import Settings
from suanwang.store import Store
from suanwang.streams.app import create_app
from tests.evidence import caught_up, wait_for
from tests.fleet import MINUTE_MS, closed_minute, fleet, register, telemetry
from tests.samples import sample_record


def test_a_frame_is_taken_apart_into_its_samples_and_a_bad_one_is_named() -> None:
    regs = fleet(6)
    samples = [telemetry(reg, 1_000 + k) for k, reg in enumerate(regs)]
    frame = frame_of(samples, "f", 2_000)
    assert frame_problem(frame) is None and len(frame["node_ids"]) == 6
    back = samples_of(frame)
    assert [s["node_id"] for s in back] == [s["node_id"] for s in samples]
    assert back[3]["event_id"] == "f:3" and back[3]["cpu_util"] == samples[3]["cpu_util"]
    assert frame_problem({**frame, "power_kw": frame["power_kw"][:5]}) == "power_kw: 5 entries for 6 node_ids"
    twice = {**frame, "node_ids": [*frame["node_ids"][:5], frame["node_ids"][0]]}
    assert frame_problem(twice) == f"node_ids: {frame['node_ids'][0]!r} twice in one frame"


def test_up_counts_a_frames_samples_and_passes_over_a_frame_it_cannot_take_apart() -> None:
    monitor = Monitor(Settings(), watch_hubs=True)
    frame = frame_of([telemetry(reg, 1_000) for reg in fleet(6)], "f", 2_000)
    monitor._observe(TELEMETRY_FRAME, frame, 3_000.0)
    monitor._observe(TELEMETRY_FRAME, {**frame, "cpu_util": frame["cpu_util"][:2]}, 3_000.0)
    assert monitor.counts["telemetry_events"] == 6 and monitor.hubs.load


def test_up_reads_the_placements_on_the_short_wait_and_what_it_only_counts_seldom(settings: Settings) -> None:
    """The embedded broker's cost of a fetch that returns data grows with its log: `up`'s monitor reads on the
    dispatch path's wait only what the latency needs, the frames (their samples are counted) on the default
    wait, and the requests, rejections, alerts and single samples it only counts on a long one; after the
    stop it still counts what was sent last."""
    topics = Topics(settings.topic_prefix)

    async def scenario() -> tuple[dict[int, set[str]], dict[str, int]]:
        await ensure_topics(settings)
        monitor = Monitor(settings, watch_hubs=False)
        await monitor.start()
        followed = {
            c._fetcher._fetch_max_wait_ms: {tp.topic for tp in c.assignment()}
            for c in (monitor.placements, monitor.consumer, monitor.counted)
        }
        stop = asyncio.Event()
        running = asyncio.create_task(monitor.run(stop))
        producer = EventProducer(settings)
        await producer.start()
        try:
            for k in range(5):
                await producer.send(TASK_REQUEST, sample_record("TaskRequest") | {"task_id": f"t{k}"})
            await producer.send(ALERT, sample_record("Alert"))
            await producer.flush()
        finally:
            await producer.stop()
        stop.set()  # at once: the records are counted after the stop
        await running
        return followed, dict(monitor.counts)

    by_wait, counts = asyncio.run(scenario())
    assert by_wait == {
        settings.dispatch_fetch_max_wait_ms: {topics.name(PLACEMENT)},
        settings.fetch_max_wait_ms: {topics.name(TELEMETRY_FRAME)},
        COUNT_FETCH_WAIT_MS: {topics.name(s) for s in (TELEMETRY, TASK_REQUEST, REJECTION, ALERT)},
    }
    assert counts == {"task_requests": 5, "alerts": 1}


def test_frames_are_stored_windowed_and_their_bad_samples_dead_lettered_alone(settings: Settings, store: Store) -> None:
    topics = Topics(settings.topic_prefix)
    frame_topic, rollup_topic = topics.name(TELEMETRY_FRAME), topics.name(ROLLUP)
    regs = fleet(24)
    end = closed_minute()
    by_cluster: dict[str, list[dict]] = defaultdict(list)
    for reg in regs:
        by_cluster[reg["cluster"]].append(reg)
    clusters = sorted(by_cluster)
    good = [  # every cluster's frame every 10 s over the two minutes before `end`
        frame_of([telemetry(reg, end - 120_000 + i * 10_000 + 1_000) for reg in by_cluster[c]], f"{c}-{i}", now_ms())
        for i in range(12)
        for c in clusters
    ]
    samples = sum(len(f["node_ids"]) for f in good)
    biggest = max(clusters, key=lambda c: len(by_cluster[c]))
    first, other = by_cluster[biggest], next(r for r in regs if r["hub"] != by_cluster[biggest][0]["hub"])
    hot = telemetry(first[0], end - 5_000, cpu_util=1.7)
    stranger = telemetry({**other, **{k: first[0][k] for k in ("hub", "cluster", "province")}}, end - 5_000)
    mixed = frame_of([hot, stranger, *(telemetry(r, end - 5_000) for r in first[1:])], "mixed", now_ms())
    ragged = frame_of([telemetry(r, end - 5_000) for r in first], "ragged", now_ms())
    ragged["cpu_util"] = ragged["cpu_util"][1:]
    twice = frame_of([telemetry(first[0], end - 5_000), telemetry(first[0], end - 4_000)], "twice", now_ms())
    clock_mover = frame_of([telemetry(first[0], end + 306_000)], "mover", now_ms())
    windowed_good = samples + len(first) - 1  # with the mixed frame's sound samples, 5 s before `end`
    stored_good = windowed_good + 1  # and the clock mover

    def scalar(sql: str) -> int:
        return store.query(sql, {"t": frame_topic, "r": rollup_topic})[1][0][0]

    stored = "SELECT count() FROM suanwang.telemetry WHERE kafka_topic = {t:String}"
    errors_sql = "SELECT error FROM suanwang.dead_letters FINAL WHERE source_topic = {t:String}"
    windowed = (
        "SELECT sum(samples) FROM suanwang.rollups FINAL WHERE kafka_topic = {r:String} AND scope_kind = 'hub' "
        f"AND window_s = 60 AND toUnixTimestamp64Milli(window_end) IN ({end}, {end - MINUTE_MS})"
    )

    async def scenario() -> None:
        await ensure_topics(settings)
        producer = EventProducer(settings)
        await producer.start()
        await register(producer, regs)
        for frame in [*good[:20], mixed, ragged, twice, *good[20:], clock_mover]:
            await producer.send(TELEMETRY_FRAME, frame)
        await producer.stop()
        app, _ctx = create_app(settings, store)
        await app.start()
        try:

            def all_in() -> bool:
                return scalar(stored) == stored_good and len(store.query(errors_sql, {"t": frame_topic})[1]) == 4

            assert await wait_for(all_in), (scalar(stored), store.query(errors_sql, {"t": frame_topic})[1])
            assert await wait_for(lambda: scalar(windowed) == windowed_good), scalar(windowed)
            assert await caught_up(settings, TELEMETRY_FRAME, PANE_CHUNK, ROLLUP)
        finally:
            await app.stop()

    asyncio.run(scenario())
    assert scalar(stored) == stored_good and scalar(windowed) == windowed_good  # each sample once, stored, windowed
    errors = sorted(e for (e,) in store.query(errors_sql, {"t": frame_topic})[1])
    assert errors == sorted([
        "sample 0: cpu_util: 1.7 is outside 0-1",
        f"sample 1: hub: {first[0]['hub']!r} but {other['node_id']} is registered in {other['hub']!r}",
        f"cpu_util: {len(first) - 1} entries for {len(first)} node_ids",
        f"node_ids: {first[0]['node_id']!r} twice in one frame",
    ])  # fmt: skip
    alone = store.query(
        "SELECT sample, hex(payload) FROM suanwang.dead_letters FINAL WHERE source_topic = {t:String} AND sample >= 0 "
        "ORDER BY sample",
        {"t": frame_topic},
    )[1]
    codec = Codec()
    assert [(i, codec.decode_as("NodeTelemetry", bytes.fromhex(p))["node_id"]) for i, p in alone] == [
        (0, hot["node_id"]),
        (1, other["node_id"]),
    ]  # each bad sample alone, as the single sample it would have been
