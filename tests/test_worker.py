"""The Faust worker on the real broker and chdb: bad records go to the dead letters once with their reason,
every good one is stored and counted once in the rolling windows, and a redelivered stream doubles nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from suanwang.bus import EventProducer, ensure_topics
from suanwang.clock import now_ms
from suanwang.schemas.codec import Codec
from suanwang.schemas.topics import PANE_CHUNK, ROLLUP, TELEMETRY, Topics
from suanwang.settings import Settings
from suanwang.store import Store
from suanwang.streams.app import create_app
from suanwang.streams.facts import Facts
from tests.evidence import caught_up, wait_for
from tests.fleet import MINUTE_MS, closed_minute, fleet, register, send_raw, send_telemetry, telemetry
from tests.samples import sample_record


def test_worker_stores_counts_and_dead_letters_exactly_once(settings: Settings, store: Store) -> None:
    topics = Topics(settings.topic_prefix)
    telemetry_topic, rollup_topic = topics.name(TELEMETRY), topics.name(ROLLUP)
    regs = fleet(24)
    end = closed_minute()
    good = [telemetry(reg, end - 120_000 + i * 10_000 + 1_000) for reg in regs for i in range(12)]
    clock_movers = [telemetry(regs[0], end + 290_000), telemetry(regs[0], end + 306_000)]
    bad_values = {
        "cpu_util: 1.5 is outside 0-1": telemetry(regs[1], end - 5_000, cpu_util=1.5),
        "power_kw: -1.0 is not a power": telemetry(regs[2], end - 5_000, power_kw=-1.0),
        "node_id: 'ghost' is not a registered node": telemetry({**regs[3], "node_id": "ghost"}, end - 5_000),
        "s in the future": telemetry(regs[4], now_ms() + 3_600_000),
        "hub: 'nowhere' but": telemetry(regs[5], end - 5_000, hub="nowhere"),
    }
    garbage = {
        "shorter than the 5-byte header": b"nope",
        "unknown schema id 7": b"\x00\x00\x00\x00\x07abc",
        "a Alert record where NodeTelemetry was expected": Codec().encode("Alert", sample_record("Alert")),
        "does not match schema NodeTelemetry": Codec().encode("NodeTelemetry", good[0])[:12],
    }
    expected_errors = [*bad_values, *garbage]

    def scalar(sql: str) -> int:
        return store.query(sql, {"t": telemetry_topic, "r": rollup_topic})[1][0][0]

    stored = "SELECT count() FROM suanwang.telemetry WHERE kafka_topic = {t:String}"
    dead = "SELECT count() FROM suanwang.dead_letters FINAL WHERE source_topic = {t:String}"
    hourly = (
        "SELECT sum(samples) FROM suanwang.telemetry_hourly WHERE hour >= toStartOfHour(now() - INTERVAL 3 HOUR)"
        " AND cluster IN (SELECT cluster FROM suanwang.telemetry WHERE kafka_topic = {t:String})"
    )

    def windowed(kind: str) -> str:
        # the two 1-minute windows ending at `end` and a minute earlier hold every good sample exactly once
        return (
            "SELECT sum(samples), max(nodes_total), count() FROM suanwang.rollups FINAL "
            f"WHERE kafka_topic = {{r:String}} AND scope_kind = '{kind}' AND window_s = 60 "
            f"AND toUnixTimestamp64Milli(window_end) IN ({end}, {end - MINUTE_MS})"
        )

    async def run_worker_until(done: Callable[[], bool], group: str | None = None) -> bool:
        """Until `done`, and the group has committed all it read: whatever it would store twice is stored."""
        app, _ctx = create_app(settings.model_copy(update={"worker_group": group}), store)
        await app.start()
        try:
            return await wait_for(done) and await caught_up(settings, TELEMETRY, PANE_CHUNK, ROLLUP, group=group)
        finally:
            await app.stop()

    windows: dict[str, tuple] = {}

    async def scenario() -> None:
        await ensure_topics(settings)
        producer = EventProducer(settings)
        await producer.start()
        await register(producer, regs)
        await send_telemetry(producer, good[:100])
        await send_raw(settings, telemetry_topic, list(garbage.values()), "bad")
        await send_telemetry(producer, [*bad_values.values(), *good[100:], *clock_movers])
        await producer.stop()

        def all_in() -> bool:
            return (
                scalar(stored) == len(good) + 2
                and scalar(dead) == len(expected_errors)
                and store.query(windowed("hub"), {"r": rollup_topic})[1][0][0] == len(good)
            )

        assert await run_worker_until(all_in), (scalar(stored), scalar(dead))
        for kind in ("node", "cluster", "hub", "province"):
            windows[kind] = store.query(windowed(kind), {"r": rollup_topic})[1][0]
        # a worker in a new consumer group reads every message again, as after a crash before any commit
        assert await run_worker_until(lambda: True, group="suanwang-replay")

    asyncio.run(scenario())
    assert scalar(stored) == len(good) + 2  # not one row doubled by the redelivery
    assert scalar(hourly) >= len(good) + 2
    errors = [e for (e,) in store.query(
        "SELECT error FROM suanwang.dead_letters FINAL WHERE source_topic = {t:String}", {"t": telemetry_topic}
    )[1]]  # fmt: skip
    assert {c for (c,) in store.query("SELECT component FROM suanwang.dead_letters WHERE source_topic = {t:String}",
                                      {"t": telemetry_topic})[1]} == {"sink"}  # fmt: skip
    for expected in expected_errors:
        assert sum(expected in e for e in errors) == 1, (expected, errors)
    assert windows["node"] == (len(good), 1, 2 * len(regs))  # (samples, nodes_total, windows)
    for kind in ("cluster", "hub", "province"):
        samples, nodes_total, _windows = windows[kind]
        assert samples == len(good), kind  # every sample counted once per scope kind
        assert 1 <= nodes_total < len(regs)


def test_facts_catch_up_with_a_registration_just_sent(settings: Settings) -> None:
    """A node's first telemetry may overtake its registration; the sink waits for the registry, not refuses."""

    async def scenario() -> bool:
        await ensure_topics(settings)
        facts = Facts(Codec(), Topics(settings.topic_prefix))
        follower = asyncio.create_task(facts.run(settings))
        await facts.ready.wait()
        producer = EventProducer(settings)
        await producer.start()
        reg = fleet(10)[0]
        await register(producer, [reg])
        await producer.stop()
        await facts.caught_up()
        known = reg["node_id"] in facts.nodes
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
        return known

    assert asyncio.run(scenario())
