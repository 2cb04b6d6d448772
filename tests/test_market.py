"""Price discovery and metering's conversion, each alone, and what they do to the dispatcher's choice."""

from __future__ import annotations

import random

import pytest

from suanwang.dispatcher.core import Dispatcher
from suanwang.dispatcher.market import PriceSetter, next_index, utilisation
from suanwang.dispatcher.stages import Float
from suanwang.simulator.workload import TaskGenerator, registration
from suanwang.topology import PRECISIONS, Market, load_network, scaled_nodes

NETWORK = load_network()
MARKET = NETWORK.market
NOW = 1_795_017_600_000


def dispatcher(nodes: int = 80) -> Dispatcher:
    d = Dispatcher(NETWORK)
    for spec in scaled_nodes(NETWORK, nodes):
        d.nodes.register(registration(spec, NETWORK))
    return d


def test_the_index_moves_toward_its_target_by_at_most_a_step_within_bounds() -> None:
    m = Market(
        target_utilisation=0.6, utilisation_gain=1.0, pressure_gain=0.5, max_step=0.1, min_index=0.8, max_index=1.5
    )
    assert next_index(1.0, 0.6, 0.0, m) == 1.0  # at target, no pressure: the base price
    assert next_index(1.0, 1.0, 0.0, m) == 1.1  # target 1.4, one step
    assert next_index(1.45, 1.0, 1.0, m) == 1.5  # capped
    assert next_index(1.0, 0.0, 0.0, m) == 0.9  # idle capacity gets cheaper
    assert next_index(0.85, 0.0, 0.0, m) == 0.8  # floored
    assert next_index(1.0, 0.65, 0.0, m) == 1.05  # within a step: straight to the target
    with pytest.raises(ValueError, match="bounds must hold the base price"):
        Market(**{**m.model_dump(), "min_index": 1.1})


def test_metering_converts_every_pool_and_refuses_an_incomplete_chip() -> None:
    metering = NETWORK.metering
    for pool in NETWORK.pools.values():
        assert metering.factor(pool.chip_model, "fp32") == 1.0  # a pool's throughput is its CU per hour at FP32
        assert all(metering.factor(pool.chip_model, p) >= 0 for p in PRECISIONS)
    assert metering.factor("A800", "fp16") == pytest.approx(312 / 19.5 * 0.125)
    assert metering.factor("Ascend-910B", "fp64") == 0  # cannot: the filter keeps fp64 work off it
    assert metering.factor("some-trace-gpu", "int8") == 1.0  # unknown chips meter as FP32
    with pytest.raises(ValueError, match="must give every precision"):
        type(metering)(weights=metering.weights, peaks={"X": {"fp32": 1.0}})


def test_utilisation_counts_what_is_promised_per_hub_and_class() -> None:
    d = dispatcher()
    t = d.nodes
    before = utilisation(t)
    assert all(used == 0 for used, _, _ in before.values())
    gen = TaskGenerator(NETWORK, random.Random(3))
    placed = [rec for _, rec in (d.decide(gen.next(NOW), NOW) for _ in range(60)) if "node_id" in rec]
    after = utilisation(t)
    busy = {(t.hubs.ids[p["hub"]], t.classes.ids[p["compute_class"]]) for p in placed}
    assert busy and all(after[k][0] > 0 for k in busy)
    assert all(after[k][0] == 0 for k in after if k not in busy)
    assert sum(n for _, n, _ in after.values()) == t.size


def test_a_price_rise_steers_the_next_task_elsewhere_and_the_quote_carries_it() -> None:
    d = dispatcher()
    req = TaskGenerator(NETWORK, random.Random(5)).next(NOW)
    req.update(task_id="probe", deadline=None, budget_yuan=None, allowed_provinces=[], latency_tier_ms=None)
    _, first = d.decide(dict(req), NOW)
    d.release("probe")
    priced = d.nodes.set_price(first["hub"], first["compute_class"], MARKET.max_index)
    assert priced > 0
    _, second = d.decide({**req, "task_id": "probe-2"}, NOW)
    assert first["price_index"] == 1.0
    if second["hub"] == first["hub"] and second["compute_class"] == first["compute_class"]:
        assert second["price_index"] == MARKET.max_index  # still cheapest there: quoted at the new price
        assert second["compute_cost"] > first["compute_cost"]
    else:
        assert second["total_cost"] >= first["total_cost"]  # moved: the dearer hub lost it to the next best
    node = d.nodes.row[second["node_id"]]
    assert d.nodes.floats[node, Float.PRICE_INDEX] == second["price_index"]


def test_a_node_registered_after_a_price_gets_it() -> None:
    d = dispatcher(20)
    spec = scaled_nodes(NETWORK, 20)[0]
    pool = NETWORK.pools[spec.pool]
    d.nodes.set_price(spec.hub, pool.compute_class, 1.3)
    row = d.nodes.register({**registration(spec, NETWORK), "node_id": "late-node"})
    assert d.nodes.floats[row, Float.PRICE_INDEX] == 1.3


def test_unsupported_precision_is_filtered_and_an_unknown_one_refused() -> None:
    d = dispatcher()
    req = TaskGenerator(NETWORK, random.Random(1)).next(NOW)
    req.update(task_id="fp64-npu", chip_archs=["cann"], chip_models=[], accelerators=1, accelerator_milli=1000)
    req.update(precision="fp64", latency_tier_ms=None, allowed_provinces=[], budget_yuan=None)
    _, out = d.decide(req, NOW)
    assert out["reason_code"] == "NO_FEASIBLE_NODE" and "wrong architecture" in out["reason"]
    _, out = d.decide({**req, "task_id": "fp16-npu", "precision": "fp16"}, NOW)
    assert out["chip_model"] == "Ascend-910B" and out["precision"] == "fp16"
    factor = NETWORK.metering.factor("Ascend-910B", "fp16")
    assert out["cu_per_hour"] == pytest.approx(40.0 * factor / 8)  # one of 8 NPUs of a 40-CU node
    _, out = d.decide({**req, "task_id": "fp8", "precision": "fp8"}, NOW)
    assert out["reason_code"] == "UNKNOWN_PRECISION" and "'fp8'" in out["reason"]


def test_the_setter_publishes_every_hub_and_class_and_pressure_from_capacity_rejections() -> None:
    d = dispatcher(40)
    setter = PriceSetter(MARKET, d.nodes)
    gen = TaskGenerator(NETWORK, random.Random(9))
    rejected = 0
    for _ in range(400):  # far more GPU work than 40 nodes hold
        req = gen.next(NOW)
        req.update(chip_archs=["cuda"], chip_models=[], accelerators=8, duration_s=36_000.0, budget_yuan=None)
        _, out = d.decide(req, NOW)
        setter.observe(req, out)
        rejected += "node_id" not in out
    prices = setter.step()
    keys = {(p["hub"], p["compute_class"]) for p in prices}
    assert keys == {(d.nodes.hubs.names[h], d.nodes.classes.names[c]) for h, c in utilisation(d.nodes)}
    gpu = [p for p in prices if p["compute_class"] == "GPU"]
    assert rejected > 0 and all(p["pressure"] > 0 for p in gpu)
    assert all(p["price_index"] > 1.0 for p in gpu if p["utilisation"] > 0.9)
    assert all(MARKET.min_index <= p["price_index"] <= MARKET.max_index for p in prices)
    assert setter.step()[0]["pressure"] == 0.0  # counts start again each interval
