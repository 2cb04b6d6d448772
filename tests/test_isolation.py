"""`suanwang bench isolation` in its short form: analysts' heavy SQL in the middle of a run, every figure there."""

from __future__ import annotations

import json
from pathlib import Path

from suanwang.benches.isolation import ANALYSTS, PHASES
from tests.conftest import run_cli


def test_a_short_isolation_run_sets_the_loaded_phase_beside_the_quiet_ones(tmp_path: Path) -> None:
    done = run_cli(
        "bench", "isolation", "--seconds", "15", "--rate", "20", "--nodes", "300", "--json",
        "--data-dir", str(tmp_path), env={"SUANWANG_ANALYST_MAX_SECONDS": "2"}, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["analysts"] == ANALYSTS and list(figures["phases"]) == list(PHASES)
    answers = figures["answers"]
    assert answers.get("sql 429", 0) > 0  # ten analysts, two slots: the rest were told to come back
    assert answers.get("sql 422", 0) + answers.get("sql 200", 0) >= 2
    assert set(answers) <= {"sql 200", "sql 422", "sql 429", "hubs 200"}  # the API answered every probe
    for phase in figures["phases"].values():
        assert phase["flushes"] >= 2 and phase["samples"] > 0 and phase["hubs_p50_ms"] > 0
        assert phase["delay_max_ms"] >= phase["delay_p99_ms"] > 0
    assert figures["rows_match"] and figures["clickhouse_rows"]["telemetry"] > 0
