"""Node silence, judged on the clock of each node's own stream (its cluster in its partition): a partition read
behind the others, or a collector catching up beside current ones, raises nothing."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from types import SimpleNamespace

import numpy as np

from suanwang.settings import Settings
from suanwang.streams import health
from suanwang.streams.alerts import Alerts
from suanwang.streams.health import Silence
from suanwang.streams.readings import Readings
from suanwang.streams.rules import Rules
from tests.test_rules import _Sent

S = 1000


def test_a_partition_read_behind_the_others_does_not_make_its_nodes_silent() -> None:
    silence = Silence(silence_ms=15 * S)
    silence.saw("a-1", 10 * S, partition=1)
    for t in range(10, 101, 5):  # partition 0 is read far ahead
        silence.saw("b-1", t * S, partition=0)
    assert silence.newly_silent() == []  # a-1 is 90 s behind b-1, but not behind its own partition
    silence.saw("a-2", 30 * S, partition=1)  # partition 1 moves on, a-1 stays quiet
    assert [(node, ms // S) for node, ms in silence.newly_silent()] == [("a-1", 20)]
    assert silence.newly_silent() == []  # raised once
    assert silence.saw("a-1", 40 * S, partition=1) == 30 * S  # back, after 30 s
    assert silence.offline == set()


def test_nodes_of_revoked_partitions_are_forgotten() -> None:
    silence = Silence(silence_ms=15 * S)
    silence.saw("a-1", 10 * S, partition=1)
    silence.saw("b-1", 10 * S, partition=0)
    silence.forget({1})
    assert set(silence.last_seen) == {"b-1"} and set(silence.clocks) == {(0, "")}


def test_a_collector_catching_up_beside_current_ones_does_not_make_its_nodes_silent() -> None:
    """Two clusters share partition 0; cluster `late` sends its backlog after `live` is current."""
    silence = Silence(silence_ms=15 * S)
    for t in range(0, 101, 5):
        silence.saw("live-1", t * S, partition=0, cluster="live")
    silence.saw("late-1", 10 * S, partition=0, cluster="late")
    silence.saw("late-2", 10 * S, partition=0, cluster="late")
    assert silence.newly_silent() == []  # 90 s behind the partition, but not behind its own collector
    silence.saw("late-2", 30 * S, partition=0, cluster="late")  # the backlog goes on; late-1 stays quiet
    assert [(node, ms // S) for node, ms in silence.newly_silent()] == [("late-1", 20)]


def test_a_paused_node_is_quiet_not_silent() -> None:
    """A node whose collector stopped on purpose raises no node_offline; the others still do."""
    silence = Silence(silence_ms=10_000)
    silence.saw("stopped", 1_000, 0)
    silence.saw("silent", 1_000, 0)
    silence.saw("busy", 30_000, 0)
    assert [n for n, _ in silence.newly_silent(paused=lambda node: node == "stopped")] == ["silent"]
    assert silence.newly_silent(paused=lambda node: False) == [("stopped", 29_000)]


def _sample(node: str, temp: float, at: int) -> dict:
    return dict(
        event_id=f"{node}-{at}", event_time=datetime.fromtimestamp(at, UTC), node_id=node, hub="h", cluster="c",
        province="p", cpu_util=0.5, memory_util=0.5, accelerator_util=0.5, power_kw=1.0, inlet_temp_c=temp,
        running_tasks=1,
    )  # fmt: skip


def test_overheating_is_judged_where_a_node_is_hot_or_was_even_within_one_batch() -> None:
    """The watch looks only at hot samples and at nodes already overheated; a node hot and then cool in one
    batch is raised and resolved in order, one that never was hot says nothing."""
    sent = _Sent()
    settings = Settings(alert_inlet_temp_c=35.0, alert_inlet_temp_margin_c=3.0)
    ctx = SimpleNamespace(
        settings=settings,
        rules=Rules(settings),
        alerts=Alerts(sent),  # type: ignore[arg-type]
        app=SimpleNamespace(
            on_partitions_revoked=SimpleNamespace(connect=lambda f: f), timer=lambda *a, **k: lambda f: f
        ),
        contain=SimpleNamespace(timer=lambda _name: lambda f: f),
    )
    watch = health.register(ctx)  # type: ignore[arg-type]

    def batch(*samples: dict) -> Readings:
        return Readings.concat([Readings.of_sample(s, k) for k, s in enumerate(samples)])

    async def run() -> None:
        for samples in [
            [_sample("cool", 30.0, 1), _sample("n1", 30.0, 1)],
            [_sample("n1", 40.0, 2)],
            [_sample("n1", 36.0, 3), _sample("cool", 30.0, 3)],  # within the margin: still overheated
            [_sample("n1", 31.0, 4), _sample("n2", 41.0, 4), _sample("n2", 30.0, 5)],
        ]:
            await watch(batch(*samples), np.zeros(len(samples), dtype=np.int64))

    asyncio.run(run())
    assert [(r["scope_key"], r["value"], r["resolved"]) for r in sent.sent] == [
        ("n1", 40.0, False),
        ("n1", 31.0, True),
        ("n2", 41.0, False),
        ("n2", 30.0, True),
    ]
