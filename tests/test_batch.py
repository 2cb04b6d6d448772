"""The batch path for work that can wait: the solve alone, and a window bound through the dispatcher's table."""

from __future__ import annotations

import random
import time

import numpy as np
import pytest

from suanwang.clock import HOUR_MS, now_ms
from suanwang.dispatcher import batch
from suanwang.dispatcher.core import Dispatcher
from suanwang.dispatcher.stages import Int
from suanwang.schemas.topics import PLACEMENT
from suanwang.settings import Settings
from suanwang.simulator.workload import TaskGenerator, registration
from suanwang.topology import load_network, scaled_nodes
from tests.test_recovery import node, request

INF = np.inf


def problem(costs: list[list[float]], needs: list[list[float]], free: list[list[float]]) -> batch.Problem:
    """Every node a candidate of every task, in node order."""
    costs_ = np.array(costs, dtype=float)
    candidates = np.tile(np.arange(costs_.shape[1]), (costs_.shape[0], 1))
    return batch.Problem(candidates, costs_, np.array(needs, dtype=float), np.array(free, dtype=float))


ONE_SLOT = [[1, 0, 0, 0], [1, 0, 0, 0]]  # two nodes with room for one one-CPU task each


def test_the_solve_gives_the_cheap_node_to_the_task_that_gains_most_from_it() -> None:
    """Greedy, in arrival order, gives node 0 to `a` (1 against 2) and leaves `b` node 1 at 10: 11 in all."""
    p = problem([[1, 2], [1, 10]], [[1, 0, 0, 0]] * 2, ONE_SLOT)
    assert batch.warm_start(p).tolist() == [0, 1]
    solved = batch.solve(p, time_limit_s=5)
    assert solved.chosen.tolist() == [1, 0] and solved.cost == 3 and solved.greedy_cost == 11
    assert solved.status.startswith("MILP")


def test_the_solve_never_places_fewer_nor_pays_more_than_the_greedy_answer() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        costs = rng.uniform(1, 10, size=(12, 5))
        costs[rng.random(costs.shape) < 0.3] = INF  # infeasible pairs
        p = problem(costs.tolist(), rng.integers(1, 4, size=(12, 4)).tolist(), rng.integers(2, 8, size=(5, 4)).tolist())
        greedy = batch.warm_start(p)
        solved = batch.solve(p, time_limit_s=1)
        placed, by_greedy = np.flatnonzero(solved.chosen >= 0), np.flatnonzero(greedy >= 0)
        assert set(by_greedy) <= set(placed)  # what it places beyond them is room the greedy answer left
        assert p.costs[by_greedy, solved.chosen[by_greedy]].sum() <= solved.greedy_cost + 1e-9
        used = np.zeros_like(p.free)
        for t in placed:
            assert np.isfinite(p.costs[t, solved.chosen[t]])
            used[p.candidates[t, solved.chosen[t]]] += p.needs[t]
        assert (used <= p.free).all()  # within every node's CPU, memory and accelerators


def test_a_task_the_greedy_answer_left_out_takes_room_that_is_left() -> None:
    p = problem([[1, INF], [1, 5]], [[1, 0, 0, 0]] * 2, ONE_SLOT)
    p.greedy = np.array([0, -1])  # as if `b` had been given up
    assert batch.solve(p, time_limit_s=1).chosen.tolist() == [0, 1]


@pytest.fixture(scope="module")
def network():
    return load_network()


def saturating(network, nodes: int, tasks: int, seed: int, now: int) -> tuple[Dispatcher, Dispatcher, list[dict]]:
    def table() -> Dispatcher:
        d = Dispatcher(network)
        for spec in scaled_nodes(network, nodes):
            d.nodes.register(registration(spec, network))
        return d

    gen = TaskGenerator(network, random.Random(seed))
    reqs = [r | {"latency_tier_ms": None} for r in (gen.next(now) for _ in range(tasks))]
    return table(), table(), reqs


DAY = 1_796_256_000_000  # 2026-12-03 00:00 UTC


