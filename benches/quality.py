"""`suanwang bench quality`: the default policy against baselines over a simulated day, and an LP bound.

Every policy sees the same nodes, grid and requests, places only where the filters allow and frees a
node when a task's duration has passed. Costs are the dispatcher's cost model (compute + energy +
transfer + carbon); violations are counted by an independent check of each placement against the
request and the node's capacity. The bound is the LP relaxation of placing one batch on the empty
table (HiGHS through SciPy): no assignment of that batch can cost less.

`default_priced` is the default policy under the market (dispatcher/market.py), prices updated every
ten simulated minutes. Its cost is counted at base prices, like every other policy's, so the comparison is
of resources used; `billed_cost` adds what the market charged on top. Load spread is sampled at each price
update: the peak share of any hub's class promised, the share of samples above 90 % (where queues form) and
the 90th percentile.
"""

from __future__ import annotations

import heapq
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import track
from scipy.optimize import linprog
from scipy.sparse import coo_matrix, vstack

from suanwang.benches.dispatch import dispatcher_on
from suanwang.clock import epoch_ms
from suanwang.dispatcher import stages as s
from suanwang.dispatcher.batch import deferrable
from suanwang.dispatcher.core import (
    Choice,
    Demand,
    Dispatcher,
    Reservation,
    Timing,
    choose,
    demand_of,
    explain,
    reserve,
    timing_of,
)
from suanwang.dispatcher.market import PriceSetter, utilisation
from suanwang.dispatcher.stages import Ask, Int
from suanwang.dispatcher.state import HOUR_MS, NodeTable
from suanwang.simulator.workload import TaskGenerator, grid_signal, registration
from suanwang.topology import Network, load_network, scaled_nodes

DAY_START_MS = 1_795_017_600_000  # 2026-11-18 00:00 China Standard Time
MARKET_STEP_MS = 10 * 60_000  # simulated minutes between two price updates (and utilisation samples)
HOT = 0.9  # a hub's class above this share promised is where queues form
PARTS = ("compute_cost", "energy_cost", "transfer_cost", "carbon_cost", "energy_kwh", "carbon_kg")
Picker = Callable[[NodeTable, Demand, Timing, np.ndarray], int]


def _local_first(t: NodeTable, d: Demand, w: Timing, ok: np.ndarray) -> int:
    """The nearest feasible node to the task's origin (its own hub first), lowest row on ties."""
    rtt = t.rtt[int(d.ask[Ask.ORIGIN]), t.column(Int.HUB)]
    return int(np.argmin(np.where(ok, rtt, np.inf)))


def _cheapest_power(t: NodeTable, d: Demand, w: Timing, ok: np.ndarray) -> int:
    """The feasible node in the province with the lowest power price over the hours the task runs."""
    price = w.horizon.mean("price", 0, w.hours)  # baselines start at once
    return int(np.argmin(np.where(ok, price[t.column(Int.PROVINCE)], np.inf)))


class _Random:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def __call__(self, t: NodeTable, d: Demand, w: Timing, ok: np.ndarray) -> int:
        return int(self.rng.choice(np.flatnonzero(ok)))


class _RoundRobin:
    def __init__(self) -> None:
        self.last = -1

    def __call__(self, t: NodeTable, d: Demand, w: Timing, ok: np.ndarray) -> int:
        rows = np.flatnonzero(ok)
        after = rows[rows > self.last]
        self.last = int(after[0] if len(after) else rows[0])
        return self.last


@dataclass
class Tally:
    """What a policy did over the day."""

    tasks: int = 0
    placed: int = 0
    total_cost: float = 0.0
    transfer_cost: float = 0.0
    energy_kwh: float = 0.0
    carbon_kg: float = 0.0
    violations: int = 0
    billed: float = 0.0  # what tenants pay: compute at the market's index (the cost above is at base prices)
    used: dict[str, list[int]] = field(default_factory=dict)
    samples: list[np.ndarray] = field(default_factory=list)  # utilisation of every hub and class, per step

    def summary(self) -> dict[str, Any]:
        load = np.concatenate(self.samples) if self.samples else np.zeros(1)
        return {
            "total_cost": self.total_cost,
            "cost_per_task": self.total_cost / max(self.placed, 1),
            "transfer_cost": self.transfer_cost,
            "energy_kwh": self.energy_kwh,
            "carbon_kg": self.carbon_kg,
            "acceptance": self.placed / max(self.tasks, 1),
            "violations": self.violations,
            "billed_cost": self.billed,
            "peak_utilisation": float(load.max()),
            "hot_share": float((load > HOT).mean()),
            "utilisation_p90": float(np.quantile(load, 0.9)),
        }


