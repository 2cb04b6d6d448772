"""Alerts from the worker on the real broker and chdb: each raised once, with the thresholds from settings."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict

import pytest

from suanwang.bus import EventProducer, ensure_topics, event
from suanwang.clock import now_ms
from suanwang.schemas.topics import ALERT, LATENCY, NETWORK_PROBE, PANE_CHUNK, ROLLUP, TELEMETRY, Topics
from suanwang.settings import Settings
from suanwang.store import Store
from suanwang.streams.app import create_app
from tests.conftest import run_cli
from tests.evidence import caught_up, wait_for
from tests.fleet import closed_minute, fleet, register, send_telemetry, telemetry


def test_worker_raises_each_alert_once(settings: Settings, store: Store) -> None:
    # a node is offline after 240 s of silence on its stream's clock (its cluster in its partition): the movers
    # push theirs 310 s past the others' last samples, while a quiet stream's clock only follows the wall clock
    settings = settings.model_copy(
        update={"alert_pue_max": 1.1, "alert_green_share_min": 0.99, "offline_after_intervals": 48}
    )
    topics = Topics(settings.topic_prefix)
    regs = fleet(24)
    hot_hub = regs[-1]["hub"]
    end = closed_minute()
    history = [  # in time order, as collectors send: node by node, a partition's clock would run ahead of the
        # nodes not yet read, and the silence check, ticking meanwhile, would call them offline
        telemetry(reg, end - 300_000 + i * 5_000 + 500, load=0.97 if reg["hub"] == hot_hub else 0.05)
        for i in range(60)
        for reg in regs
    ]
    movers = [telemetry(regs[0], end + 290_000), telemetry(regs[0], end + 306_000)]
    slow_pair = [("jingjinji", "gansu", 35.0), ("jingjinji", "jingjinji", 0.8)]
    probe_mover = event(from_hub="jingjinji", to_hub="jingjinji", rtt_ms=0.8, bandwidth_gbps=100.0)

    def alerts() -> list[tuple]:
        """Every alert change, in the order each key's were said (one key's go to one partition), each event
        once: a producer's retry may write an event twice (the embedded broker has no idempotent producer)."""
        rows = store.query(
            "SELECT kind, scope_kind, scope_key, resolved, event_id, kafka_offset FROM suanwang.alerts "
            "WHERE kafka_topic = {a:String} ORDER BY kafka_partition, kafka_offset",
            {"a": topics.name(ALERT)},
        )[1]
        said[:] = rows
        ids: set[str] = set()
        return [r[:4] for r in rows if not (r[4] in ids or ids.add(r[4]))]

    said: list[tuple] = []

    def kinds() -> set[str]:
        return {a[0] for a in alerts()}

    def neighbours() -> set[str]:
        """The nodes whose telemetry shares regs[0]'s stream (partition and cluster): the movers move only its
        clock."""
        rows = store.query(
            "SELECT node_id, kafka_partition, cluster FROM suanwang.telemetry WHERE kafka_topic = {t:String}",
            {"t": topics.name(TELEMETRY)},
        )[1]
        mine = {(p, c) for node, p, c in rows if node == regs[0]["node_id"]}
        return {node for node, p, c in rows if (p, c) in mine}

    async def scenario() -> list[tuple]:
        await ensure_topics(settings)
        producer = EventProducer(settings)
        await producer.start()
        await register(producer, regs)
        app, _ctx = create_app(settings, store)
        await app.start()
        try:
            await send_telemetry(producer, [*history, *movers])
            for a, b, rtt in slow_pair:
                for k in range(20):
                    probe = event(from_hub=a, to_hub=b, rtt_ms=rtt + k * 0.01, bandwidth_gbps=100.0)
                    probe["event_time"] = end - 60_000 + k * 1_000
                    await producer.send(NETWORK_PROBE, probe)
            await producer.send(NETWORK_PROBE, probe_mover)  # moves the probes' clock past the minute
            await producer.flush()
            wanted = {"overload", "imbalance", "pue", "green_share", "node_offline", "latency_tier"}
            assert await wait_for(lambda: wanted <= kinds()), kinds()
            back = sorted(neighbours() - {regs[0]["node_id"]})[0]
            await send_telemetry(producer, [telemetry(next(r for r in regs if r["node_id"] == back), now_ms())])
            assert await wait_for(lambda: ("node_offline", "node", back, True) in alerts())  # back online
            # every sample and probe processed, every window and alert that came of them stored
            assert await caught_up(settings, TELEMETRY, NETWORK_PROBE, PANE_CHUNK, ROLLUP, LATENCY, ALERT)
        finally:
            await app.stop()
            await producer.stop()
        return alerts()

    raised = asyncio.run(scenario())
    by_key: dict[tuple, list[bool]] = defaultdict(list)
    for kind, scope, key, resolved in raised:
        by_key[(kind, scope, key)].append(resolved)
    # each change said once: raised first, then resolved and raised in turn, never the same twice in a row (the
    # node brought back goes silent again if the test outlasts the silence bound, and is then raised again)
    twice = {k: seq for k, seq in by_key.items() if seq[0] or any(a == b for a, b in zip(seq, seq[1:], strict=False))}
    assert not twice, (twice, [r for r in said if tuple(r[:3]) in twice])
    assert len({(r[4], r[5]) for r in said}) == len(said)  # the sink stored no message twice
    firing = [a for a in raised if not a[3]]
    hot = {r["node_id"] for r in regs if r["hub"] == hot_hub}
    assert {key for kind, _s, key, _r in firing if kind == "overload"} == hot
    idle_hubs = {key for kind, scope, key, _r in firing if kind == "imbalance" and scope == "hub"}
    assert idle_hubs == {r["hub"] for r in regs} - {hot_hub}
    assert {key for kind, _s, key, _r in firing if kind == "pue"} == {r["cluster"] for r in regs}
    offline = {key for kind, _s, key, _r in firing if kind == "node_offline"}
    # the movers' stream clock passed the others of that stream, and only those: every other stream's clock
    # stayed with its own telemetry; the node that moved the clock goes 240 s later, or not yet
    assert offline - {regs[0]["node_id"]} == neighbours() - {regs[0]["node_id"]} != set()
    assert [key for kind, _s, key, _r in firing if kind == "latency_tier"] == ["jingjinji>gansu"]
    latency = store.query(
        "SELECT scope_key, tier_ms, p99_ms FROM suanwang.latency_rollups FINAL WHERE kafka_topic = {l:String}",
        {"l": topics.name(LATENCY)},
    )[1]
    by_pair = {key: (tier, p99) for key, tier, p99 in latency}
    assert by_pair["jingjinji>gansu"][0] == 20 and by_pair["jingjinji>gansu"][1] > 35
    assert by_pair["jingjinji>jingjinji"][0] == 1


@pytest.mark.parametrize("frame_size", [0, 40])
def test_bench_ingest_reports_its_figures_from_one_run(frame_size: int) -> None:
    out = run_cli("bench", "ingest", "--events", "4000", "--nodes", "200", "--frame-size", str(frame_size), "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    figures = json.loads(out.stdout)
    assert figures["events_sent"] == figures["rows_in_clickhouse"] == figures["events_aggregated"] == 4000
    assert figures["events_per_s"] > 0 and 0 <= figures["p50_lag_ms"] <= figures["p99_lag_ms"]
    assert figures["faust_ceiling_events_per_s"] > 0  # frames too: the ceiling times batches of 1/20 of them
    # frames hold up to 40 samples of one cluster's distinct nodes: smaller clusters send smaller frames
    assert figures["messages_sent"] == 4000 if not frame_size else 4000 / 40 <= figures["messages_sent"] <= 4000 / 5
