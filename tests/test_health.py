"""Node silence, judged on the clock of each node's own stream (its cluster in its partition): a partition read
behind the others, or a collector catching up beside current ones, raises nothing."""

from __future__ import annotations

from suanwang.streams.health import Silence

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
