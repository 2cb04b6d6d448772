"""The dispatcher's stages alone, then the core: constraints exact, capacity never promised twice."""

from __future__ import annotations

import random

import numpy as np
import pytest

from suanwang.clock import now_ms
from suanwang.dispatcher import stages
from suanwang.dispatcher.core import Dispatcher
from suanwang.dispatcher.stages import Int, Verdict
from suanwang.schemas.codec import Codec
from suanwang.schemas.topics import PLACEMENT, REJECTION
from suanwang.simulator.workload import TaskGenerator, registration
from suanwang.topology import load_network, scaled_nodes

W = stages.WHOLE


def test_accelerators_fit_shares_and_whole_ones() -> None:
    assert stages.accelerators_fit(1, 300, 1, 300)  # a share fits the used accelerator with 300 free
    assert stages.accelerators_fit(1, 0, 1, 300)  # or breaks a whole one
    assert not stages.accelerators_fit(0, 200, 1, 300)
    assert stages.accelerators_fit(1, 300, 1, W) and not stages.accelerators_fit(1, 300, 2, W)
    assert stages.accelerators_fit(0, 0, 0, W)


def test_verdict_reports_the_first_failing_filter() -> None:
    ok = dict(
        healthy=1,
        arch_ok=True,
        model_ok=True,
        province_ok=True,
        rtt=4.0,
        tier_ms=5.0,
        cpu_free=8000,
        mem_free=1024,
        whole_free=2,
        best_share=0,
        cpu=4000,
        mem=512,
        count=1,
        milli=W,
    )
    assert stages.verdict(**ok) == Verdict.FEASIBLE
    for change, expected in [
        (dict(healthy=0, arch_ok=False), Verdict.UNHEALTHY),
        (dict(model_ok=False, province_ok=False), Verdict.ARCHITECTURE),
        (dict(province_ok=False, rtt=9.0), Verdict.RESIDENCY),
        (dict(rtt=9.0, cpu_free=0), Verdict.LATENCY),
        (dict(tier_ms=0.0, rtt=99.0), Verdict.FEASIBLE),  # no tier: any distance
        (dict(mem_free=100), Verdict.CAPACITY),
        (dict(whole_free=0, best_share=900), Verdict.CAPACITY),  # a whole one is asked for
    ]:
        assert stages.verdict(**{**ok, **change}) == expected, change


def test_cost_is_share_of_the_hourly_rate_plus_transfer() -> None:
    assert stages.share(8, 128000, 8000, 2, W) == 0.25
    assert stages.share(8, 128000, 8000, 1, 500) == 0.0625
    assert stages.share(0, 128000, 32000, 0, W) == 0.25
    assert stages.cost(0.25, 2.0, 10.0, 3.0, 0.5) == 0.25 * 2.0 * 10.0 + 1.5


def _table(rows: list[list[int]], n_acc: int = 4) -> tuple[np.ndarray, np.ndarray]:
    ints = np.zeros((len(rows), stages.INT_FIELDS), dtype=np.int64)
    acc = np.zeros((len(rows), 16), dtype=np.int64)
    for i, free in enumerate(rows):
        ints[i, Int.N_ACC] = n_acc
        ints[i, Int.CPU_FREE] = ints[i, Int.MEM_FREE] = 4000
        acc[i, : len(free)] = free
        stages.summarise_accelerators(i, ints, acc)
    return ints, acc


