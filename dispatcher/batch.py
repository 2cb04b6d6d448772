"""Batch-optimal placement of work that can wait: the requests of one window assigned together by a MILP.

The greedy pass places each request on the node cheapest now; a batch sees all of its requests at once, so
two tasks no longer race for the same cheap node. Each task's candidates are its cheapest feasible nodes,
scored by the compiled pass (the one policy); the MILP (HiGHS) places as many tasks as it can at the least
cost within each node's CPU, memory and accelerators, starting from the greedy answer and stopping at a time
limit with the best assignment found. This module only solves: it never touches the node table, so the solve
can run beside the greedy path, and the dispatcher binds each assignment through that table afterwards.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import highspy
import numpy as np

from suanwang.dispatcher.priority import EMERGENCY

CANDIDATES = 48  # cheapest feasible nodes per task offered to the MILP
CPU, MEM, WHOLE_COUNT, ACC_MILLI = range(4)  # columns of a task's needs and a node's free capacity


def deferrable(req: dict[str, Any]) -> bool:
    """Work that can wait for a window: offline (no latency tier) and not emergency work."""
    return req["latency_tier_ms"] is None and req.get("priority") != EMERGENCY


@dataclass
class Problem:
    """One window's tasks as the MILP sees them: per task its candidate nodes (indices into `nodes`, -1: none)
    and their costs, its needs; per node its free capacity; and the greedy warm start (a candidate index)."""

    candidates: np.ndarray  # (tasks, CANDIDATES) int
    costs: np.ndarray  # (tasks, CANDIDATES) float
    needs: np.ndarray  # (tasks, 4) float
    free: np.ndarray  # (nodes, 4) float
    greedy: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def tasks(self) -> int:
        return self.candidates.shape[0]


@dataclass
class Solution:
    """The candidate index chosen for each task (-1: unplaced), and how the solve went."""

    chosen: np.ndarray
    status: str
    seconds: float
    cost: float
    greedy_cost: float


def warm_start(p: Problem) -> np.ndarray:
    """Each task in turn on its cheapest candidate with room left: the greedy answer in the MILP's own terms."""
    chosen = np.full(p.tasks, -1, dtype=np.int64)
    _fill(p, chosen)
    return chosen


def solve(p: Problem, time_limit_s: float) -> Solution:
    """The least-cost assignment of the tasks the greedy answer places (the MILP, warm-started from that answer,
    with the best found within `time_limit_s`), then any task it left out that still finds room."""
    started = time.perf_counter()
    greedy = p.greedy if len(p.greedy) == p.tasks else warm_start(p)
    greedy_cost = _cost(p, greedy)
    placed = np.flatnonzero(greedy >= 0)
    best, status = greedy.copy(), "greedy"
    if len(placed):
        model = _Model(Problem(p.candidates[placed], p.costs[placed], p.needs[placed], p.free))
        x = model.run(time_limit_s, start=greedy[placed])
        if x is not None:
            chosen = np.full(len(placed), -1, dtype=np.int64)
            picked = x > 0.5
            chosen[model.task_of[picked]] = model.k_of[picked]
            if (chosen >= 0).all() and _cost(p, _spread(p, placed, chosen)) < greedy_cost - 1e-9:
                best, status = _spread(p, placed, chosen), f"MILP: {model.status}"
    _fill(p, best)
    return Solution(best, status, time.perf_counter() - started, _cost(p, best), greedy_cost)


def _spread(p: Problem, placed: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """A choice per task of the whole problem from one per placed task."""
    out = np.full(p.tasks, -1, dtype=np.int64)
    out[placed] = chosen
    return out


def _fill(p: Problem, chosen: np.ndarray) -> None:
    """Tasks left out take, in turn, their cheapest candidate that still has room."""
    left = p.free.copy()
    for t in np.flatnonzero(chosen >= 0):
        left[p.candidates[t, chosen[t]]] -= p.needs[t]
    for t in np.flatnonzero(chosen < 0):
        for k in np.argsort(p.costs[t], kind="stable"):
            n = p.candidates[t, k]
            if n >= 0 and np.isfinite(p.costs[t, k]) and (left[n] >= p.needs[t]).all():
                left[n] -= p.needs[t]
                chosen[t] = k
                break


class _Model:
    """The MILP over x[t, k] (task t on its candidate k): a row per task (exactly one node) and per node and
    resource (within what is free); the objective is the tasks' cost."""

    def __init__(self, p: Problem) -> None:
        self.task_of, self.k_of = np.nonzero((p.candidates >= 0) & np.isfinite(p.costs))
        self.columns = len(self.task_of)
        self.status = ""
        node_of = p.candidates[self.task_of, self.k_of]
        n_tasks, n_nodes = p.tasks, p.free.shape[0]
        entries = [self.task_of] + [n_tasks + node_of * 4 + r for r in range(4)]  # each column's rows, in order
        values = [np.ones(self.columns)] + [p.needs[self.task_of, r] for r in range(4)]
        lp = highspy.HighsLp()
        lp.num_col_, lp.num_row_ = self.columns, n_tasks + 4 * n_nodes
        lp.col_cost_ = p.costs[self.task_of, self.k_of]
        lp.col_lower_, lp.col_upper_ = np.zeros(self.columns), np.ones(self.columns)
        lp.row_lower_ = np.concatenate([np.ones(n_tasks), np.full(4 * n_nodes, -highspy.kHighsInf)])
        lp.row_upper_ = np.concatenate([np.ones(n_tasks), p.free.reshape(-1)])
        lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
        lp.a_matrix_.start_ = np.arange(0, 5 * self.columns + 1, 5, dtype=np.int32)
        lp.a_matrix_.index_ = np.stack(entries, axis=1).reshape(-1).astype(np.int32)
        lp.a_matrix_.value_ = np.stack(values, axis=1).reshape(-1)
        lp.integrality_ = [highspy.HighsVarType.kInteger] * self.columns
        self.lp = lp

    def run(self, time_limit_s: float, start: np.ndarray) -> np.ndarray | None:
        """The columns' values of the best solution found in time from `start` (a candidate per task), or None."""
        h = _highs()
        h.setOptionValue("time_limit", max(time_limit_s, 1e-3))
        h.setOptionValue("threads", 1)
        h.passModel(self.lp)
        warm = highspy.HighsSolution()
        warm.col_value = (self.k_of == start[self.task_of]).astype(float)  # set whole: the attribute hands out a copy
        warm.value_valid = True
        h.setSolution(warm)
        h.run()
        self.status = h.modelStatusToString(h.getModelStatus())
        if h.getInfo().primal_solution_status != 2:  # no feasible solution in time
            return None
        return np.asarray(h.getSolution().col_value)


def _cost(p: Problem, chosen: np.ndarray) -> float:
    placed = np.flatnonzero(chosen >= 0)
    return float(p.costs[placed, chosen[placed]].sum())


_banner_shown = False


def _highs() -> highspy.Highs:
    """A HiGHS instance, silent. Its first construction prints a banner on the process's stdout, which a
    `--json` command must keep clean: that one is sent to /dev/null."""
    global _banner_shown
    if _banner_shown:
        h = highspy.Highs()
    else:
        sys.stdout.flush()
        saved = os.dup(1)
        try:
            with open(os.devnull, "w") as null:
                os.dup2(null.fileno(), 1)
                h = highspy.Highs()
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        _banner_shown = True
    h.setOptionValue("output_flag", False)
    return h
