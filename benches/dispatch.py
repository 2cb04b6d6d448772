"""Benchmarks that print figures measured in one run, with the ratios between them (`suanwang bench`)."""

from __future__ import annotations

import gc
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import track

from suanwang.clock import now_ms
from suanwang.dispatcher.batch import deferrable
from suanwang.dispatcher.core import (
    FRAGMENTATION_WEIGHT,
    Choice,
    Demand,
    Dispatcher,
    Timing,
    choose,
    demand_of,
    reserve,
    timing_of,
    warm_up,
)
from suanwang.dispatcher.reference import choose_numpy, reserve_numpy
from suanwang.dispatcher.shapes import Shapes
from suanwang.dispatcher.stages import Tally
from suanwang.dispatcher.state import NodeTable
from suanwang.errors import SuanwangError
from suanwang.lifeline import die_with_parent
from suanwang.settings import Settings
from suanwang.simulator.workload import TaskGenerator, registration
from suanwang.topology import Network, load_network, scaled_nodes

Decision = tuple[int, tuple[int, ...]]  # (node row or -1, accelerator indices)


def _steps(items: list[Any], label: str, console: Console) -> Iterable[Any]:
    return track(items, description=label, console=console, transient=True, disable=not console.is_terminal)


def _percentiles(seconds: list[float]) -> tuple[float, float]:
    us = np.array(seconds) * 1e6
    return float(np.percentile(us, 50)), float(np.percentile(us, 99))


def _timed(
    requests: list[dict[str, Any]], decide: Callable[[dict[str, Any]], Any], label: str, console: Console
) -> tuple[list[Any], list[float]]:
    """Each decision and its time, with the garbage collector held off as `timeit` does."""
    decisions, seconds = [], []
    gc.collect()
    gc.disable()
    try:
        for req in _steps(requests, label, console):
            started = time.perf_counter()
            decisions.append(decide(req))
            seconds.append(time.perf_counter() - started)
    finally:
        gc.enable()
    return decisions, seconds


def workload(nodes: int, seed: int, tasks: int, now: int) -> tuple[Network, NodeTable, list[dict[str, Any]]]:
    """The bench's network, table of `nodes` nodes and `tasks` requests: the same for the same arguments, so
    another process can rebuild them."""
    network = load_network()
    table = NodeTable(network)
    for spec in scaled_nodes(network, nodes):
        table.register(registration(spec, network))
    gen = TaskGenerator(network, random.Random(seed))
    return network, table, [gen.next(now) for _ in range(tasks)]


CARBON_PRICE = 0.1


class KernelDecisions:
    """Decides and reserves through the compiled pass on its table, learning the workload as it goes."""

    def __init__(self, table: NodeTable, now: int) -> None:
        self.table, self.now = table, now
        self.load, self.choice = Shapes(), Choice()

    def demand(self, req: dict[str, Any]) -> tuple[Demand, Timing]:
        d = demand_of(self.table, req, FRAGMENTATION_WEIGHT)
        self.load.observe(*d.shape)
        return d, timing_of(self.table, req, self.now, CARBON_PRICE)

    def __call__(self, req: dict[str, Any]) -> Decision:
        d, w = self.demand(req)
        best = int(choose(self.table, d, self.choice, w, self.load).picks[0])
        return (best, tuple(int(a) for a in reserve(self.table, best, d, self.load))) if best >= 0 else (-1, ())


def bench_dispatch(
    nodes: int,
    tasks: int,
    python_tasks: int,
    seed: int,
    console: Console,
    window: int = 25,
    numpy_tasks: int | None = None,
) -> dict[str, Any]:
    """Decision time of the compiled pass, of the NumPy oracle and of the pass's own source in the interpreter
    (JIT disabled, in a process of its own) on one workload, decisions compared.

    Each implementation starts from the same table and reserves what it places, so a difference in any
    one decision shows up in every later one. The oracles decide the first `numpy_tasks` (all by default) and
    `python_tasks` requests: at 100,000 nodes NumPy takes about 0.3 s a decision. A decision is timed from
    the request record to the reserved node: building the request's masks, filter, score, select and reserve.
    """
    now = now_ms()
    network, table, requests = workload(nodes, seed, tasks, now)
    warm_up(network)
    numpy_side = KernelDecisions(table, now)  # its demands and windows; it reserves on copies of the arrays
    np_ints, np_acc = table.ints.copy(), table.acc_free.copy()

    def numpy_decide(req: dict[str, Any]) -> Decision:
        d, w = numpy_side.demand(req)
        load = numpy_side.load
        best = choose_numpy(
            np_ints, table.floats, table.transfer_price, table.rtt, w.per_kwh, d.arch_ok, d.model_ok, d.province_ok,
            d.ask, np_acc, load.shapes, load.weights,
        )  # fmt: skip
        if best < 0:
            return -1, ()
        taken = reserve_numpy(np_ints, np_acc, best, d.cpu, d.mem, d.acc_count, d.acc_milli, load.shapes, load.weights)
        return best, tuple(taken)

    by_numpy, numpy_s = _timed(requests[:numpy_tasks], numpy_decide, "numpy", console)
    by_python, python_s = interpreted(nodes, seed, python_tasks, now)
    full_s = _full_decisions(network, nodes, requests, console)
    by_numba, numba_s = _timed(requests, KernelDecisions(table, now), "numba", console)
    identical = by_numba[: len(by_numpy)] == by_numpy and by_numba[: len(by_python)] == by_python
    numba_p50, numba_p99 = _percentiles(numba_s)
    numpy_p50, numpy_p99 = _percentiles(numpy_s)
    python_p50, python_p99 = _percentiles(python_s)
    full_p50, full_p99 = _percentiles(full_s)
    placed = sum(best >= 0 for best, _ in by_numba)
    return {
        "nodes": nodes,
        "tasks": tasks,
        "numpy_tasks": len(by_numpy),
        "python_tasks": len(by_python),
        "placed": placed,
        "rejected": tasks - placed,
        "groups": int(table.tally[Tally.LIVE]),  # groups of equal nodes the pass visits, at the end
        "identical": identical,
        "numba_p50_us": numba_p50,
        "numba_p99_us": numba_p99,
        "numba_decisions_per_s": len(numba_s) / sum(numba_s),
        "numpy_p50_us": numpy_p50,
        "numpy_p99_us": numpy_p99,
        "numpy_decisions_per_s": len(numpy_s) / sum(numpy_s),
        "python_p50_us": python_p50,
        "python_p99_us": python_p99,
        "python_decisions_per_s": len(python_s) / sum(python_s),
        "numpy_over_numba_p50": numpy_p50 / numba_p50,
        "python_over_numba_p50": python_p50 / numba_p50,
        "explained_p50_us": full_p50,
        "explained_p99_us": full_p99,
        **_batch_windows(network, nodes, requests, window, now, console),
    }


