"""The dispatch policy written again in whole-array NumPy: an independent oracle, not a second policy.

Tests and `suanwang bench dispatch` check that the compiled pass in `stages` decides exactly as this does:
same filters in the same order, same cost arithmetic in the same order (so the same floating-point
results), ties to the lowest row. The pure-Python yardstick is the compiled pass's own source run with
numba's JIT disabled (`suanwang.benches.dispatch.interpreted`), not a port.
"""

from __future__ import annotations

import numpy as np

from suanwang.dispatcher import stages as s
from suanwang.dispatcher.stages import Ask, Float, Int


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
    origin, data_hub, tier = int(ask[Ask.ORIGIN]), int(ask[Ask.DATA_HUB]), ask[Ask.TIER_MS]
    cpu, mem, count, milli = int(ask[Ask.CPU]), int(ask[Ask.MEM]), int(ask[Ask.ACC_COUNT]), int(ask[Ask.ACC_MILLI])
    hub, n_acc, whole, best_share = (
        ints[:, Int.HUB],
        ints[:, Int.N_ACC],
        ints[:, Int.WHOLE_FREE],
        ints[:, Int.BEST_SHARE],
    )
    if count == 0:
        fits = np.ones(len(ints), dtype=np.bool_)
    elif count == 1 and milli < s.WHOLE:
        fits = (best_share >= milli) | (whole > 0)
    else:
        fits = whole >= count
    cu = Float.CU + int(ask[Ask.PRECISION])
    ok = ints[:, Int.HEALTHY] != 0
    ok &= (arch_ok[ints[:, Int.ARCH]] != 0) & (floats[:, cu] > 0)
    if ask[Ask.ANY_MODEL] == 0:
        ok &= model_ok[ints[:, Int.MODEL]] != 0
    if ask[Ask.ANY_PROVINCE] == 0:
        ok &= province_ok[ints[:, Int.PROVINCE]] != 0
    if tier > 0:
        ok &= ~(rtt[origin, hub] > tier)
    ok &= (ints[:, Int.CPU_FREE] >= cpu) & (ints[:, Int.MEM_FREE] >= mem) & fits
    if count > 0:
        share = np.where(n_acc > 0, count * (milli / s.WHOLE) / np.maximum(n_acc, 1), cpu / ints[:, Int.CPU_TOTAL])
    else:
        share = cpu / ints[:, Int.CPU_TOTAL]
    compute = floats[:, cu] * floats[:, Float.UNIT_PRICE] * floats[:, Float.PRICE_INDEX]
    rate = compute + floats[:, Float.METER_KW] * per_kwh[ints[:, Int.PROVINCE]]
    cost = share * ask[Ask.HOURS] * rate + ask[Ask.INPUT_GB] * transfer[data_hub, hub]
    if ask[Ask.BUDGET_YUAN] > 0:
        ok &= ~(cost > ask[Ask.BUDGET_YUAN])
    frag = (  # weighed at zero (the baselines' feasibility), fragmentation is not worth its cost
        fragmentation_numpy(ints, acc, cpu, mem, count, milli, shapes, weights)
        if ask[Ask.FRAG_WEIGHT]
        else np.zeros(len(ints))
    )
    frag = np.where(ok, frag, 0.0)  # a share no accelerator holds scores infinite: never times a zero weight
    return ok, cost, np.where(ok, cost + ask[Ask.FRAG_WEIGHT] * frag, np.inf)


