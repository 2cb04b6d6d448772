"""The dispatch policy written again in plain NumPy and in pure Python.

They are the yardsticks of `suanwang bench dispatch`, and the check that the compiled pass in `stages`
decides exactly what the policy says: same filters in the same order, same cost arithmetic in the same
order (so the same floating-point results), ties to the lowest row.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from suanwang.dispatcher import stages as s


def choose_numpy(*args: np.ndarray) -> int:
    """The best row for the request, or -1, by whole-array operations (arguments of `evaluate_numpy`)."""
    ok, _cost, score = evaluate_numpy(*args)
    best = int(np.argmin(score)) if len(score) else -1
    return best if best >= 0 and ok[best] else -1


def evaluate_numpy(
    ints: np.ndarray,
    floats: np.ndarray,
    transfer: np.ndarray,
    rtt: np.ndarray,
    per_kwh: np.ndarray,
    arch_ok: np.ndarray,
    model_ok: np.ndarray,
    province_ok: np.ndarray,
    ask: np.ndarray,
    acc: np.ndarray,
    shapes: np.ndarray,
    weights: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per node: feasible or not, expected cost, and score (infinite where infeasible)."""
    origin, data_hub, tier = int(ask[s.ORIGIN]), int(ask[s.DATA_HUB]), ask[s.TIER_MS]
    cpu, mem, count, milli = int(ask[s.CPU]), int(ask[s.MEM]), int(ask[s.ACC_COUNT]), int(ask[s.ACC_MILLI])
    hub, n_acc, whole, best_share = ints[:, s.HUB], ints[:, s.N_ACC], ints[:, s.WHOLE_FREE], ints[:, s.BEST_SHARE]
    if count == 0:
        fits = np.ones(len(ints), dtype=np.bool_)
    elif count == 1 and milli < s.WHOLE:
        fits = (best_share >= milli) | (whole > 0)
    else:
        fits = whole >= count
    cu = s.CU + int(ask[s.PRECISION])
    ok = ints[:, s.HEALTHY] != 0
    ok &= (arch_ok[ints[:, s.ARCH]] != 0) & (floats[:, cu] > 0)
    if ask[s.ANY_MODEL] == 0:
        ok &= model_ok[ints[:, s.MODEL]] != 0
    if ask[s.ANY_PROVINCE] == 0:
        ok &= province_ok[ints[:, s.PROVINCE]] != 0
    if tier > 0:
        ok &= ~(rtt[origin, hub] > tier)
    ok &= (ints[:, s.CPU_FREE] >= cpu) & (ints[:, s.MEM_FREE] >= mem) & fits
    if count > 0:
        share = np.where(n_acc > 0, count * (milli / s.WHOLE) / np.maximum(n_acc, 1), cpu / ints[:, s.CPU_TOTAL])
    else:
        share = cpu / ints[:, s.CPU_TOTAL]
    compute = floats[:, cu] * floats[:, s.UNIT_PRICE] * floats[:, s.PRICE_INDEX]
    rate = compute + floats[:, s.METER_KW] * per_kwh[ints[:, s.PROVINCE]]
    cost = share * ask[s.HOURS] * rate + ask[s.INPUT_GB] * transfer[data_hub, hub]
    if ask[s.BUDGET_YUAN] > 0:
        ok &= ~(cost > ask[s.BUDGET_YUAN])
    frag = (  # weighed at zero (the baselines' feasibility), fragmentation is not worth its cost
        fragmentation_numpy(ints, acc, cpu, mem, count, milli, shapes, weights)
        if ask[s.FRAG_WEIGHT]
        else np.zeros(len(ints))
    )
    frag = np.where(ok, frag, 0.0)  # a share no accelerator holds scores infinite: never times a zero weight
    return ok, cost, np.where(ok, cost + ask[s.FRAG_WEIGHT] * frag, np.inf)