def _violations(t: NodeTable, row: int, req: dict[str, Any], capacity: np.ndarray) -> int:
    """1 if placing `req` on `row` breaks a constraint, checked from the request and the node's facts."""
    hub, province = t.hubs.names[t.column(Int.HUB)[row]], t.provinces.names[t.column(Int.PROVINCE)[row]]
    arch, model = t.archs.names[t.column(Int.ARCH)[row]], t.models.names[t.column(Int.MODEL)[row]]
    tier, origin = req["latency_tier_ms"], t.hubs.ids[req["origin_hub"]]
    broken = [
        arch not in req["chip_archs"],
        bool(req["chip_models"]) and model not in req["chip_models"],
        bool(req["allowed_provinces"]) and province not in req["allowed_provinces"],
        bool(tier) and t.rtt[origin, t.hubs.ids[hub]] > tier,
        bool((capacity < 0).any()),
    ]
    return int(any(broken))


def _run_day(
    network: Network,
    nodes: int,
    requests: list[tuple[int, dict[str, Any]]],
    grid: list[dict[str, Any]],
    picker: Picker | None,
    console: Console,
    label: str,
    priced: bool = False,
) -> Tally:
    """One policy through the day; `picker` None is the dispatcher's own decision, `priced` with the
    market's prices updated every MARKET_STEP_MS as the national dispatcher does."""
    dispatcher = Dispatcher(network)
    t = dispatcher.nodes
    market = PriceSetter(network.market, t)
    next_step = DAY_START_MS
    for spec in scaled_nodes(network, nodes):
        t.register(registration(spec, network))
    for signal in grid:
        dispatcher.grid_signal(signal)
    tally = Tally(tasks=len(requests))
    running: list[tuple[int, str]] = []
    free = np.stack(
        [t.column(Int.CPU_FREE).copy(), t.column(Int.MEM_FREE).copy(), t.column(Int.N_ACC) * s.WHOLE], axis=1
    )
    steps = track(requests, description=label, console=console, transient=True, disable=not console.is_terminal)
    for now, req in steps:
        while running and running[0][0] <= now:
            task_id = heapq.heappop(running)[1]
            free[dispatcher.reservations[task_id].row] += tally.used.pop(task_id)
            dispatcher.release(task_id)
        if now >= next_step:
            next_step += MARKET_STEP_MS
            tally.samples.append(np.array([u for u, _, _ in utilisation(t).values()]))
            for price in market.step() if priced else ():
                t.set_price(price["hub"], price["compute_class"], price["price_index"])
        d = demand_of(t, req, dispatcher.fragmentation_weight if picker is None else 0.0)
        end = now + int(1000 * (req["duration_s"] or 3600))
        if picker is None:
            _, record = dispatcher.decide(req, now)
            if priced:
                market.observe(req, record)
            if "node_id" not in record:
                continue
            row = t.row[record["node_id"]]
            parts = {k: record[k] for k in PARTS}
            index = record["price_index"]
            end += epoch_ms(record["start_at"]) - now  # deferred: capacity is held from now until it ends
        else:  # baselines do not shift work in time
            w = timing_of(t, {**req, "deadline": None}, now, dispatcher.carbon_price)
            ok = np.isfinite(_costs(dispatcher, d, w))
            if not ok.any():
                continue
            row = picker(t, d, w, ok)
            chosen = reserve(t, row, d, dispatcher.load)
            dispatcher.keep(req["task_id"], Reservation(row, d.cpu, d.mem, d.acc_milli, chosen))
            parts = explain(t, row, d.ask, w, dispatcher.carbon_price)[0]
            index = 1.0  # baselines run without the market
        taken = [d.cpu, d.mem, d.acc_count * d.acc_milli]
        free[row] -= taken
        tally.used[req["task_id"]] = taken
        tally.violations += _violations(t, row, req, free[row])
        tally.placed += 1
        billed = parts["compute_cost"] + parts["energy_cost"] + parts["transfer_cost"] + parts["carbon_cost"]
        tally.billed += billed
        tally.total_cost += billed - parts["compute_cost"] * (1 - 1 / index)  # compute at its base price
        tally.transfer_cost += parts["transfer_cost"]
        tally.energy_kwh += parts["energy_kwh"]
        tally.carbon_kg += parts["carbon_kg"]
        heapq.heappush(running, (end, req["task_id"]))
    return tally


def _day(network: Network, tasks: int, seed: int) -> tuple[list[tuple[int, dict[str, Any]]], list[dict[str, Any]]]:
    """Requests spread over one day, and every province's grid signal for each of its hours."""
    rng = random.Random(seed)
    gen = TaskGenerator(network, random.Random(rng.random()))
    requests = []
    for k in range(tasks):
        now = DAY_START_MS + k * (24 * HOUR_MS) // tasks
        requests.append((now, gen.next(now)))
    sites = {(c.province, hub_id) for hub_id, h in network.hubs.items() for c in h.clusters.values()}
    sites |= {(h.city.province, hub_id) for hub_id, h in network.hubs.items()}
    grid = [
        grid_signal(network, p, hub, DAY_START_MS + h * HOUR_MS, rng) for h in range(25) for p, hub in sorted(sites)
    ]
    return requests, grid


