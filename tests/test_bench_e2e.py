"""`suanwang bench e2e`: the dispatcher's request-to-decision latency and a bare relay's, in one run."""

from __future__ import annotations

import json

from tests.conftest import run_cli


def test_bench_e2e_measures_the_dispatcher_against_a_bare_relay() -> None:
    out = run_cli("bench", "e2e", "--rate", "50", "--seconds", "3", "--nodes", "200", "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    figures = json.loads(out.stdout)
    assert figures["relay_answers"] == figures["dispatch_answers"] == figures["sent"] == 150  # each answered
    assert 0 < figures["relay_p50_ms"] <= figures["relay_p99_ms"]
    assert 0 < figures["dispatch_p50_ms"] <= figures["dispatch_p99_ms"]