def interpreted(nodes: int, seed: int, tasks: int, now: int) -> tuple[list[Decision], list[float]]:
    """The first `tasks` decisions of the workload, and their times, by the compiled pass's source run in the
    interpreter: a process with numba's JIT disabled, so every stage is the Python numba would compile."""
    args = json.dumps({"nodes": nodes, "seed": seed, "tasks": tasks, "now": now})
    done = subprocess.run(
        [sys.executable, "-m", "suanwang.benches.dispatch", args],
        env={**os.environ, "NUMBA_DISABLE_JIT": "1"},
        capture_output=True,
        text=True,
        check=False,
        preexec_fn=die_with_parent(),
    )
    if done.returncode != 0:
        raise SuanwangError(f"the interpreted kernel failed: {done.stderr.strip().splitlines()[-1:]}")
    out = json.loads(done.stdout)
    return [(best, tuple(taken)) for best, taken in out["decisions"]], out["seconds"]


def _interpret(args: dict[str, int]) -> None:
    """`interpreted`'s other side: decides with numba's JIT disabled and prints decisions and times as JSON."""
    _, table, requests = workload(args["nodes"], args["seed"], args["tasks"], args["now"])
    with np.errstate(over="ignore"):  # the state hash wraps around 64 bits, as it does compiled
        decisions, seconds = _timed(requests, KernelDecisions(table, args["now"]), "python", Console(quiet=True))
    print(json.dumps({"decisions": decisions, "seconds": seconds}))


def _batch_windows(
    network: Any, nodes: int, requests: list[dict[str, Any]], window: int, now: int, console: Console
) -> dict[str, Any]:
    """The batch path on the requests that can wait, `window` at a time: prepare, solve (at the service's
    default time limit) and bind, per task; and the cost against deciding the same windows greedily."""
    waiting = [req for req in requests if deferrable(req)]
    windows = [waiting[k : k + window] for k in range(0, len(waiting), window)]
    together, one_by_one = dispatcher_on(network, nodes), dispatcher_on(network, nodes)
    per_task, cost, greedy_cost = [], 0.0, 0.0
    for reqs in _steps(windows, "batch", console):
        started = time.perf_counter()
        decided = together.decide_batch(reqs, now, Settings.model_fields["dispatch_batch_time_limit_s"].default)
        per_task.append((time.perf_counter() - started) / len(reqs))
        cost += sum(r.get("total_cost", 0.0) for _, r in decided)
        greedy_cost += sum(one_by_one.decide(req, now)[1].get("total_cost", 0.0) for req in reqs)
    p50, p99 = _percentiles(per_task)
    return {
        "batch_window_tasks": window,
        "batch_windows": len(windows),
        "batch_us_per_task_p50": p50,
        "batch_us_per_task_p99": p99,
        "batch_cost_over_greedy": cost / greedy_cost if greedy_cost else None,
    }


def _full_decisions(network: Any, nodes: int, requests: list[dict[str, Any]], console: Console) -> list[float]:
    """Time of `Dispatcher.decide` itself: validation, the core, and the explained event."""
    return _timed(requests, dispatcher_on(network, nodes).decide, "explained", console)[1]


def dispatcher_on(network: Network, nodes: int) -> Dispatcher:
    """A dispatcher whose table holds the model's first `nodes` nodes, nothing reserved."""
    dispatcher = Dispatcher(network)
    for spec in scaled_nodes(network, nodes):
        dispatcher.nodes.register(registration(spec, network))
    return dispatcher


if __name__ == "__main__":
    _interpret(json.loads(sys.argv[1]))
