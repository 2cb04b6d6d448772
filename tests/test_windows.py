"""The window arithmetic alone: panes summed with NumPy, merged exactly, hopping windows closed on time."""

from __future__ import annotations

import numpy as np

from suanwang.streams.windows import (
    PANE_MS,
    HoppingWindows,
    OpenPanes,
    Pane,
    Samples,
    pane_sums,
    percentiles,
    rollup_fields,
    windows_of,
)


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
        (k, key, start): pane
        for k, key, start, pane in pane_sums(batch([1_000, 2_000, 11_000], ["a", "b", "a"], [0.2, 0.6, 0.4]))
    }
    assert set(out) == {
        ("node", "a", 0), ("node", "b", 0), ("node", "a", 10_000),
        ("cluster", "c", 0), ("cluster", "c", 10_000), ("hub", "h", 0), ("hub", "h", 10_000),
        ("province", "p", 0), ("province", "p", 10_000),
    }  # fmt: skip
    hub = out[("hub", "h", 0)]
    assert (hub.samples, hub.nodes) == (2, 2)
    assert hub.cpu_sum == 0.8 and hub.cpu_max == 0.6 and hub.load_min == 0.2
    assert hub.facility_sum == 2 * 2.0 * 1.2 and hub.green_sum == 2 * 2.0 * 1.2 * 0.5
    assert hub.free_cpu == {"CPU": 800 + 400}


def test_partial_panes_merge_to_the_whole() -> None:
    times, nodes, cpu = [1_000, 2_000, 3_000, 4_000], ["a", "b", "a", "b"], [0.1, 0.9, 0.3, 0.5]
    whole = {(k, key, s): p for k, key, s, p in pane_sums(batch(times, nodes, cpu))}
    first = {(k, key, s): p for k, key, s, p in pane_sums(batch(times[:2], nodes[:2], cpu[:2]))}
    for k, key, s, p in pane_sums(batch(times[2:], nodes[2:], cpu[2:])):
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


def test_windows_close_after_grace_and_a_late_partial_republishes_them() -> None:
    windows = HoppingWindows(grace_ms=5_000)
    for start in range(0, 60_000, PANE_MS):
        windows.add("hub", "h", start, Pane(samples=2, nodes=1, cpu_sum=1.0, load_min=0.5), now_ms=start)
    assert not [w for w in windows.close(now_ms=64_999) if w.end_ms == 60_000 and w.length_ms == 60_000]
    done = {(w.length_ms, w.end_ms): w for w in windows.close(now_ms=65_000)}
    assert done[(60_000, 60_000)].total.samples == 12 and done[(60_000, 60_000)].panes == 6
    windows.add("hub", "h", 50_000, Pane(samples=1, nodes=1, cpu_sum=1.0, load_min=0.1), now_ms=65_000)  # late
    again = {(w.length_ms, w.end_ms): w for w in windows.close(now_ms=65_000)}
    assert again[(60_000, 60_000)].total.samples == 13 and again[(60_000, 60_000)].total.load_min == 0.1
    assert not windows.add("hub", "h", 0, Pane(samples=1), now_ms=10_000_000)  # beyond the lateness bound


def test_open_panes_close_once_the_clock_passes_end_plus_lateness() -> None:
    panes = OpenPanes(lateness_ms=5_000)
    panes.add("node", "a", 0, Pane(samples=1))
    assert panes.close(now_ms=14_999) == []
    assert [(k, key, s) for k, key, s, _ in panes.close(now_ms=15_000)] == [("node", "a", 0)]
    assert panes.close(now_ms=99_000) == []


def test_rollup_fields_scale_power_by_nodes_and_weight_pue_and_green_by_power() -> None:
    windows = HoppingWindows(grace_ms=0)
    for start in range(0, 60_000, PANE_MS):  # two nodes, 2 samples each per pane, 3 kW and 1 kW
        pane = Pane(samples=4, nodes=2, cpu_sum=2.0, power_sum=8.0, facility_sum=10.0, green_sum=6.0, load_min=0.4)
        pane.free_cpu = {"GPU": 4000.0}
        windows.add("cluster", "c", start, pane, now_ms=start)
    window = next(w for w in windows.close(now_ms=60_000) if w.length_ms == 60_000 and w.end_ms == 60_000)
    r = rollup_fields(window, nodes_total=3)
    assert r["nodes_online"] == 2 and r["nodes_total"] == 3
    assert r["power_kw_mean"] == 4.0 and np.isclose(r["energy_kwh"], 4.0 / 60)
    assert r["pue"] == 1.25 and r["green_share"] == 0.6 and r["free_cpu_milli"] == {"GPU": 2000.0}


def test_percentiles() -> None:
    p = percentiles(range(1, 101))
    assert p["p50_ms"] == 50.5 and p["max_ms"] == 100 and 98 < p["p99_ms"] < 100
