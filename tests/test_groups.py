"""The groups of nodes with equal figures: kept exact through every change, and scored as their nodes would be."""

from __future__ import annotations

import random
from dataclasses import replace

import numpy as np
import pytest

from suanwang.clock import now_ms
from suanwang.dispatcher.core import Choice, Dispatcher, Reservation, choose, demand_of, reserve, timing_of
from suanwang.dispatcher.stages import Group, Link, Tally, Verdict
from suanwang.dispatcher.state import NodeTable
from suanwang.simulator.workload import TaskGenerator, registration
from suanwang.topology import load_network, scaled_nodes


@pytest.fixture(scope="module")
def network():
    return load_network()


def _dispatcher(network, nodes: int) -> Dispatcher:
    d = Dispatcher(network)
    for spec in scaled_nodes(network, nodes):
        d.nodes.register(registration(spec, network))
    return d


def assert_grouped_exactly(t: NodeTable) -> None:
    """Every node is in one group of nodes with its very figures, listed in row order, and each group with
    nodes is listed once, its figures copied beside it."""
    live = t.groups[: t.tally[Tally.LIVE], Group.LIVE]
    assert len(set(live.tolist())) == len(live)
    seen = []
    for pos, g in enumerate(live.tolist()):
        assert t.groups[g, Group.POS] == pos
        rows, row = [], t.groups[g, Group.HEAD]
        while row >= 0:
            assert t.links[row, Link.GROUP] == g
            rows.append(row)
            row = t.links[row, Link.NEXT]
        assert rows == sorted(rows) and len(rows) == t.groups[g, Group.SIZE] > 0 and rows[-1] == t.groups[g, Group.TAIL]
        head = rows[0]
        for r in rows:
            assert np.array_equal(t.ints[r], t.ints[head]) and np.array_equal(t.floats[r], t.floats[head])
        assert np.array_equal(t.live_ints[pos], t.ints[head]) and np.array_equal(t.live_floats[pos], t.floats[head])
        seen += rows
    assert sorted(seen) == list(range(t.size))


def test_groups_stay_exact_through_placements_releases_and_health(network) -> None:
    d = _dispatcher(network, 400)
    assert_grouped_exactly(d.nodes)
    assert d.nodes.tally[Tally.LIVE] < 100  # 400 nodes of a few kinds: far fewer groups than nodes
    rng, gen, placed = random.Random(3), TaskGenerator(network, random.Random(3)), []
    for step in range(600):
        spec, out = d.decide(gen.next(now_ms()))
        if "node_id" in out:
            placed.append(out["task_id"])
        if placed and rng.random() < 0.3:
            d.release(placed.pop(rng.randrange(len(placed))))
        if rng.random() < 0.05:
            d.set_health(rng.choice(d.nodes.node_ids), rng.random() < 0.5, now_ms())
        if step % 50 == 0:
            assert_grouped_exactly(d.nodes)
    assert_grouped_exactly(d.nodes)


def test_a_grouped_pass_decides_as_the_pass_over_every_node(network) -> None:
    """Best, runner-up, best local, their costs and the verdict counts: the same either way."""
    d = _dispatcher(network, 300)
    gen, now = TaskGenerator(network, random.Random(5)), now_ms()
    for _ in range(300):
        req = gen.next(now)
        dem = demand_of(d.nodes, req, 1.0)
        d.load.observe(*dem.shape)
        w = timing_of(d.nodes, req, now, 0.1)
        grouped = choose(d.nodes, dem, Choice(), w, d.load)
        scores = np.empty(d.nodes.size)
        every_node = replace(dem, avoid=np.array([-1]))  # a pre-filter that removes nothing: no groups then
        by_node = choose(d.nodes, every_node, Choice(), w, d.load, scores)
        assert grouped.picks.tolist() == by_node.picks.tolist()
        assert grouped.costs.tolist() == by_node.costs.tolist()
        assert grouped.counts[Verdict.AVOIDED] == by_node.counts[Verdict.AVOIDED] == 0
        assert grouped.counts.tolist() == by_node.counts.tolist()
        grouped_scores = np.empty(d.nodes.size)
        choose(d.nodes, dem, Choice(), w, d.load, grouped_scores)  # every node of a group gets its score
        assert np.array_equal(grouped_scores, scores)
        best = int(grouped.picks[0])
        if best >= 0:
            taken = reserve(d.nodes, best, dem, d.load)
            d.keep(req["task_id"], Reservation(best, dem.cpu, dem.mem, dem.acc_milli, taken))


def test_equal_nodes_give_the_runner_up_from_their_own_group(network) -> None:
    d = Dispatcher(network)
    twin = registration(scaled_nodes(network, 10)[0], network)
    for k in range(3):
        d.nodes.register({**twin, "node_id": f"twin{k}"})
    assert d.nodes.tally[Tally.LIVE] == 1
    req = {**TaskGenerator(network, random.Random(1)).next(now_ms()), "chip_archs": [twin["chip_arch"]]}
    req |= dict(accelerators=0, cpu_milli=1000, memory_mib=1024, chip_models=[], allowed_provinces=[], budget_yuan=None)
    req |= dict(latency_tier_ms=None, origin_hub=twin["hub"], precision="fp32")
    c = choose(d.nodes, demand_of(d.nodes, req, 1.0), Choice(), timing_of(d.nodes, req, now_ms(), 0.1), d.load)
    assert c.picks.tolist() == [0, 1, 0] and c.costs[0] == c.costs[1] and c.counts[Verdict.FEASIBLE] == 3


def test_the_groups_are_rebuilt_when_their_rows_run_out(network) -> None:
    d = _dispatcher(network, 50)
    t, rows = d.nodes, d.nodes.groups.shape[0]
    req = {**TaskGenerator(network, random.Random(2)).next(now_ms()), "accelerators": 0, "memory_mib": 1}
    for cpu in range(1, rows + 50):  # each a state never seen: a new group, the old one left empty
        dem = demand_of(t, {**req, "cpu_milli": cpu}, 1.0)
        taken = reserve(t, 0, dem, d.load)
        d._give(Reservation(0, dem.cpu, dem.mem, dem.acc_milli, taken))
        assert t.tally[Tally.ALLOCATED] <= rows
    assert t.tally[Tally.ALLOCATED] < rows  # started afresh at least once
    assert_grouped_exactly(t)
