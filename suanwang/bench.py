"""Benchmarks that print figures measured in one run, with the ratios between them (`suanwang bench`)."""

from __future__ import annotations

import gc
import random
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import track

from suanwang.bus import now_ms
from suanwang.dispatcher.batch import deferrable
from suanwang.dispatcher.core import (
    FRAGMENTATION_WEIGHT,
    Choice,
    Demand,
    Dispatcher,
    choose,
    demand_of,
    reserve,
    warm_up,
    window_of,
)
from suanwang.dispatcher.reference import choose_numpy, choose_python, reserve_python
from suanwang.dispatcher.shapes import Shapes
from suanwang.dispatcher.state import NodeTable
from suanwang.settings import Settings
from suanwang.topology import load_network, scaled_nodes
from suanwang.workload import TaskGenerator, registration

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


def bench_dispatch(
    nodes: int, tasks: int, python_tasks: int, seed: int, console: Console, window: int = 25
) -> dict[str, Any]:
    """Decision time of the compiled core, of NumPy and of pure Python on one workload, decisions compared.

    Each implementation starts from the same table and reserves what it places, so a difference in any
    one decision shows up in every later one. A decision is timed from the request record to the
    reserved node: building the request's masks, filter, score, select and reserve.
    """
    network = load_network()
    warm_up(network)
    table = NodeTable(network)
    for spec in scaled_nodes(network, nodes):
        table.register(registration(spec, network))
    gen = TaskGenerator(network, random.Random(seed))
    now = now_ms()
    requests = [gen.next(now) for _ in range(tasks)]
    weight = FRAGMENTATION_WEIGHT
    ints0, acc0 = table.ints.copy(), table.acc_free.copy()
    loads = {name: Shapes() for name in ("numba", "numpy", "python")}  # each learns the same requests

    def demand(req: dict[str, Any], name: str) -> tuple[Demand, Any, Shapes]:
        d, load = demand_of(table, req, weight), loads[name]
        load.observe(d.cpu, d.mem, d.acc_count, d.acc_milli)
        return d, window_of(table, req, now, carbon_price), load

    choice = Choice()
    carbon_price = 0.1

    def numba_decide(req: dict[str, Any]) -> Decision:
        d, w, load = demand(req, "numba")
        best = int(choose(table, d, choice, w, load).picks[0])
        return (best, tuple(int(a) for a in reserve(table, best, d, load))) if best >= 0 else (-1, ())

    def numpy_decide(req: dict[str, Any]) -> Decision:
        d, w, load = demand(req, "numpy")
        best = choose_numpy(
            np_ints,
            table.floats,
            table.transfer_price,
            table.rtt,
            w.per_kwh,
            d.arch_ok,
            d.model_ok,
            d.province_ok,
            d.ask,
            np_acc,
            load.shapes,
            load.weights,
        )
        return (best, tuple(_reserve_python(np_ints, np_acc, best, d, load))) if best >= 0 else (-1, ())

    rows, acc_rows, figures = ints0.tolist(), acc0.tolist(), table.floats.tolist()
    transfer, rtt = table.transfer_price.tolist(), table.rtt.tolist()

    def python_decide(req: dict[str, Any]) -> Decision:
        d, w, load = demand(req, "python")
        best = choose_python(
            rows,
            figures,
            transfer,
            rtt,
            w.per_kwh.tolist(),
            d.arch_ok.tolist(),
            d.model_ok.tolist(),
            d.province_ok.tolist(),
            d.ask.tolist(),
            acc_rows,
            load.shapes.tolist(),
            load.weights.tolist(),
        )
        return (best, tuple(_reserve_python(rows, acc_rows, best, d, load))) if best >= 0 else (-1, ())

    np_ints, np_acc = ints0.copy(), acc0.copy()
    by_numpy, numpy_s = _timed(requests, numpy_decide, "numpy", console)
    by_python, python_s = _timed(requests[:python_tasks], python_decide, "python", console)
    full_s = _full_decisions(network, nodes, requests, console)
    by_numba, numba_s = _timed(requests, numba_decide, "numba", console)
    identical = by_numba == by_numpy and by_numba[: len(by_python)] == by_python
    numba_p50, numba_p99 = _percentiles(numba_s)
    numpy_p50, numpy_p99 = _percentiles(numpy_s)
    python_p50, python_p99 = _percentiles(python_s)
    full_p50, full_p99 = _percentiles(full_s)
    placed = sum(best >= 0 for best, _ in by_numba)
    return {
        "nodes": nodes,
        "tasks": tasks,
        "python_tasks": len(by_python),
        "placed": placed,
        "rejected": tasks - placed,
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


def _batch_windows(
    network: Any, nodes: int, requests: list[dict[str, Any]], window: int, now: int, console: Console
) -> dict[str, Any]:
    """The batch path on the requests that can wait, `window` at a time: prepare, solve (at the service's
    default time limit) and bind, per task; and the cost against deciding the same windows greedily."""
    waiting = [req for req in requests if deferrable(req)]
    windows = [waiting[k : k + window] for k in range(0, len(waiting), window)]
    together, one_by_one = Dispatcher(network), Dispatcher(network)
    for spec in scaled_nodes(network, nodes):
        together.nodes.register(registration(spec, network))
        one_by_one.nodes.register(registration(spec, network))
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


def _reserve_python(ints: Any, acc: Any, row: int, d: Demand, load: Shapes) -> list[int]:
    shapes, weights = load.shapes.tolist(), load.weights.tolist()
    return reserve_python(ints, acc, row, d.cpu, d.mem, d.acc_count, d.acc_milli, shapes, weights)


def _full_decisions(network: Any, nodes: int, requests: list[dict[str, Any]], console: Console) -> list[float]:
    """Time of `Dispatcher.decide` itself: validation, the core, and the explained event."""
    dispatcher = Dispatcher(network)
    for spec in scaled_nodes(network, nodes):
        dispatcher.nodes.register(registration(spec, network))
    return _timed(requests, dispatcher.decide, "explained", console)[1]