def unusable_numpy(
    ints: np.ndarray, acc: np.ndarray, cpu_free: np.ndarray, mem_free: np.ndarray, shapes: np.ndarray,
    weights: np.ndarray,
) -> np.ndarray:  # fmt: skip
    """`stages.unusable` of every node at once, summed shape by shape in the kernel's order."""
    exists = np.arange(acc.shape[1])[None, :] < ints[:, s.N_ACC][:, None]
    free = np.where(exists, acc, 0)
    total, whole = free.sum(axis=1), ((free == s.WHOLE) & exists).sum(axis=1)
    lost, weight_sum = np.zeros(len(ints)), 0.0
    for (cpu, mem, count, milli), w in zip(shapes.tolist(), weights.tolist(), strict=True):
        if w <= 0:
            continue
        weight_sum += w
        cannot = (cpu_free < cpu) | (mem_free < mem) | ((milli == s.WHOLE) & (whole < count))
        below = np.where(free < milli, free, 0).sum(axis=1) if count > 0 else np.zeros(len(ints), dtype=np.int64)
        lost = lost + np.where(cannot, w * total, w * below)
    out = lost / weight_sum / s.WHOLE if weight_sum > 0 else np.zeros(len(ints))
    return np.where(total == 0, 0.0, out)


def fragmentation_numpy(
    ints: np.ndarray, acc: np.ndarray, cpu: int, mem: int, count: int, milli: int, shapes: np.ndarray,
    weights: np.ndarray,
) -> np.ndarray:  # fmt: skip
    """`stages.fragmentation` of every node at once (infinite where a share fits no accelerator)."""
    cpu_free, mem_free = ints[:, s.CPU_FREE], ints[:, s.MEM_FREE]
    before = unusable_numpy(ints, acc, cpu_free, mem_free, shapes, weights)
    exists = np.arange(acc.shape[1])[None, :] < ints[:, s.N_ACC][:, None]
    if count == 1 and milli < s.WHOLE:
        best = np.full(len(ints), np.inf)
        for a in range(int(ints[:, s.N_ACC].max(initial=0))):
            after = acc.copy()
            after[:, a] -= milli
            delta = unusable_numpy(ints, after, cpu_free - cpu, mem_free - mem, shapes, weights) - before
            best = np.where(exists[:, a] & (acc[:, a] >= milli), np.minimum(best, delta), best)
        return best
    wholly_free = (acc == s.WHOLE) & exists
    take = wholly_free & (np.cumsum(wholly_free, axis=1) <= count)
    after = np.where(take, 0, acc)
    return unusable_numpy(ints, after, cpu_free - cpu, mem_free - mem, shapes, weights) - before


def unusable_python(
    row: list[int], free_row: list[int], cpu_free: int, mem_free: int, shapes: list[list[int]], weights: list[float]
) -> float:
    """`stages.unusable` of one node in the interpreter."""
    free = free_row[: row[s.N_ACC]]
    total = sum(free)
    if total == 0:
        return 0.0
    whole = sum(f == s.WHOLE for f in free)
    lost, weight_sum = 0.0, 0.0
    for (cpu, mem, count, milli), w in zip(shapes, weights, strict=True):
        if w <= 0:
            continue
        weight_sum += w
        if cpu_free < cpu or mem_free < mem or (milli == s.WHOLE and whole < count):
            lost += w * total
        elif count > 0:
            lost += w * sum(f for f in free if f < milli)
    return lost / weight_sum / s.WHOLE if weight_sum > 0 else 0.0


def fragmentation_python(
    row: list[int], free_row: list[int], cpu: int, mem: int, count: int, milli: int, shapes: list[list[int]],
    weights: list[float],
) -> tuple[float, list[int]]:  # fmt: skip
    """`stages.fragmentation` of one node in the interpreter: the increase and the accelerators it takes."""
    cpu_free, mem_free, n = row[s.CPU_FREE], row[s.MEM_FREE], row[s.N_ACC]
    before = unusable_python(row, free_row, cpu_free, mem_free, shapes, weights)
    if count == 1 and milli < s.WHOLE:
        best, best_delta = -1, 0.0
        for a in range(n):
            free = free_row[a]
            if free < milli or free in free_row[:a]:
                continue
            after = list(free_row)
            after[a] = free - milli
            delta = unusable_python(row, after, cpu_free - cpu, mem_free - mem, shapes, weights) - before
            if best < 0 or delta < best_delta or (delta == best_delta and free < free_row[best]):
                best, best_delta = a, delta
        return best_delta, [best]
    taken = [a for a in range(n) if free_row[a] == s.WHOLE][:count]
    after = [0 if a in taken else f for a, f in enumerate(free_row)]
    return unusable_python(row, after, cpu_free - cpu, mem_free - mem, shapes, weights) - before, taken