def _load(*shapes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """A workload of equally common shapes (cpu, mem, count, milli[, models]: any when not given)."""
    return np.array([(*shape, -1)[: stages.SHAPE_FIELDS] for shape in shapes], dtype=np.int64), np.ones(len(shapes))


def _memo() -> tuple[np.ndarray, np.ndarray, int]:
    """An empty table of remembered answers, and a workload version."""
    return np.zeros(64, dtype=np.uint64), np.zeros(64), 1


def test_unusable_is_the_free_capacity_the_workload_cannot_use() -> None:
    ints, acc = _table([[W, 600, 400, 0]])
    halves = _load((0, 0, 1, 500))  # only 1000 and 600 can take a half: 400 is lost
    assert stages.unusable(0, ints, acc, 4000, 4000, *halves) == 0.4
    wholes = _load((0, 0, 2, W))  # two whole ones: none here, so all 2000 free is lost
    assert stages.unusable(0, ints, acc, 4000, 4000, *wholes) == 2.0
    assert stages.unusable(0, ints, acc, 100, 4000, *_load((1000, 0, 1, 100))) == 2.0  # too little CPU
    both = _load((0, 0, 1, 500), (0, 0, 2, W))
    assert stages.unusable(0, ints, acc, 4000, 4000, *both) == (0.4 + 2.0) / 2


def test_a_node_is_measured_against_the_shapes_that_may_run_on_its_model() -> None:
    ints, acc = _table([[W, 600, 400, 0]])
    ints[0, Int.MODEL] = 3
    assert stages.unusable(0, ints, acc, 4000, 4000, *_load((0, 0, 1, 500, 1 << 3))) == 0.4  # its own model
    assert stages.unusable(0, ints, acc, 4000, 4000, *_load((0, 0, 1, 500, (1 << 2) | (1 << 5)))) == 0.0
    assert stages.unusable(0, ints, acc, 4000, 4000, *_load((0, 0, 1, 500, -1))) == 0.4  # any model
    elsewhere_too = _load((0, 0, 1, 500, -1), (0, 0, 2, W, 1 << 2))  # wants two whole G2s: left out here
    assert stages.unusable(0, ints, acc, 4000, 4000, *elsewhere_too) == 0.4
    ints[0, Int.MODEL] = stages.ANY_MODEL_BIT  # ids past the bits are in every set
    assert stages.unusable(0, ints, acc, 4000, 4000, *_load((0, 0, 1, 500, 1 << 3))) == 0.4
    key = stages.state_key(0, ints, 0, 0, 1, 500, 1, (8, 8))
    ints[0, Int.MODEL] = 3
    assert stages.state_key(0, ints, 0, 0, 1, 500, 1, (8, 8)) != key  # the remembered answer is per model


def test_a_request_naming_chip_models_is_learnt_as_a_shape_bound_to_them(network) -> None:
    d = _dispatcher(network, 50)
    models = d.nodes.models
    named = models.names[:2]
    assert models.bits([]) == stages.ANY_MODELS
    assert models.bits(named) == (1 << models.ids[named[0]]) | (1 << models.ids[named[1]])
    assert models.bits(["no-such-chip"]) == 0  # runs nowhere known
    d.decide(_request(chip_models=named[:1]))
    bound = d.load.shapes[:, stages.Shape.MODELS] == 1 << models.ids[named[0]]
    assert bound.any() and d.load.weights[bound].sum() > 0  # the first request is in the first snapshot


def test_fragmentation_puts_a_share_where_it_loses_least() -> None:
    ints, acc = _table([[W, 600, 300, 0]])
    chosen = np.zeros(1, dtype=np.int64)
    load = _load((0, 0, 1, 500), (0, 0, 1, W))
    delta = stages.fragmentation(0, ints, acc, 0, 0, 1, 300, *load, *_memo(), chosen)
    assert chosen[0] == 2 and delta < 0  # filling the 300 removes a fragment; breaking the whole one adds one
    assert acc[0, :4].tolist() == [W, 600, 300, 0]  # scoring leaves the node as it was
    whole = np.zeros(1, dtype=np.int64)
    delta = stages.fragmentation(0, ints, acc, 0, 0, 1, W, *load, *_memo(), whole)
    assert delta == 0.0 and whole[0] == 0  # 0.6 either way


def test_a_placement_lowers_fragmentation_by_at_most_the_accelerators_it_takes() -> None:
    """The floors `choose` prunes by, across random nodes, workloads and tasks."""
    rng = random.Random(7)
    levels = [0, 100, 250, 500, 750, W]
    for _ in range(2000):
        ints, acc = _table([[rng.choice(levels) for _ in range(4)]])
        ints[0, Int.CPU_FREE], ints[0, Int.MEM_FREE] = rng.randrange(0, 8000), rng.randrange(0, 8000)
        shapes = [(rng.randrange(0, 6000), rng.randrange(0, 6000), rng.choice([0, 1, 1, 2, 4]), 0) for _ in range(3)]
        load = _load(*[(c, m, n, rng.choice([250, 500, W]) if n == 1 else W) for c, m, n, _ in shapes])
        count = rng.choice([0, 1, 1, 2])
        milli = rng.choice([100, 300, 500, W]) if count == 1 else W
        if not stages.accelerators_fit(ints[0, Int.WHOLE_FREE], ints[0, Int.BEST_SHARE], count, milli):
            continue
        cpu = rng.randrange(0, int(ints[0, Int.CPU_FREE]) + 1)
        now = stages.unusable(0, ints, acc, int(ints[0, Int.CPU_FREE]), int(ints[0, Int.MEM_FREE]), *load)
        delta = stages.fragmentation(0, ints, acc, cpu, 0, count, milli, *load, *_memo(), np.zeros(4, dtype=np.int64))
        assert delta >= -count * milli / W - 1e-12
        assert delta >= -now - 1e-12  # no node loses less than nothing
        if milli == W and count:  # whole accelerators lower only the loss of the shapes that cannot run
            assert delta >= -count * now * W / acc[0, :4].sum() - 1e-12


def test_a_node_that_cannot_beat_the_runner_up_or_the_best_local_is_beaten() -> None:
    assert not stages.beaten(5.0, False, -1, 0.0, -1, 0.0)  # no runner-up yet: anything may be it
    assert not stages.beaten(5.0, False, 3, 5.0, -1, 0.0)  # a tie may still win on its lower row
    assert stages.beaten(5.1, False, 3, 5.0, -1, 0.0)
    assert not stages.beaten(5.1, True, 3, 5.0, -1, 0.0)  # in the origin hub, with no local yet
    assert not stages.beaten(5.1, True, 3, 5.0, 4, 6.0)  # it may be the best local
    assert stages.beaten(6.1, True, 3, 5.0, 4, 6.0)


def test_reserve_best_fits_a_share_and_release_restores() -> None:
    ints, acc = _table([[W, 600, 400, 0]])
    assert (ints[0, Int.WHOLE_FREE], ints[0, Int.BEST_SHARE]) == (1, 600)
    chosen = np.zeros(1, dtype=np.int64)
    n = stages.reserve(0, ints, acc, 1000, 10, 1, 400, *_load((0, 0, 1, 500)), *_memo(), chosen)
    assert n == 1 and chosen[0] == 2  # the fullest accelerator that still holds 400
    assert acc[0, :4].tolist() == [W, 600, 0, 0] and ints[0, Int.CPU_FREE] == 3000
    stages.release(0, ints, acc, 1000, 10, 400, chosen, n)
    assert acc[0, :4].tolist() == [W, 600, 400, 0] and ints[0, Int.CPU_FREE] == 4000
    assert ints[0, Int.MEM_FREE] == 4000


def test_reserve_takes_whole_accelerators_in_order() -> None:
    ints, acc = _table([[W, 300, W, W]])
    chosen = np.zeros(2, dtype=np.int64)
    assert stages.reserve(0, ints, acc, 0, 0, 2, W, *_load((0, 0, 1, W)), *_memo(), chosen) == 2
    assert chosen.tolist() == [0, 2] and ints[0, Int.WHOLE_FREE] == 1


@pytest.fixture(scope="module")
def network():
    return load_network()


def _dispatcher(network, total: int = 400, **options) -> Dispatcher:
    d = Dispatcher(network, **options)
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


def test_work_without_an_accelerator_needs_no_share(network) -> None:
    """A CPU-only task (openb's pods without a GPU carry gpu_milli=0) is placed and holds no accelerator."""
    spec, out = _dispatcher(network, 100).decide(_request(accelerators=0, accelerator_milli=0, chip_archs=["x86_64"]))
    assert spec is PLACEMENT, out.get("reason")
    assert out["accelerator_indices"] == [] and out["cpu_milli"] == 8000


def test_rejection_counts_what_each_filter_removed(network) -> None:
    d = _dispatcher(network, 200)
    spec, out = d.decide(_request(latency_tier_ms=1, allowed_provinces=["Gansu"]))
    assert spec is REJECTION and out["reason_code"] == "NO_FEASIBLE_NODE"
    assert sum(out["filtered"].values()) == 200
    assert out["filtered"]["wrong architecture"] > 0 and out["filtered"]["data residency"] > 0
    assert out["reason"].startswith("0/200 nodes: ")


def test_the_layouts_are_declared_once_and_everything_reads_them(network) -> None:
    """Columns and verdicts are numbered in the order declared; the table, the pass and the rejection follow."""
    for layout in (stages.Int, stages.Float, stages.Ask, Verdict):
        assert [int(c) for c in layout] == list(range(len(layout))) and all(c.meaning for c in layout)
    d = _dispatcher(network, 50)
    assert d.nodes.ints.shape[1] == len(Int) and d.nodes.floats.shape[1] == stages.Float.CU + len(stages.PRECISIONS)
    spec, out = d.decide(_request(latency_tier_ms=1, allowed_provinces=["Gansu"]))
    assert spec is REJECTION and set(out["filtered"]) <= {v.meaning for v in Verdict if v != Verdict.FEASIBLE}


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


def test_the_counterfactuals_carbon_is_counted_as_the_placements_is(network) -> None:
    from suanwang.dispatcher.core import carbon_kg, demand_of, explain, timing_of

    d, now = _dispatcher(network, 200), now_ms()
    req = _request(input_gb=1.0, deadline=now + 30 * 3_600_000, duration_s=7200.0)  # a deferred start too
    dem, w = demand_of(d.nodes, req, 1.0), timing_of(d.nodes, req, now, d.carbon_price)
    for row in range(0, d.nodes.size, 7):
        assert carbon_kg(d.nodes, row, dem.ask, w) == explain(d.nodes, row, dem.ask, w, 0.1)[0]["carbon_kg"]
    _, out = d.decide(req, now)
    assert out["local_node_id"] is not None
    local = d.nodes.row[out["local_node_id"]]
    assert out["saved_carbon_kg"] == carbon_kg(d.nodes, local, dem.ask, w) - out["carbon_kg"]


def test_redelivered_request_gets_the_same_decision_and_reserves_once(network) -> None:
    d = _dispatcher(network)
    first = d.decide(_request())
    free = d.nodes.acc_free.copy()
    assert d.decide(_request()) == first  # the same record, kept pickled
    assert np.array_equal(free, d.nodes.acc_free)


def test_only_the_newest_decisions_are_remembered(network) -> None:
    d = _dispatcher(network, remembered_decisions=3)
    decided = [d.decide(_request(task_id=f"t{i}")) for i in range(5)]
    assert list(d.decisions) == ["t2", "t3", "t4"]
    assert d.decide(_request(task_id="t4")) == decided[4]  # still answered the same way
    assert len(d.reservations) == 5  # forgetting a decision frees nothing


def test_random_stream_never_overcommits_and_release_restores_everything(network) -> None:
    d = _dispatcher(network, 300)
    before = (d.nodes.ints.copy(), d.nodes.acc_free.copy())
    gen = TaskGenerator(network, random.Random(3))
    placed = []
    for _ in range(1500):
        spec, out = d.decide(gen.next(now_ms()))
        if spec is PLACEMENT:
            placed.append(out)
    assert placed
    assert (d.nodes.column(Int.CPU_FREE) >= 0).all() and (d.nodes.column(Int.MEM_FREE) >= 0).all()
    assert (d.nodes.acc_free >= 0).all() and (d.nodes.acc_free <= W).all()
    for p in placed:
        assert d.release(p["task_id"])
    after = (d.nodes.ints, d.nodes.acc_free)
    for a, b in zip(before, after, strict=True):
        assert np.array_equal(a, b)


def test_energy_is_reported_even_when_power_is_free(network) -> None:
    d = _dispatcher(network)
    hour = now_ms() - now_ms() % 3_600_000
    for province in network.provinces:
        d.grid_signal(dict(province=province, hour_start=hour, price_yuan_kwh=0.0, green_share=0.5))
    _, out = d.decide(_request())
    assert out["energy_cost"] == 0 and out["energy_kwh"] > 0


def test_unhealthy_nodes_are_skipped(network) -> None:
    d = _dispatcher(network, 100)
    for node_id in d.nodes.node_ids:
        d.set_health(node_id, False, now_ms())
    _, out = d.decide(_request())
    assert out["reason_code"] == "NO_FEASIBLE_NODE" and out["filtered"] == {"unhealthy": 100}


def test_grid_signals_apply_in_their_hour_only(network) -> None:
    d = _dispatcher(network)
    hour = now_ms() - now_ms() % 3_600_000
    for province in network.provinces:  # the next hour is dear; this one is not signalled
        d.grid_signal(dict(province=province, hour_start=hour + 3_600_000, price_yuan_kwh=9.0, green_share=0.0))
    _, now = d.decide(_request(task_id="now"))
    assert now["energy_cost"] == pytest.approx(now["energy_kwh"] * network.provinces[now["province"]].flat_price)
    for province in network.provinces:
        d.grid_signal(dict(province=province, hour_start=hour, price_yuan_kwh=2.0, green_share=1.0))
    _, later = d.decide(_request(task_id="later"))
    assert later["energy_cost"] == pytest.approx(later["energy_kwh"] * 2.0) and later["carbon_kg"] == 0


@pytest.mark.slow  # seconds of subprocesses or timeouts: make test runs it, make check does not
def test_the_numpy_oracle_and_the_interpreted_kernel_decide_exactly_as_the_compiled_pass(network) -> None:
    from rich.console import Console

    from suanwang.benches.dispatch import bench_dispatch

    figures = bench_dispatch(nodes=600, tasks=400, python_tasks=400, seed=11, console=Console(quiet=True))
    assert figures["identical"] is True
    assert figures["python_tasks"] == 400 and 0 < figures["placed"] < 400  # the table fills: rejections too
    assert figures["numba_p50_us"] > 0 and figures["python_over_numba_p50"] > 0
    assert figures["numpy_tasks"] == 400


def test_the_dispatch_bench_can_check_only_the_first_decisions_by_numpy(network) -> None:
    from rich.console import Console

    from suanwang.benches.dispatch import bench_dispatch

    figures = bench_dispatch(
        nodes=200, tasks=120, python_tasks=5, seed=3, console=Console(quiet=True), window=10, numpy_tasks=30
    )
    assert figures["numpy_tasks"] == 30 and figures["python_tasks"] == 5 and figures["tasks"] == 120
    assert figures["identical"] is True


def test_references_break_ties_to_the_lowest_row(network) -> None:
    from suanwang.dispatcher.core import Choice, choose, demand_of, timing_of
    from suanwang.dispatcher.reference import choose_numpy

    d = Dispatcher(network)
    twin = registration(scaled_nodes(network, 100)[0], network)
    for k in range(3):  # identical nodes: identical scores
        d.nodes.register({**twin, "node_id": f"twin{k}"})
    t = d.nodes
    req = _request(chip_archs=[twin["chip_arch"]], accelerators=0, cpu_milli=1000)
    dem = demand_of(t, req, 0.05)
    w = timing_of(t, req, now_ms(), 0.1)
    assert int(choose(t, dem, Choice(), w, d.load).picks[0]) == 0
    args = (t.transfer_price, t.rtt, w.per_kwh, dem.arch_ok, dem.model_ok, dem.province_ok, dem.ask, t.acc_free)
    args += (d.load.shapes, d.load.weights)
    assert choose_numpy(t.ints, t.floats, *args) == 0


def test_a_placement_never_started_lapses_and_frees_its_capacity(network) -> None:
    d = Dispatcher(network, start_timeout_s=60)
    for spec in scaled_nodes(network, 100):
        d.nodes.register(registration(spec, network))
    free = d.nodes.ints.copy()
    now = now_ms()
    _, idle = d.decide(_request(task_id="idle"), now)
    _, busy = d.decide(_request(task_id="busy"), now)
    d.started("busy", now)
    assert d.lapse(now + 59_000) == []
    assert d.lapse(now + 61_000) == [("idle", idle["node_id"])]
    assert "idle" not in d.reservations and "busy" in d.reservations
    assert d.release("busy") and np.array_equal(d.nodes.ints, free)


def _cheap_hour_at(d: Dispatcher, network, hour: int, cheap_k: int) -> None:
    for province in network.provinces:
        for k in range(30):
            cheap = k == cheap_k
            d.grid_signal(
                dict(
                    province=province,
                    hour_start=hour + k * 3_600_000,
                    price_yuan_kwh=0.1 if cheap else 1.0,
                    green_share=0.9 if cheap else 0.2,
                )
            )


def test_work_with_a_deadline_is_deferred_to_the_cheapest_hours_that_meet_it(network) -> None:
    d = _dispatcher(network, hold_price=0.0)  # holding capacity idle costs nothing here
    hour = 1_795_000_000_000 - 1_795_000_000_000 % 3_600_000
    now = hour + 600_000
    _cheap_hour_at(d, network, hour, 6)
    shiftable = _request(task_id="night", duration_s=3600.0, deadline=now + 10 * 3_600_000)
    _, late = d.decide(shiftable, now)
    assert late["start_at"] == hour + 6 * 3_600_000
    assert late["energy_cost"] == pytest.approx(late["energy_kwh"] * 0.1)
    assert d.unstarted["night"] == late["start_at"] + d.start_timeout_ms
    _, urgent = d.decide(_request(task_id="soon", duration_s=3600.0, deadline=now + 3 * 3_600_000), now)
    assert urgent["start_at"] == now and urgent["energy_cost"] == pytest.approx(urgent["energy_kwh"] * 1.0)
    _, plain = d.decide(_request(task_id="plain", duration_s=2 * 3600.0), now)
    assert plain["start_at"] == now


def test_a_start_is_deferred_only_when_the_saving_pays_for_the_capacity_held_idle(network) -> None:
    hour = 1_795_000_000_000 - 1_795_000_000_000 % 3_600_000
    now = hour + 600_000
    for cheap_k, deferred in ((6, False), (1, True)):  # 0.9 yuan/kWh saved against 0.5 per hour held
        d = _dispatcher(network, hold_price=0.5)
        _cheap_hour_at(d, network, hour, cheap_k)
        _, out = d.decide(_request(task_id="night", duration_s=3600.0, deadline=now + 10 * 3_600_000), now)
        assert out["start_at"] == (hour + cheap_k * 3_600_000 if deferred else now), cheap_k


def test_a_restored_placement_holds_its_resources_and_lapses_unless_started(network) -> None:
    d = _dispatcher(network)
    free = d.nodes.ints.copy()
    _, placed = d.decide(_request(task_id="p"), now_ms())
    after = Dispatcher(network, start_timeout_s=60)  # a restarted dispatcher
    for spec in scaled_nodes(network, 400):
        after.nodes.register(registration(spec, network))
    after.restore(PLACEMENT, placed, holds=True, started_ms=None)
    assert np.array_equal(after.nodes.ints, d.nodes.ints) and np.array_equal(after.nodes.acc_free, d.nodes.acc_free)
    assert after.decide(_request(task_id="p")) == (PLACEMENT, placed)
    assert after.lapse(placed["start_at"] + 61_000) == [("p", placed["node_id"])]
    assert np.array_equal(after.nodes.ints, free)
    later = _dispatcher(network)
    later.restore(PLACEMENT, placed, holds=True, started_ms=now_ms())
    assert "p" in later.reservations and later.unstarted == {}
