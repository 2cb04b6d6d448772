"""The intake's columns (`Readings`) and the telemetry rules judged over them: each sample's first problem,
named with its field and value, exactly as a sample read alone would get it."""

from __future__ import annotations

import math
import types
from datetime import UTC, datetime

import numpy as np
import pytest

from suanwang.clock import now_ms
from suanwang.schemas.frames import COLUMNS, frame_of, samples_of
from suanwang.streams.checks import telemetry_problems
from suanwang.streams.readings import Readings
from tests.fleet import fleet, telemetry

NOW = now_ms()


def one_cluster(n: int) -> list[dict]:
    """`n` nodes of one cluster: a frame's."""
    regs = fleet(40 * n)
    return [r for r in regs if r["cluster"] == regs[0]["cluster"]][:n]


def facts_of(regs: list[dict]) -> types.SimpleNamespace:
    return types.SimpleNamespace(nodes={r["node_id"]: r for r in regs})


def as_decoded(sample: dict) -> dict:
    """A sample as the codec hands it over: its event time a datetime."""
    return {**sample, "event_time": datetime.fromtimestamp(sample["event_time"] / 1000, UTC)}


def frame_readings(samples: list[dict], origin: int = 0) -> Readings:
    frame = frame_of(samples, "f", NOW)
    return Readings.of_frame({**frame, "event_times": [as_decoded(s)["event_time"] for s in samples]}, origin)


def test_a_frame_and_its_samples_read_alone_give_the_same_columns() -> None:
    samples = [telemetry(reg, NOW - 1_000) for reg in one_cluster(5)]
    framed = frame_readings(samples, origin=3)
    alone = Readings.concat([Readings.of_sample(as_decoded(s), 3) for s in samples_of(frame_of(samples, "f", NOW))])
    assert framed.node_ids == alone.node_ids and framed.event_ids == alone.event_ids
    assert framed.places == alone.places and np.array_equal(framed.event_ms, alone.event_ms)
    assert all(np.array_equal(framed.figures[c], alone.figures[c]) for c in COLUMNS)
    assert framed.sample.tolist() == [0, 1, 2, 3, 4] and alone.sample.tolist() == [-1] * 5
    assert framed.origin.tolist() == [3] * 5
    assert framed.record(2) == {**samples[2], "event_id": "f:2"}  # a bad one is dead-lettered as this


def test_take_keeps_the_masked_samples_in_order_and_concat_of_none_is_empty() -> None:
    samples = [telemetry(reg, NOW - 1_000) for reg in one_cluster(4)]
    r = frame_readings(samples)
    kept = r.take(np.array([True, False, True, False]))
    assert kept.node_ids == [samples[0]["node_id"], samples[2]["node_id"]] and kept.sample.tolist() == [0, 2]
    assert kept.figures["running_tasks"].dtype == np.int32
    empty = Readings.concat([])
    assert len(empty) == 0 and empty.columns()["event_time"] == []


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"node_id": "ghost"}, "node_id: 'ghost' is not a registered node"),
        ({"cpu_util": 1.5, "power_kw": -1.0}, "cpu_util: 1.5 is outside 0-1"),  # the first rule broken
        ({"accelerator_util": math.nan}, "accelerator_util: nan is outside 0-1"),
        ({"power_kw": math.inf}, "power_kw: inf is not a power (negative or not finite)"),
        ({"inlet_temp_c": -math.inf}, "inlet_temp_c: -inf is not finite"),
        ({"province": "Atlantis"}, "province: 'Atlantis' but {node} is registered in {province!r}"),
    ],
)
def test_each_bad_sample_gets_its_first_problem_and_the_others_none(change: dict, problem: str) -> None:
    regs = fleet(4)
    samples = [telemetry(reg, NOW - 1_000) for reg in regs]
    samples[2] = {**samples[2], **change}
    r = Readings.concat([Readings.of_sample(as_decoded(s), k) for k, s in enumerate(samples)])
    expected = problem.format(node=regs[2]["node_id"], province=regs[2]["province"])
    assert telemetry_problems(r, facts_of(regs), NOW, 60.0) == {2: expected}


def test_a_sample_from_the_future_is_named_with_its_time() -> None:
    regs = one_cluster(2)
    r = frame_readings([telemetry(regs[0], NOW - 1_000), telemetry(regs[1], NOW + 120_000)])
    (only,) = telemetry_problems(r, facts_of(regs), NOW, 60.0).items()
    assert only[0] == 1 and only[1].startswith("event_time: ") and "120 s in the future (more than 60 s)" in only[1]
