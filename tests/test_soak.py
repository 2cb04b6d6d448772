"""`suanwang bench soak` in its short form: the whole platform sampled over time, every figure present and sane."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from suanwang.benches.soak import contradicted
from tests.conftest import run_cli


def test_a_short_soak_samples_memory_lag_and_dispatch_latency(tmp_path: Path) -> None:
    done = run_cli(
        "bench", "soak", "--minutes", "0.25", "--every", "3", "--rate", "40", "--nodes", "300", "--json",
        "--data-dir", str(tmp_path), timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    series = figures["series"]
    assert figures["samples"] == len(series) >= 4
    assert [s["t_s"] for s in series] == sorted(s["t_s"] for s in series)
    for sample in series:
        assert set(sample["rss_mb"]) == {"worker", "dispatcher", "simulator"}
        assert all(50 < mb < 4000 for mb in sample["rss_mb"].values())
        assert set(sample["lag"]) == set(sample["lag_s"]) == {"worker", "dispatcher"}
        assert all(0 <= seconds < 300 for seconds in sample["lag_s"].values())
        for group, by_topic in sample["lag_s_by_topic"].items():  # the group's lag is its slowest topic's
            assert sample["lag_s"][group] == round(max(by_topic.values(), default=0.0), 1)
    # the embedded broker's CPU since the sample before: none for the first
    assert series[0]["broker_cores"] is None and all(s["broker_mb"] > 0 for s in series)
    assert all(0 <= s["broker_cores"] < 8 for s in series[1:]) and sum(s["broker_cores"] for s in series[1:]) > 0
    assert sum(s["placements"] for s in series) > 0 and figures["dispatch_p99_ms_second_half"] > 0
    assert set(figures["lag_s_max_by_topic"]) == {"worker", "dispatcher"}
    assert set(figures["memory"]) == {"worker", "dispatcher", "simulator"}
    assert figures["node_offline"]["false"] == 0 <= figures["node_offline"]["raised"]
    assert 0 <= figures["collector_silent"]["late"] <= figures["collector_silent"]["raised"]
    held = figures["batches_held"]  # counted near the end, by topic
    assert held["tasks.request"] > 0 and held["telemetry.frame"] > 0 and all(n >= 0 for n in held.values())
    run = figures["run"]
    assert run["placements"] > 0 and run["clickhouse_rows"]["placements"] == run["placements"]


def test_an_offline_alert_is_false_when_the_nodes_own_samples_show_no_silence() -> None:
    every_5s = np.arange(0, 600_000, 5_000, dtype=np.int64)
    failed = every_5s[(every_5s < 200_000) | (every_5s > 290_000)]  # silent 90 s from 200 s on
    samples = {"steady": every_5s, "failed": failed}
    alerts = [("steady", 300_000), ("failed", 220_000), ("unknown", 300_000), ("failed", 500_000)]
    # the steady node never went quiet; the failed node did, around its first alert but not its second; a node
    # with no sample stored at all cannot be contradicted
    assert contradicted(alerts, samples, silence_ms=15_000) == 2
    assert contradicted(alerts[1:3], samples, silence_ms=15_000) == 0
    # at the end of a run: the quiet after the last sample is no node's silence
    near_the_end = [("steady", 590_000), ("failed", 220_000)]
    assert contradicted(near_the_end, samples, silence_ms=15_000) == 0  # the window runs past the data
    assert contradicted(near_the_end, samples, silence_ms=15_000, span=(0, 595_000)) == 1