def unusable_numpy(
    ints: np.ndarray, acc: np.ndarray, cpu_free: np.ndarray, mem_free: np.ndarray, shapes: np.ndarray,
    weights: np.ndarray,
) -> np.ndarray:  # fmt: skip
    """`stages.unusable` of every node at once, summed shape by shape in the kernel's order."""
    exists = np.arange(acc.shape[1])[None, :] < ints[:, Int.N_ACC][:, None]
    free = np.where(exists, acc, 0)
    total, whole = free.sum(axis=1), ((free == s.WHOLE) & exists).sum(axis=1)
    lost, weight_sum = np.zeros(len(ints)), np.zeros(len(ints))
    model = ints[:, Int.MODEL]
    for (cpu, mem, count, milli, models), w in zip(shapes.tolist(), weights.tolist(), strict=True):
        if w <= 0:
            continue
        may = (model >= s.ANY_MODEL_BIT) | ((models >> np.minimum(model, s.ANY_MODEL_BIT - 1)) & 1 == 1)
        weight_sum = weight_sum + np.where(may, w, 0.0)
        cannot = (cpu_free < cpu) | (mem_free < mem) | ((milli == s.WHOLE) & (whole < count))
        below = np.where(free < milli, free, 0).sum(axis=1) if count > 0 else np.zeros(len(ints), dtype=np.int64)
        lost = lost + np.where(may, np.where(cannot, w * total, w * below), 0.0)
    out = lost / np.where(weight_sum > 0, weight_sum, 1.0) / s.WHOLE
    return np.where((total == 0) | (weight_sum == 0), 0.0, out)


def fragmentation_numpy(
    ints: np.ndarray, acc: np.ndarray, cpu: int, mem: int, count: int, milli: int, shapes: np.ndarray,
    weights: np.ndarray,
) -> np.ndarray:  # fmt: skip
    """`stages.fragmentation` of every node at once (infinite where a share fits no accelerator)."""
    cpu_free, mem_free = ints[:, Int.CPU_FREE], ints[:, Int.MEM_FREE]
    before = unusable_numpy(ints, acc, cpu_free, mem_free, shapes, weights)
    exists = np.arange(acc.shape[1])[None, :] < ints[:, Int.N_ACC][:, None]
    if count == 1 and milli < s.WHOLE:
        best = np.full(len(ints), np.inf)
        for a in range(int(ints[:, Int.N_ACC].max(initial=0))):
            after = acc.copy()
            after[:, a] -= milli
            delta = unusable_numpy(ints, after, cpu_free - cpu, mem_free - mem, shapes, weights) - before
            best = np.where(exists[:, a] & (acc[:, a] >= milli), np.minimum(best, delta), best)
        return best
    wholly_free = (acc == s.WHOLE) & exists
    take = wholly_free & (np.cumsum(wholly_free, axis=1) <= count)
    after = np.where(take, 0, acc)
    return unusable_numpy(ints, after, cpu_free - cpu, mem_free - mem, shapes, weights) - before


def reserve_numpy(
    ints: np.ndarray, acc: np.ndarray, i: int, cpu: int, mem: int, count: int, milli: int, shapes: np.ndarray,
    weights: np.ndarray,
) -> list[int]:  # fmt: skip
    """`stages.reserve` on node i with whole-array operations; the accelerator indices it took (a share: the one
    that raises fragmentation least, then the fullest, then the lowest index)."""
    row = slice(i, i + 1)
    n = int(ints[i, Int.N_ACC])
    if count == 1 and milli < s.WHOLE:
        before = unusable_numpy(ints[row], acc[row], ints[row, Int.CPU_FREE], ints[row, Int.MEM_FREE], shapes, weights)
        options = []
        for a in range(n):
            if acc[i, a] < milli:
                continue
            after = acc[row].copy()
            after[0, a] -= milli
            cpu_left, mem_left = ints[row, Int.CPU_FREE] - cpu, ints[row, Int.MEM_FREE] - mem
            delta = unusable_numpy(ints[row], after, cpu_left, mem_left, shapes, weights) - before
            options.append((float(delta[0]), int(acc[i, a]), a))
        chosen = [min(options)[2]]
    else:
        chosen = [a for a in range(n) if acc[i, a] == s.WHOLE][:count]
    ints[i, Int.CPU_FREE] -= cpu
    ints[i, Int.MEM_FREE] -= mem
    acc[i, chosen] -= milli
    free = acc[i, :n]
    ints[i, Int.WHOLE_FREE] = int((free == s.WHOLE).sum())
    ints[i, Int.BEST_SHARE] = int(free[free != s.WHOLE].max(initial=0))
    return chosen