def choose_python(
    rows: list[list[int]],
    figures: list[list[float]],
    transfer: list[list[float]],
    rtt: list[list[float]],
    per_kwh: list[float],
    arch_ok: list[int],
    model_ok: list[int],
    province_ok: list[int],
    ask: list[float],
    acc: list[list[int]],
    shapes: list[list[int]],
    weights: list[float],
) -> int:
    """The best row for the request, or -1, one node at a time in the interpreter."""
    origin, data_hub, tier = int(ask[s.ORIGIN]), int(ask[s.DATA_HUB]), ask[s.TIER_MS]
    cpu, mem, count, milli = int(ask[s.CPU]), int(ask[s.MEM]), int(ask[s.ACC_COUNT]), int(ask[s.ACC_MILLI])
    any_model, any_province = ask[s.ANY_MODEL] > 0, ask[s.ANY_PROVINCE] > 0
    cu = s.CU + int(ask[s.PRECISION])
    best, best_score = -1, math.inf
    for i, row in enumerate(rows):
        if row[s.HEALTHY] == 0 or not arch_ok[row[s.ARCH]] or not (any_model or model_ok[row[s.MODEL]]):
            continue
        if not figures[i][cu] > 0:
            continue
        if not (any_province or province_ok[row[s.PROVINCE]]):
            continue
        if tier > 0 and rtt[origin][row[s.HUB]] > tier:
            continue
        whole, best_share, n_acc = row[s.WHOLE_FREE], row[s.BEST_SHARE], row[s.N_ACC]
        if count == 0:
            fits = True
        elif count == 1 and milli < s.WHOLE:
            fits = best_share >= milli or whole > 0
        else:
            fits = whole >= count
        if row[s.CPU_FREE] < cpu or row[s.MEM_FREE] < mem or not fits:
            continue
        share = count * (milli / s.WHOLE) / n_acc if count > 0 and n_acc > 0 else cpu / row[s.CPU_TOTAL]
        compute = figures[i][cu] * figures[i][s.UNIT_PRICE] * figures[i][s.PRICE_INDEX]
        rate = compute + figures[i][s.METER_KW] * per_kwh[row[s.PROVINCE]]
        cost = share * ask[s.HOURS] * rate + ask[s.INPUT_GB] * transfer[data_hub][row[s.HUB]]
        if ask[s.BUDGET_YUAN] > 0 and cost > ask[s.BUDGET_YUAN]:
            continue
        frag = fragmentation_python(row, acc[i], cpu, mem, count, milli, shapes, weights)[0]
        score = cost + ask[s.FRAG_WEIGHT] * frag
        if score < best_score:
            best, best_score = i, score
    return best


def reserve_python(
    ints: Any, acc: Any, i: int, cpu: int, mem: int, count: int, milli: int, shapes: list[list[int]],
    weights: list[float],
) -> list[int]:  # fmt: skip
    """`stages.reserve` in the interpreter, over NumPy arrays or lists of lists; the accelerator indices."""
    row, free_row = [int(x) for x in ints[i]], [int(x) for x in acc[i]]
    chosen = fragmentation_python(row, free_row, cpu, mem, count, milli, shapes, weights)[1] if count else []
    ints[i][s.CPU_FREE] -= cpu
    ints[i][s.MEM_FREE] -= mem
    for a in chosen:
        acc[i][a] -= milli
    free = [int(acc[i][a]) for a in range(int(ints[i][s.N_ACC]))]
    ints[i][s.WHOLE_FREE] = sum(f == s.WHOLE for f in free)
    ints[i][s.BEST_SHARE] = max([f for f in free if f != s.WHOLE], default=0)
    return chosen
