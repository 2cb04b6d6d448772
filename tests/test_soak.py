"""`suanwang bench soak` in its short form: the whole platform sampled over time, every figure present and sane."""

from __future__ import annotations

import json
from pathlib import Path

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
    assert sum(s["placements"] for s in series) > 0 and figures["dispatch_p99_ms_second_half"] > 0
    assert set(figures["memory"]) == {"worker", "dispatcher", "simulator"}
    run = figures["run"]
    assert run["placements"] > 0 and run["clickhouse_rows"]["placements"] == run["placements"]