def lower_bound_gap(network: Network, nodes: int, batch: int, seed: int, time_limit_s: float) -> dict[str, Any]:
    """One saturating batch on the empty table, decided by the dispatcher (urgent work greedily, in order, then
    the work that can wait together, as one window of the batch path) and by the greedy path alone; each set
    of placed tasks against the LP relaxation's optimum for placing those same tasks on the same capacity."""
    gen = TaskGenerator(network, random.Random(seed))
    now = DAY_START_MS + 3 * HOUR_MS
    requests = [gen.next(now) for _ in range(batch)]
    greedy = dispatcher_on(network, nodes)
    by_greedy = [greedy.decide(req, now) for req in requests]
    ours = dispatcher_on(network, nodes)
    urgent = [req for req in requests if not deferrable(req)]
    by_ours = [ours.decide(req, now) for req in urgent]
    started = time.perf_counter()
    by_ours += ours.decide_batch([req for req in requests if deferrable(req)], now, time_limit_s)
    batch_s = time.perf_counter() - started
    out: dict[str, Any] = {"batch_tasks": batch, "batch_deferrable": batch - len(urgent), "batch_seconds": batch_s}
    for name, decided in (("greedy", by_greedy), ("batch", by_ours)):
        placed = {r["task_id"]: r["total_cost"] for _, r in decided if "total_cost" in r}
        bound = _lp_bound(network, nodes, [req for req in requests if req["task_id"] in placed], now)
        cost = sum(placed.values())
        prefix = "" if name == "batch" else "greedy_"
        out |= {
            f"{prefix}batch_placed": len(placed),
            f"{prefix}batch_cost": cost,
            f"{prefix}batch_lower_bound": bound,
            f"{prefix}lower_bound_gap": None if bound is None else (cost - bound) / bound,
        }
    return out


def _costs(dispatcher: Dispatcher, d: Demand, w: Timing) -> np.ndarray:
    """Every node's cost for the demand as the compiled pass scores it (infinite where it is not feasible)."""
    scores = np.full(dispatcher.nodes.size, np.inf)
    choose(dispatcher.nodes, d, Choice(), w, dispatcher.load, scores)
    return scores


def _lp_bound(network: Network, nodes: int, placed: list[dict[str, Any]], now: int) -> float | None:
    """The LP relaxation's least cost for placing every one of `placed` on the empty table (every feasible node
    a candidate); None if HiGHS finds no optimum."""
    dispatcher = dispatcher_on(network, nodes)
    t = dispatcher.nodes
    demands = [demand_of(t, req, 0.0) for req in placed]
    var_task, var_node, costs = [], [], []
    for k, req in enumerate(placed):
        d, w = demands[k], timing_of(t, req, now, dispatcher.carbon_price, dispatcher.hold_price)
        cost = _costs(dispatcher, d, w)
        feasible = np.flatnonzero(np.isfinite(cost))
        var_task += [k] * len(feasible)
        var_node += feasible.tolist()
        costs += cost[feasible].tolist()
    tasks, nodes_of = np.array(var_task), np.array(var_node)
    n_vars, columns = len(costs), np.arange(len(costs))
    one_each = coo_matrix((np.ones(n_vars), (tasks, columns)), shape=(len(placed), n_vars))
    needs = [
        ([d.cpu for d in demands], t.column(Int.CPU_FREE)),
        ([d.mem for d in demands], t.column(Int.MEM_FREE)),
        ([d.acc_count * d.acc_milli for d in demands], t.column(Int.N_ACC) * s.WHOLE),
    ]
    capacity = vstack(
        [
            coo_matrix((np.array(need, dtype=float)[tasks], (nodes_of, columns)), shape=(t.size, n_vars))
            for need, _ in needs
        ]
    )
    result = linprog(
        np.array(costs),
        A_ub=capacity.tocsr(),
        b_ub=np.concatenate([h for _, h in needs]).astype(float),
        A_eq=one_each.tocsr(),
        b_eq=np.ones(len(placed)),
        bounds=(0, 1),
        method="highs",
    )
    return float(result.fun) if result.status == 0 else None


def bench_quality(
    nodes: int, tasks: int, batch: int, batch_nodes: int, seed: int, console: Console, time_limit_s: float = 2.0
) -> dict[str, Any]:
    """Every policy over the same day, then the default policy's gap to the bound on a saturating batch."""
    network = load_network()
    requests, grid = _day(network, tasks, seed)
    pickers: dict[str, Picker | None] = {
        "default": None,
        "default_priced": None,
        "local_first": _local_first,
        "cheapest_power": _cheapest_power,
        "random": _Random(seed),
        "round_robin": _RoundRobin(),
    }
    policies = {
        name: _run_day(network, nodes, requests, grid, picker, console, name, priced=name == "default_priced").summary()
        for name, picker in pickers.items()
    }
    return {
        "nodes": nodes,
        "tasks": tasks,
        "default_policy": "default",
        "policies": policies,
        **lower_bound_gap(network, batch_nodes, batch, seed, time_limit_s),
    }
