"""The dispatcher's stages alone, then the core: constraints exact, capacity never promised twice."""

from __future__ import annotations

import random

import numpy as np
import pytest

from suanwang.bus import now_ms
from suanwang.dispatcher import stages
from suanwang.dispatcher.core import Dispatcher
from suanwang.schemas.codec import Codec
from suanwang.schemas.topics import PLACEMENT, REJECTION
from suanwang.topology import load_network, scaled_nodes
from suanwang.workload import TaskGenerator, registration

W = stages.WHOLE


def test_accelerators_fit_shares_and_whole_ones() -> None:
    row = np.array([W, 300, 0, 0], dtype=np.int32)
    assert stages.accelerators_fit(row, 4, 1, 300)
    assert not stages.accelerators_fit(np.array([200, 0], dtype=np.int32), 2, 1, 300)
    assert stages.accelerators_fit(row, 4, 1, W)
    assert not stages.accelerators_fit(row, 4, 2, W)


def test_reserve_best_fits_a_share_and_release_restores() -> None:
    cpu, mem = np.array([4000], dtype=np.int64), np.array([100], dtype=np.int64)
    acc = np.array([[W, 600, 400, 0]], dtype=np.int32)
    chosen = np.zeros(1, dtype=np.int32)
    n = stages.reserve(0, cpu, mem, acc, np.array([4], dtype=np.int32), 1000, 10, 1, 400, chosen)
    assert n == 1 and chosen[0] == 2  # the fullest accelerator that still holds 400
    assert acc[0].tolist() == [W, 600, 0, 0] and cpu[0] == 3000
    stages.release(0, cpu, mem, acc, 1000, 10, 400, chosen, n)
    assert acc[0].tolist() == [W, 600, 400, 0] and cpu[0] == 4000 and mem[0] == 100


def test_select_picks_best_runner_up_and_local() -> None:
    verdict = np.array([0, 0, 5, 0], dtype=np.int8)
    score = np.array([3.0, 1.0, 0.5, 2.0])
    hub = np.array([0, 1, 0, 0], dtype=np.int32)
    out = np.empty(3, dtype=np.int64)
    stages.select(verdict, score, hub, 0, out)
    assert out.tolist() == [1, 3, 3]


@pytest.fixture(scope="module")
def network():
    return load_network()


def _dispatcher(network, total: int = 400) -> Dispatcher:
    d = Dispatcher(network)
    for spec in scaled_nodes(network, total):
        d.nodes.register(registration(spec, network))
    return d


def _request(**over) -> dict:
    base = dict(
        task_id="t1",
        tenant="x",
        kind="training",
        event_time=now_ms(),
        origin_hub="yangtze",
        origin_province="Shanghai",
        data_hub="yangtze",
        chip_archs=["cuda"],
        chip_models=[],
        cpu_milli=8000,
        memory_mib=1024,
        accelerators=1,
        accelerator_milli=W,
        duration_s=3600.0,
        latency_tier_ms=None,
        input_gb=0.0,
        allowed_provinces=[],
        deadline=None,
        budget_yuan=None,
    )
    return {**base, **over}


@pytest.mark.parametrize(
    ("over", "code"),
    [
        (dict(chip_archs=["sparc"]), "UNKNOWN_ARCH"),
        (dict(cpu_milli=-5), "INVALID_RESOURCES"),
        (dict(memory_mib=10**12), "INVALID_RESOURCES"),
        (dict(accelerator_milli=0), "INVALID_RESOURCES"),
        (dict(origin_hub="atlantis"), "UNKNOWN_HUB"),
        (dict(allowed_provinces=["Narnia"]), "UNKNOWN_PROVINCE"),
        (dict(deadline=now_ms() - 60_000), "DEADLINE_PASSED"),
    ],
)
def test_bad_requests_are_rejected_with_a_reason_code(network, over, code) -> None:
    spec, out = _dispatcher(network, 100).decide(_request(**over))
    assert spec is REJECTION and out["reason_code"] == code
    assert out["reason"]


def test_rejection_counts_what_each_filter_removed(network) -> None:
    d = _dispatcher(network, 200)
    spec, out = d.decide(_request(latency_tier_ms=1, allowed_provinces=["Gansu"]))
    assert spec is REJECTION and out["reason_code"] == "NO_FEASIBLE_NODE"
    assert sum(out["filtered"].values()) == 200
    assert out["filtered"]["wrong architecture"] > 0 and out["filtered"]["data residency"] > 0
    assert out["reason"].startswith("0/200 nodes: ")


def test_latency_tier_and_residency_are_honoured(network) -> None:
    d = _dispatcher(network)
    _, tight = d.decide(_request(task_id="a", latency_tier_ms=1))
    assert tight["hub"] == "yangtze"
    _, resident = d.decide(_request(task_id="b", allowed_provinces=["Gansu"]))
    assert resident["province"] == "Gansu"


def test_offline_work_goes_where_it_is_cheapest_and_says_what_it_saved(network) -> None:
    spec, out = _dispatcher(network).decide(_request(input_gb=1.0))
    assert spec is PLACEMENT
    assert out["hub"] != "yangtze" and out["local_node_id"] is not None
    assert out["saved_yuan"] > 0 and out["total_cost"] < out["local_cost"]
    parts = out["compute_cost"] + out["energy_cost"] + out["transfer_cost"] + out["carbon_cost"]
    assert out["total_cost"] == pytest.approx(parts)
    assert out["energy_kwh"] > 0 and out["carbon_kg"] < out["energy_kwh"]
    assert 1 <= out["feasible_nodes"] < 400
    Codec().encode("Placement", out)  # the explained event fits the contract


def test_redelivered_request_gets_the_same_decision_and_reserves_once(network) -> None:
    d = _dispatcher(network)
    first = d.decide(_request())
    free = d.nodes.acc_free.copy()
    assert d.decide(_request()) is first
    assert np.array_equal(free, d.nodes.acc_free)


def test_random_stream_never_overcommits_and_release_restores_everything(network) -> None:
    d = _dispatcher(network, 300)
    before = (d.nodes.view("cpu_free").copy(), d.nodes.view("mem_free").copy(), d.nodes.acc_free.copy())
    gen = TaskGenerator(network, random.Random(3))
    placed = []
    for _ in range(1500):
        spec, out = d.decide(gen.next(now_ms()))
        if spec is PLACEMENT:
            placed.append(out)
    assert placed
    assert (d.nodes.view("cpu_free") >= 0).all() and (d.nodes.view("mem_free") >= 0).all()
    assert (d.nodes.acc_free >= 0).all() and (d.nodes.acc_free <= W).all()
    for p in placed:
        assert d.release(p["task_id"])
    after = (d.nodes.view("cpu_free"), d.nodes.view("mem_free"), d.nodes.acc_free)
    for a, b in zip(before, after, strict=True):
        assert np.array_equal(a, b)


def test_energy_is_reported_even_when_power_is_free(network) -> None:
    d = _dispatcher(network)
    d.nodes.price_now[:] = 0.0
    _, out = d.decide(_request())
    assert out["energy_cost"] == 0 and out["energy_kwh"] > 0


def test_unhealthy_nodes_are_skipped(network) -> None:
    d = _dispatcher(network, 100)
    for node_id in d.nodes.node_ids:
        d.set_health(node_id, False)
    _, out = d.decide(_request())
    assert out["reason_code"] == "NO_FEASIBLE_NODE" and out["filtered"] == {"unhealthy": 100}