@pytest.mark.parametrize(
    "now", [DAY + 31 * 60_000, DAY + 15 * HOUR_MS, DAY + 21 * HOUR_MS]
)  # hours whose prices once made the window's own greedy answer differ from deciding one by one
def test_a_window_costs_less_than_deciding_its_requests_one_by_one_and_promises_nothing_twice(network, now) -> None:
    greedy, together, reqs = saturating(network, 60, 150, seed=2, now=now)
    one_by_one = [greedy.decide(r, now)[1] for r in reqs]
    started = time.perf_counter()
    decided = together.decide_batch(reqs, now, time_limit_s=2)
    elapsed_us = (time.perf_counter() - started) * 1e6
    assert sorted(r["task_id"] for _, r in decided) == sorted(r["task_id"] for r in reqs)  # each decided once
    placed = [r for s, r in decided if s is PLACEMENT]
    greedy_placed = [r for r in one_by_one if "node_id" in r]
    assert len(placed) >= len(greedy_placed)
    assert {r["decided_by"] for r in greedy_placed} == {"greedy"} and "batch" in {r["decided_by"] for r in placed}
    assert sum(r["total_cost"] for r in placed) < sum(r["total_cost"] for r in greedy_placed)
    assert sum(r["decision_us"] for r in placed) <= elapsed_us  # each its share of the window, not all of it
    t = together.nodes
    assert (t.column(Int.CPU_FREE) >= 0).all() and (t.column(Int.MEM_FREE) >= 0).all()
    assert (t.acc_free >= 0).all() and len(together.reservations) == len(placed)


def test_work_bound_after_the_greedy_path_took_its_node_goes_elsewhere(network) -> None:
    d = Dispatcher(network)
    for n in (node("cheap", hub="gansu", province="Gansu"), node("dear", hub="yangtze", province="Shanghai")):
        d.nodes.register(n)
    wait = request("wait", "shop")
    plan = d.prepare_batch([wait], now_ms())
    solution = batch.solve(plan.problem, time_limit_s=1)
    assert d.nodes.node_ids[plan.rows[plan.problem.candidates[0, solution.chosen[0]]]] == "cheap"
    _, urgent = d.decide(request("urgent", "shop", chip_models=["H20"], latency_tier_ms=20, origin_hub="gansu"))
    assert urgent["node_id"] == "cheap"  # the greedy path took it while the window was being solved
    [(_, (spec, bound))] = d.bind_batch(plan, solution)
    assert spec is PLACEMENT and bound["node_id"] == "dear" and int(d.nodes.acc_free.sum()) == 0
    assert urgent["decided_by"] == "greedy" and bound["decided_by"] == "batch"  # placed alone, but after its window


def test_a_request_decided_meanwhile_is_not_bound_again(network) -> None:
    d = Dispatcher(network)
    d.nodes.register(node("n1", gpus=2))
    plan = d.prepare_batch([request("twice", "shop")], now_ms())
    solution = batch.solve(plan.problem, time_limit_s=1)
    d.decide(request("twice", "shop"))  # say the timer's path decided it
    assert d.bind_batch(plan, solution) == [] and len(d.reservations) == 1


def test_only_offline_work_that_is_not_emergency_waits_for_a_window() -> None:
    assert batch.deferrable({"latency_tier_ms": None, "priority": None})
    assert not batch.deferrable({"latency_tier_ms": 20, "priority": None})
    assert not batch.deferrable({"latency_tier_ms": None, "priority": "emergency"})


@pytest.mark.parametrize(
    ("setting", "value", "names"),
    [
        ("dispatch_batch_windows", "training=99", "'training=99': a window is a kind and 0 to 60 seconds"),
        ("dispatch_batch_windows", "training", "'training' is not kind=seconds"),
        ("dispatch_batch_window_s", "61", "less than or equal to 60"),
    ],
)
def test_a_window_outside_its_bounds_is_refused_at_start_naming_it(monkeypatch, setting, value, names) -> None:
    from suanwang.errors import SuanwangError
    from suanwang.settings import load_settings

    monkeypatch.setenv(f"SUANWANG_{setting.upper()}", value)
    with pytest.raises(SuanwangError) as refused:
        load_settings()
    assert f"SUANWANG_{setting.upper()}={value!r}" in str(refused.value) and names in str(refused.value)


def test_per_kind_windows_parse() -> None:
    assert Settings(dispatch_batch_windows="training=2, backup=0").batch_windows == {"training": 2.0, "backup": 0.0}
