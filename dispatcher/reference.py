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
    if count == 0:
        frag = np.zeros(len(ints))
    elif count == 1 and milli < s.WHOLE:
        frag = np.where(best_share >= milli, 0.0, 1.0 / np.maximum(whole, 1))
    else:
        frag = count / np.maximum(whole, 1)
    frag = np.where(n_acc == 0, 0.0, frag)
    return ok, cost, np.where(ok, cost + ask[s.FRAG_WEIGHT] * frag, np.inf)


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
        if count == 0 or n_acc == 0:
            frag = 0.0
        elif count == 1 and milli < s.WHOLE:
            frag = 0.0 if best_share >= milli else 1.0 / max(whole, 1)
        else:
            frag = count / max(whole, 1)
        score = cost + ask[s.FRAG_WEIGHT] * frag
        if score < best_score:
            best, best_score = i, score
    return best


def reserve_python(ints: Any, acc: Any, i: int, cpu: int, mem: int, count: int, milli: int) -> list[int]:
    """`stages.reserve` in the interpreter, over NumPy arrays or lists of lists; the accelerator indices."""
    ints[i][s.CPU_FREE] -= cpu
    ints[i][s.MEM_FREE] -= mem
    n_acc, chosen = int(ints[i][s.N_ACC]), []
    if count == 1 and milli < s.WHOLE:
        pick = -1
        for a in range(n_acc):
            if acc[i][a] >= milli and (pick < 0 or acc[i][a] < acc[i][pick]):
                pick = a
        acc[i][pick] -= milli
        chosen.append(pick)
    elif count > 0:
        for a in range(n_acc):
            if len(chosen) < count and acc[i][a] == s.WHOLE:
                acc[i][a] = 0
                chosen.append(a)
    free = [int(acc[i][a]) for a in range(n_acc)]
    ints[i][s.WHOLE_FREE] = sum(f == s.WHOLE for f in free)
    ints[i][s.BEST_SHARE] = max([f for f in free if f != s.WHOLE], default=0)
    return chosen
