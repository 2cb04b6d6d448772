"""The window arithmetic alone: panes summed with NumPy, merged exactly, hopping windows closed on time."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import numpy as np

from suanwang.settings import Settings
from suanwang.streams.app import faust_app
from suanwang.streams.readings import Readings
from suanwang.streams.rollups import CHUNK_MS, Intake
from suanwang.streams.windows import (
    NODE_ID_SEPARATOR,
    PANE_MS,
    Chunk,
    HoppingWindows,
    Pane,
    PaneParts,
    Run,
    Samples,
    Window,
    keep_ms,
    pane_sums,
    percentiles,
    rollup_fields,
    windows_of,
)

FIRST_RUN = Run(offset=0, started_ms=1)


def batch(event_ms: list[int], nodes: list[str], cpu: list[float], classes: list[str] | None = None) -> Samples:
    n = len(event_ms)
    return Samples(
        event_ms=np.array(event_ms, dtype=np.int64),
        scope_keys={"node": nodes, "cluster": ["c"] * n, "hub": ["h"] * n, "province": ["p"] * n},
        cpu=np.array(cpu),
        mem=np.full(n, 0.5),
        acc=np.zeros(n),
        power_kw=np.full(n, 2.0),
        pue=np.full(n, 1.2),
        green=np.full(n, 0.5),
        compute_class=classes or ["CPU"] * n,
        cpu_milli=np.full(n, 1000.0),
        accelerators=np.zeros(n),
    )


def test_pane_sums_group_by_scope_and_pane() -> None:
    out = {
        (k, key, start): (pane, ids)
        for k, key, start, pane, ids in pane_sums(batch([1_000, 2_000, 11_000], ["a", "b", "a"], [0.2, 0.6, 0.4]))
    }
    assert set(out) == {
        ("node", "a", 0), ("node", "b", 0), ("node", "a", 10_000),
        ("cluster", "c", 0), ("cluster", "c", 10_000), ("hub", "h", 0), ("hub", "h", 10_000),
        ("province", "p", 0), ("province", "p", 10_000),
    }  # fmt: skip
    hub, hub_nodes = out[("hub", "h", 0)]
    assert (hub.samples, hub.nodes, hub_nodes) == (2, 2, f"a{NODE_ID_SEPARATOR}b")
    assert out[("hub", "h", 10_000)][1] == "a" and out[("node", "a", 0)][1] == ""  # a node scope is its node
    assert hub.cpu_sum == 0.8 and hub.cpu_max == 0.6 and hub.load_min == 0.2
    assert hub.facility_sum == 2 * 2.0 * 1.2 and hub.green_sum == 2 * 2.0 * 1.2 * 0.5
    assert hub.free_cpu == {"CPU": 800 + 400}


def test_partial_panes_merge_to_the_whole() -> None:
    times, nodes, cpu = [1_000, 2_000, 3_000, 4_000], ["a", "b", "a", "b"], [0.1, 0.9, 0.3, 0.5]
    whole = {(k, key, s): p for k, key, s, p, _ in pane_sums(batch(times, nodes, cpu))}
    first = {(k, key, s): p for k, key, s, p, _ in pane_sums(batch(times[:2], nodes[:2], cpu[:2]))}
    for k, key, s, p, _ in pane_sums(batch(times[2:], nodes[2:], cpu[2:])):
        first[(k, key, s)].merge(p)
    for key in whole:
        merged, expected = first[key], whole[key]
        assert merged.samples == expected.samples and merged.cpu_max == expected.cpu_max
        assert np.isclose(merged.cpu_sum, expected.cpu_sum) and merged.load_min == expected.load_min


def test_hopping_windows_hold_each_pane_in_six_short_and_five_long_windows() -> None:
    held = list(windows_of(125_000))
    assert [end for length, end in held if length == 60_000] == [130_000, 140_000, 150_000, 160_000, 170_000, 180_000]
    assert [end for length, end in held if length == 300_000] == [180_000, 240_000, 300_000, 360_000, 420_000]
    assert all(end - length <= 125_000 < end for length, end in held)


def add(windows: HoppingWindows, start: int, pane: Pane, now_ms: int, chunk: Chunk | None = None) -> str:
    """A hub partial from chunk `chunk` (by default one of its own, at offset `start`), arriving on partition 0."""
    chunk = chunk or Chunk(0, FIRST_RUN, start)
    return windows.add("hub", "h", start, chunk, pane, "n1", now_ms=now_ms, partition=0)


def hub_window(windows: HoppingWindows, now_ms: int, end_ms: int = 60_000) -> Pane | None:
    """The one-minute hub window ending at `end_ms`, if `close` publishes it now."""
    return next((w.total for w in windows.close(now_ms) if (w.length_ms, w.end_ms) == (60_000, end_ms)), None)


def test_windows_close_after_grace_and_a_late_partial_republishes_them() -> None:
    windows = HoppingWindows(grace_ms=5_000)
    for start in range(0, 60_000, PANE_MS):
        add(windows, start, Pane(samples=2, cpu_sum=1.0, load_min=0.5), now_ms=start)
    assert not [w for w in windows.close(now_ms=64_999) if w.end_ms == 60_000 and w.length_ms == 60_000]
    done = {(w.length_ms, w.end_ms): w for w in windows.close(now_ms=65_000)}
    assert done[(60_000, 60_000)].total.samples == 12 and done[(60_000, 60_000)].panes == 6
    assert add(
        windows, 50_000, Pane(samples=1, cpu_sum=1.0, load_min=0.1), now_ms=65_000, chunk=Chunk(0, FIRST_RUN, 99)
    )
    again = hub_window(windows, now_ms=65_000)
    assert again is not None and again.samples == 13 and again.load_min == 0.1
    assert add(windows, 0, Pane(samples=1), now_ms=10_000_000) == "too_late"  # beyond the lateness bound


def test_a_chunk_delivered_twice_counts_once_and_its_nodes_once() -> None:
    windows = HoppingWindows(grace_ms=0)
    for _ in range(2):
        add(windows, 0, Pane(samples=3, cpu_sum=1.5, load_min=0.5), now_ms=0)
    windows.add(
        "hub", "h", 0, Chunk(0, FIRST_RUN, 7), Pane(samples=1, load_min=0.5), f"n1{NODE_ID_SEPARATOR}n2", 0, partition=0
    )
    total = hub_window(windows, now_ms=60_000)
    assert total is not None and (total.samples, total.cpu_sum, total.nodes) == (4, 1.5, 2)


def test_a_pane_keeps_one_partial_as_its_total_and_several_by_chunk() -> None:
    """The common case costs no dict and no copy; a second chunk, a chunk again and a drop stay exact."""
    first, second = Chunk(0, FIRST_RUN, 0), Chunk(0, FIRST_RUN, 10)
    pane = PaneParts()
    part = Pane(samples=2, cpu_sum=1.0, load_min=0.4)
    pane.put(first, part)
    assert pane.total() is part and (part.samples, part.nodes) == (2, 1)
    pane.put(first, Pane(samples=3, cpu_sum=2.0, load_min=0.3))  # the same chunk again replaces it
    assert (pane.total().samples, pane.chunks) == (3, [first])
    pane.put(second, Pane(samples=1, cpu_sum=0.5, load_min=0.2))
    total = pane.total()
    assert (total.samples, total.cpu_sum, total.load_min, total.nodes) == (4, 2.5, 0.2, 1)
    assert pane.chunks == [first, second]
    pane.drop([first])
    assert (pane.total().samples, pane.chunks) == (1, [second])
    pane.drop([second])
    assert (pane.total().samples, pane.chunks) == (0, [])


def test_a_newer_run_supersedes_the_chunks_it_reads_again() -> None:
    """Run 1 sent chunks at offsets 0, 10 and 20; run 2 started again at offset 10 and sends 10-29 as one chunk."""
    windows = HoppingWindows(grace_ms=0)
    for offset in (0, 10, 20):
        add(windows, 0, Pane(samples=10, load_min=1.0), now_ms=0, chunk=Chunk(0, FIRST_RUN, offset))
    second = Run(offset=10, started_ms=2)
    assert add(windows, 0, Pane(samples=20, load_min=1.0), now_ms=0, chunk=Chunk(0, second, 10)) == "added"
    late_first = Chunk(0, FIRST_RUN, 20)  # run 1's chunk arriving after run 2's (through another partition)
    assert add(windows, 0, Pane(samples=10, load_min=1.0), now_ms=0, chunk=late_first) == "superseded"
    same_offset = Run(offset=10, started_ms=3)  # a third run from the same committed offset: after the second
    assert add(windows, 0, Pane(samples=20, load_min=1.0), now_ms=0, chunk=Chunk(0, same_offset, 10)) == "added"
    zombie = Run(offset=5, started_ms=0)  # first seen now, but older than the second run, which reads 10 on again
    assert add(windows, 0, Pane(samples=10, load_min=1.0), now_ms=0, chunk=Chunk(0, zombie, 10)) == "superseded"
    other_partition = Chunk(1, FIRST_RUN, 10)
    assert add(windows, 0, Pane(samples=5, load_min=1.0), now_ms=0, chunk=other_partition) == "added"
    total = hub_window(windows, now_ms=60_000)
    assert total is not None and total.samples == 10 + 20 + 5


def test_windows_let_go_of_a_partition_and_settle_what_went_out() -> None:
    windows = HoppingWindows(grace_ms=0)
    add(windows, 0, Pane(samples=1), now_ms=0)
    windows.forget({0})
    assert windows.panes == {} and windows.pending == {} and windows.close(now_ms=60_000) == []
    for start in (0, 60_000):
        add(windows, start, Pane(samples=1), now_ms=start)
    windows.settle({0}, published_by_ms=65_000)  # read back: windows due by then went out before the crash
    assert {(length, end) for end, due in windows.pending.items() for _k, _key, length in due} == {
        (60_000, end) for end in range(70_000, 130_000, 10_000)
    } | {(300_000, end) for end in range(120_000, 420_000, 60_000)}


def test_windows_close_oldest_first_and_panes_no_window_needs_are_dropped() -> None:
    """`close` publishes what is due in end order, shorter first at one end, keeps what is not yet due, and
    drops the panes past the lateness bound once that bound has moved a pane on."""
    windows = HoppingWindows(grace_ms=0)
    for start in (0, 10_000):
        add(windows, start, Pane(samples=1), now_ms=start)
    closed = [(w.end_ms, w.length_ms) for w in windows.close(now_ms=60_000)]
    assert closed == sorted(closed) and closed[0] == (10_000, 60_000) and closed[-1] == (60_000, 300_000)
    assert min(windows.pending) == 70_000 and set(windows.panes[("hub", "h")]) == {0, 10_000}
    bound = keep_ms(0)
    assert windows.close(now_ms=bound + 5_000) != [] and set(windows.panes[("hub", "h")]) == {0, 10_000}
    windows.close(now_ms=bound + 10_000)  # the bound passed the first pane, and has moved a whole pane
    assert set(windows.panes[("hub", "h")]) == {10_000}
    windows.close(now_ms=bound + 20_001)
    assert windows.panes == {} and windows.pending == {}


def test_a_pane_past_its_windows_keeps_no_merged_copy_and_a_late_partial_still_counts_whole() -> None:
    """Ten minutes of every node's panes are kept for late partials; once all windows of a pane have closed,
    its merged copy is dropped, and a late partial republishes windows that count every part."""
    base = 1_800_000_000_000  # the event clock's epoch milliseconds: the lateness bound is past zero
    windows = HoppingWindows(grace_ms=0)
    add(windows, base, Pane(samples=3), now_ms=base)
    assert len(windows.close(now_ms=base + 60_000)) == 6 + 1  # the six minutes it ends, one five-minute window
    pane = windows.panes[("hub", "h")][base]
    assert pane._total is not None  # the windows still open need it
    windows.close(now_ms=base + 330_000)  # every window of the pane has closed, and the bound moved a pane on
    assert pane._total is None
    late = Chunk(0, FIRST_RUN, base + 1)
    assert add(windows, base, Pane(samples=2), now_ms=base + 330_000, chunk=late) == "added"
    assert {w.total.samples for w in windows.close(now_ms=base + 330_000)} == {5}


def node_records(rng: np.random.Generator, start: int, nodes: list[str]) -> list[dict[str, Any]]:
    """ScopePane records of node scopes, as a chunk carries them, from random samples in pane `start`."""
    n = len(nodes) * 2
    samples = batch(
        (start + rng.integers(0, PANE_MS, n)).tolist(), nodes * 2, rng.random(n).tolist(),
        classes=[("CPU", "GPU", "NPU")[hash(node) % 3] for node in nodes * 2],
    )  # fmt: skip
    samples.acc, samples.accelerators = rng.random(n), np.full(n, 8.0)
    return [
        {"scope_kind": kind, "scope_key": key, "pane_start": s, "node_ids": ids, **pane.to_record()}
        for kind, key, s, pane, ids in pane_sums(samples)
        if kind == "node"
    ]


def test_node_panes_kept_as_columns_give_the_windows_kept_as_objects() -> None:
    """The node scope's columns and the objects every other scope keeps publish the same windows, through
    several chunks a pane, a chunk delivered twice, a newer run superseding chunks, a late partial, a
    partition let go and one settled after a read-back."""
    rng = np.random.default_rng(3)
    nodes = [f"n{i}" for i in range(40)]
    as_columns, as_objects = HoppingWindows(grace_ms=5_000), HoppingWindows(grace_ms=5_000)
    outcomes: list[str] = []

    def deliver(start: int, chunk: Chunk, records: list[dict[str, Any]], now_ms: int, partition: int) -> None:
        outcome = as_columns.add_nodes(start, chunk, str(partition), records, now_ms, partition)  # a bucket each
        outcomes.append(outcome)
        for r in records:
            part = Pane.from_record(r)
            assert as_objects.add("node", r["scope_key"], start, chunk, part, "", now_ms, partition) == outcome

    def published(now_ms: int) -> None:
        def by_window(windows: HoppingWindows) -> dict[tuple[str, int, int], Window]:
            return {(w.scope_key, w.length_ms, w.end_ms): w for w in windows.close(now_ms)}

        columns, objects = by_window(as_columns), by_window(as_objects)
        assert columns.keys() == objects.keys(), (
            sorted(columns.keys() - objects.keys()),
            sorted(objects.keys() - columns.keys()),
        )
        for key, window in columns.items():
            mine, theirs = window.total, objects[key].total
            assert (window.scope_kind, window.panes, mine.samples, mine.nodes) == (
                "node", objects[key].panes, theirs.samples, theirs.nodes,
            )  # fmt: skip
            for name in ("cpu_sum", "cpu_max", "acc_max", "load_min", "green_sum", "power_sum"):
                assert np.isclose(getattr(mine, name), getattr(theirs, name)), (key, name)
            for mine_free, theirs_free in ((mine.free_cpu, theirs.free_cpu), (mine.free_acc, theirs.free_acc)):
                assert mine_free.keys() == theirs_free.keys()
                assert all(np.isclose(mine_free[c], theirs_free[c]) for c in mine_free)
        published_windows.extend(columns)

    published_windows: list[tuple[str, int, int]] = []
    second = Run(offset=15, started_ms=2)  # a newer run reads telemetry partition 0 again from offset 15
    for start in range(0, 120_000, PANE_MS):
        offset, run = start // 1000, FIRST_RUN if start < 30_000 else second
        for partition, half in ((0, nodes[:20]), (1, nodes[20:])):  # a node's scope has one chunk partition
            deliver(start, Chunk(0, run, offset), node_records(rng, start, half[:12]), start, partition)
            deliver(start, Chunk(0, run, offset + 1), node_records(rng, start, half[8:]), start, partition)
        deliver(start, Chunk(0, run, offset), node_records(rng, start, nodes[:12]), start, 0)  # again
        if start == 40_000:  # the older run's chunk arrives late: superseded
            deliver(start, Chunk(0, FIRST_RUN, 30), node_records(rng, start, nodes[:5]), start, 0)
        if start == 60_000:  # a late partial of the first pane, from another telemetry partition
            deliver(0, Chunk(1, FIRST_RUN, 0), node_records(rng, 0, nodes[:3]), start, 0)
        if start == 90_000:
            as_columns.forget({1})
            as_objects.forget({1})
        published(start)
    as_columns.settle({0}, published_by_ms=140_000)
    as_objects.settle({0}, published_by_ms=140_000)
    published(10_000_000)
    assert len(published_windows) > 500 and {length for _k, length, _e in published_windows} == {60_000, 300_000}
    assert set(outcomes) == {"added", "superseded"}
    assert as_columns.node_panes.blocks == {} and as_columns.node_pending == {}


def test_rollup_fields_scale_power_by_nodes_and_weight_pue_and_green_by_power() -> None:
    windows = HoppingWindows(grace_ms=0)
    for start in range(0, 60_000, PANE_MS):  # two nodes, 2 samples each per pane, 3 kW and 1 kW
        pane = Pane(samples=4, cpu_sum=2.0, power_sum=8.0, facility_sum=10.0, green_sum=6.0, load_min=0.4)
        pane.free_cpu = {"GPU": 4000.0}
        windows.add(
            "cluster", "c", start, Chunk(0, FIRST_RUN, start), pane, f"a{NODE_ID_SEPARATOR}b", now_ms=start, partition=0
        )
    window = next(w for w in windows.close(now_ms=60_000) if w.length_ms == 60_000 and w.end_ms == 60_000)
    r = rollup_fields(window, nodes_total=3)
    assert r["nodes_online"] == 2 and r["nodes_total"] == 3
    assert r["power_kw_mean"] == 4.0 and np.isclose(r["energy_kwh"], 4.0 / 60)
    assert r["pue"] == 1.25 and r["green_share"] == 0.6 and r["free_cpu_milli"] == {"GPU": 2000.0}


def test_percentiles() -> None:
    p = percentiles(range(1, 101))
    assert p["p50_ms"] == 50.5 and p["max_ms"] == 100 and 98 < p["p99_ms"] < 100


def events_at(*offsets: int) -> list[SimpleNamespace]:
    return [SimpleNamespace(message=SimpleNamespace(offset=o)) for o in offsets]


def one_sample(node_id: str) -> Readings:
    sample = dict(
        event_id="e", event_time=datetime.now(UTC), node_id=node_id, hub="h", cluster="c", province="p",
        cpu_util=0.5, memory_util=0.5, accelerator_util=0.5, power_kw=1.0, inlet_temp_c=24.0, running_tasks=1,
    )  # fmt: skip
    return Readings.of_sample(sample, 0)


NONE = Readings.concat([])


def test_an_open_chunk_spans_batches_until_its_half_pane_ends_and_a_read_again_starts_a_new_run() -> None:
    intake = Intake()
    intake.hold(0, events_at(0, 1), one_sample("n1"), clock_ms=12_000)
    intake.hold(0, events_at(2), NONE, clock_ms=14_000)
    assert intake.due(clock_ms=14_999) == []
    (held,) = intake.due(clock_ms=15_000)  # the half pane the clock was in when it opened has ended
    assert (held.chunk.start, held.end, len(held.events)) == (0, 3, 3)
    assert [r.node_ids for r in held.readings] == [["n1"]]
    first_run = held.chunk.run
    intake.hold(0, events_at(3), NONE, clock_ms=21_000)
    assert intake.open[0].chunk.run == first_run  # offsets follow on: the same run
    intake.hold(0, events_at(1, 2), NONE, clock_ms=22_000)  # read again from offset 1 (a rebalance)
    reread = intake.open[0].chunk
    assert reread.start == 1 and reread.run.offset == 1 and reread.run > first_run
    intake.hold(1, events_at(9), NONE, clock_ms=22_000)
    assert [c.chunk.partition for c in intake.due(clock_ms=22_000, partitions={1})] == [1]  # revoked: sent now


def test_the_worker_commits_telemetry_within_ten_seconds_of_its_chunk_opening(settings: Settings, tmp_path) -> None:
    """A sample waits out its chunk's span, the worker's next fetch (Faust's own 1.5-s wait) and a commit, and
    2 s are left for the frame that moves the clock past the chunk's end and for sending the chunk."""
    app = faust_app(settings.model_copy(update={"data_dir": tmp_path}), "commit-test")
    faust_fetch_wait_s, clock_and_send_s = 1.5, 2.0
    assert CHUNK_MS / 1000 + faust_fetch_wait_s + app.conf.broker_commit_interval + clock_and_send_s < 10
