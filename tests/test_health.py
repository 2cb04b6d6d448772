"""Node silence, judged on the clock of each node's own stream (its cluster in its partition): a partition read
behind the others, or a collector catching up beside current ones, raises nothing."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from faust.types import TP

from suanwang.settings import Settings
from suanwang.streams import health, windows
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
    assert silence.newly_silent().nodes == []  # a-1 is 90 s behind b-1, but not behind its own partition
    silence.saw("a-2", 30 * S, partition=1)  # partition 1 moves on, a-1 stays quiet
    assert [(node, ms // S) for node, ms in silence.newly_silent().nodes] == [("a-1", 20)]
    assert silence.newly_silent().nodes == []  # raised once
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
    assert silence.newly_silent().nodes == []  # 90 s behind the partition, but not behind its own collector
    silence.saw("late-2", 30 * S, partition=0, cluster="late")  # the backlog goes on; late-1 stays quiet
    assert [(node, ms // S) for node, ms in silence.newly_silent().nodes] == [("late-1", 20)]


def test_a_paused_node_is_quiet_not_silent() -> None:
    """A node whose collector stopped on purpose raises no node_offline; the others still do."""
    silence = Silence(silence_ms=10_000)
    silence.saw("stopped", 1_000, 0)
    silence.saw("silent", 1_000, 0)
    silence.saw("busy", 30_000, 0)
    assert [n for n, _ in silence.newly_silent(paused=lambda node: node == "stopped").nodes] == ["silent"]
    assert silence.newly_silent(paused=lambda node: False).nodes == [("stopped", 29_000)]


def _quiet_for(silence: Silence, stream: tuple[int, str], seconds: float) -> None:
    """As if `seconds` of wall clock passed since the stream's newest event, with nothing read."""
    silence.clocks[stream]._wall_at_max -= seconds


def test_a_silence_on_the_wall_clock_alone_is_called_once_its_partition_is_read_to_where_it_then_ended() -> None:
    """A whole stream quiet past the bound notes its partition's end offset and is called once the worker has
    read that far without a sample of the node; a node its own stream's later samples prove silent is called at
    once; a node that reports meanwhile is not called."""
    silence = Silence(silence_ms=10 * S)
    silence.read_to = {0: 40, 1: 7}
    silence.saw("quiet-1", 5 * S, partition=0)
    silence.saw("quiet-2", 5 * S, partition=0)
    silence.saw("dead-1", 1 * S, partition=1)
    silence.saw("live-1", 20 * S, partition=1)
    _quiet_for(silence, (0, ""), 30)
    overdue = silence.overdue()
    assert [(o.node, o.proven) for o in overdue] == [("quiet-1", False), ("quiet-2", False), ("dead-1", True)]
    assert silence.unconfirmed(overdue) == {0}
    assert [node for node, _ in silence.newly_silent().nodes] == ["dead-1"]  # proven; the others' end is not known yet
    assert silence.newly_silent(ends={0: 52}).nodes == []  # partition 0 holds 12 records not yet watched
    assert silence.unconfirmed(silence.overdue()) == set()  # the offset is noted: no need to ask again
    silence.saw("quiet-2", 33 * S, partition=0)  # among them, a sample of quiet-2
    silence.read_to[0] = 52
    assert [node for node, _ in silence.newly_silent().nodes] == ["quiet-1"]  # read to there: quiet-1 sent nothing
    assert silence.confirm_at == {}


def test_a_node_that_reports_while_the_broker_is_asked_is_not_called_silent() -> None:
    """The overdue nodes are found before the check asks the broker for end offsets; one that reports meanwhile
    is judged again, and is not called."""
    silence = Silence(silence_ms=10 * S)
    silence.read_to = {0: 40}
    silence.saw("back-1", 5 * S, partition=0)
    silence.saw("gone-1", 5 * S, partition=0)
    _quiet_for(silence, (0, ""), 30)
    overdue = silence.overdue()
    assert {o.node for o in overdue} == {"back-1", "gone-1"}
    silence.saw("back-1", 36 * S, partition=0)  # read while the broker was asked
    assert [node for node, _ in silence.newly_silent(ends={0: 40}, overdue=overdue).nodes] == ["gone-1"]


def test_a_stream_of_several_nodes_quiet_together_is_its_collectors_silence_not_each_nodes() -> None:
    """Cluster c's collector goes quiet: one call for the cluster, none for its nodes. When it reports again
    without c-2, c-2's clock starts from that sample, so it is called offline one bound later, not at once."""
    silence = Silence(silence_ms=10 * S)
    silence.read_to = {0: 40}
    for node in ("c-1", "c-2", "c-3"):
        silence.saw(node, 5 * S, partition=0, cluster="c")
    _quiet_for(silence, (0, "c"), 30)
    assert silence.newly_silent(ends={0: 40}) == ([], [("c", 30 * S)])
    assert silence.newly_silent(ends={0: 40}) == ([], [])  # called once; its nodes are not judged meanwhile
    silence.saw("c-1", 36 * S, partition=0, cluster="c")
    silence.saw("c-3", 36 * S, partition=0, cluster="c")
    assert silence.take_back() == [("c", 30 * S)] and silence.take_back() == []  # quiet 30 s as it was read
    assert silence.newly_silent() == ([], [])  # c-2 is 31 s behind, but its clock restarted at 36 s
    silence.saw("c-1", 47 * S, partition=0, cluster="c")
    silence.saw("c-3", 47 * S, partition=0, cluster="c")
    assert silence.newly_silent() == ([("c-2", 42 * S)], [])  # proven by its stream, 11 s after the restart


def test_a_stream_with_one_live_node_calls_that_node_not_a_collector() -> None:
    """A stream whose other node is offline already, or alone: its quiet is the node's."""
    silence = Silence(silence_ms=10 * S)
    silence.read_to = {0: 40}
    silence.saw("dead", 1 * S, partition=0, cluster="c")
    silence.saw("last", 20 * S, partition=0, cluster="c")
    assert silence.newly_silent().nodes == [("dead", 19 * S)]
    _quiet_for(silence, (0, "c"), 30)
    assert silence.newly_silent(ends={0: 40}) == ([("last", 30 * S)], [])


class _Worker(SimpleNamespace):
    """The worker context as the health concern sees it, with a broker whose end offsets the test sets."""

    def __init__(self, settings: Settings) -> None:
        self.timers: dict[str, Any] = {}
        self.ends: dict[int, int] = {}
        self.asked = 0
        self.facts_read = True

        async def caught_up() -> bool:
            return self.facts_read

        async def highwaters(*partitions: Any) -> dict[Any, int]:
            self.asked += 1
            return {tp: self.ends.get(tp.partition, 0) for tp in partitions}

        def timer(_every: float, name: str) -> Any:
            return lambda f: self.timers.setdefault(name, f)

        super().__init__(
            settings=settings,
            rules=Rules(settings),
            alerts=Alerts(_Sent()),  # type: ignore[arg-type]
            draining=False,
            facts=SimpleNamespace(nodes={}, caught_up=caught_up),
            app=SimpleNamespace(
                on_partitions_revoked=SimpleNamespace(connect=lambda f: f),
                timer=timer,
                consumer=SimpleNamespace(highwaters=highwaters),
            ),
            contain=SimpleNamespace(timer=lambda _name: lambda f: f),
            partition_of=lambda source: TP("telemetry.node", source),
        )

    def offline(self) -> list[str]:
        return [r["scope_key"] for r in self.alerts.ctx.sent if r["kind"] == "node_offline" and not r["resolved"]]


def test_a_quiet_stream_is_called_silent_once_read_to_where_it_ended_and_every_registration_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The check reads the registrations (a stop's pauses), then asks the broker for the quiet partition's end
    offset once, and calls the node when the intake has watched that far: a worker behind calls nothing."""
    worker = _Worker(Settings(telemetry_interval_s=1, offline_after_intervals=2))
    watch = health.register(worker)  # type: ignore[arg-type]
    check = worker.timers["find_silent_nodes"]
    wall = [100.0]
    monkeypatch.setattr(windows, "time", SimpleNamespace(monotonic=lambda: wall[0]))  # the event clocks' wall

    def batch(node: str, at: int) -> Readings:
        return Readings.concat([Readings.of_sample(_sample(node, 20.0, at), 0)])

    async def run() -> None:
        await watch(batch("n1", 1), np.zeros(1, np.int64), {0: 7})
        await check()
        assert worker.offline() == [] and worker.asked == 0  # within the bound: nothing asked
        wall[0] += 2.1  # the bound passes on the wall clock
        worker.facts_read = False
        await check()
        assert worker.offline() == [] and worker.asked == 0  # registrations not yet read: a pause may be there
        worker.facts_read, worker.ends[0] = True, 9  # two records the worker has not watched yet
        await check()
        assert worker.offline() == [] and worker.asked == 1  # behind, not quiet
        worker.ends[0] = 12  # the partition moves on; what counts is where it ended when n1 was overdue
        await watch(batch("n2", 2), np.ones(1, np.int64), {0: 9, 1: 1})  # partition 0's two were dead letters
        await check()
        assert worker.offline() == ["n1"] and worker.asked == 1

    asyncio.run(run())


def test_a_collector_gone_quiet_raises_one_alert_for_its_cluster_resolved_when_it_reports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two nodes of cluster c in one partition stop together: the check raises `collector_silent` for c and
    no `node_offline`; the next sample of c resolves it."""
    worker = _Worker(Settings(telemetry_interval_s=1, offline_after_intervals=2))
    watch = health.register(worker)  # type: ignore[arg-type]
    check = worker.timers["find_silent_nodes"]
    wall = [100.0]
    monkeypatch.setattr(windows, "time", SimpleNamespace(monotonic=lambda: wall[0]))
    both = Readings.concat([Readings.of_sample(_sample(node, 20.0, 1), 0) for node in ("n1", "n2")])

    def collector_alerts() -> list[tuple[str, bool]]:
        return [(r["scope_key"], r["resolved"]) for r in worker.alerts.ctx.sent if r["kind"] == "collector_silent"]

    async def run() -> None:
        await watch(both, np.zeros(2, np.int64), {0: 2})
        wall[0] += 2.1
        worker.ends[0] = 2
        await check()
        assert collector_alerts() == [("c", False)] and worker.offline() == []
        await check()
        assert collector_alerts() == [("c", False)]  # once
        await watch(Readings.concat([Readings.of_sample(_sample("n1", 20.0, 4), 0)]), np.zeros(1, np.int64), {0: 3})
        assert collector_alerts() == [("c", False), ("c", True)] and worker.offline() == []

    asyncio.run(run())


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
            await watch(batch(*samples), np.zeros(len(samples), dtype=np.int64), {})

    asyncio.run(run())
    assert [(r["scope_key"], r["value"], r["resolved"]) for r in sent.sent] == [
        ("n1", 40.0, False),
        ("n1", 31.0, True),
        ("n2", 41.0, False),
        ("n2", 30.0, True),
    ]
