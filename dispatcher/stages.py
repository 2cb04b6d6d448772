"""The placement pipeline's stages, each a pure numba function over the node arrays.

Modelled on kube-scheduler's framework: filter (feasibility, with the first failing filter of each
node recorded), score (expected cost in yuan), select (best, runner-up, best in the origin hub) and
reserve (take the resources and choose accelerator indices). `decide` chains them; it is compiled once
per process (and cached on disk), before the first task.
"""

from __future__ import annotations

from numba import njit

WHOLE = 1000  # an accelerator's capacity in thousandths

FEASIBLE = 0
UNHEALTHY = 1
ARCHITECTURE = 2
RESIDENCY = 3
LATENCY = 4
CAPACITY = 5
BUDGET = 6
FILTER_NAMES = ("unhealthy", "wrong architecture", "data residency", "latency tier", "capacity", "budget")


@njit(cache=True, inline="always")
def accelerators_fit(acc_free_row, n_acc, count, milli):
    """Whether a node's accelerators can hold `count` whole ones, or one share of `milli`."""
    if count == 0:
        return True
    if count == 1 and milli < WHOLE:
        for a in range(n_acc):
            if acc_free_row[a] >= milli:
                return True
        return False
    whole = 0
    for a in range(n_acc):
        if acc_free_row[a] == WHOLE:
            whole += 1
    return whole >= count


@njit(cache=True)
def filter_nodes(
    healthy,
    arch,
    model,
    hub,
    province,
    cpu_free,
    mem_free,
    acc_free,
    n_acc,
    arch_ok,
    model_ok,
    any_model,
    province_ok,
    any_province,
    rtt,
    origin_hub,
    tier_ms,
    cpu,
    mem,
    acc_count,
    acc_milli,
    verdict,
):
    """Writes each node's first failing filter (or FEASIBLE) into `verdict`; returns feasible count."""
    feasible = 0
    for i in range(healthy.shape[0]):
        if not healthy[i]:
            verdict[i] = UNHEALTHY
        elif not arch_ok[arch[i]] or not (any_model or model_ok[model[i]]):
            verdict[i] = ARCHITECTURE
        elif not (any_province or province_ok[province[i]]):
            verdict[i] = RESIDENCY
        elif tier_ms > 0 and rtt[origin_hub, hub[i]] > tier_ms:
            verdict[i] = LATENCY
        elif (
            cpu_free[i] < cpu or mem_free[i] < mem or not accelerators_fit(acc_free[i], n_acc[i], acc_count, acc_milli)
        ):
            verdict[i] = CAPACITY
        else:
            verdict[i] = FEASIBLE
            feasible += 1
    return feasible


@njit(cache=True)
def score_nodes(
    verdict,
    hub,
    province,
    cpu_total,
    n_acc,
    acc_free,
    throughput,
    power_kw,
    pue,
    unit_price,
    price_now,
    green_now,
    emission_kg_per_kwh,
    carbon_price,
    transfer_price,
    data_hub,
    cpu,
    acc_count,
    acc_milli,
    hours,
    input_gb,
    budget,
    fragmentation_weight,
    compute,
    energy_kwh,
    energy_cost,
    transfer,
    carbon_cost,
    carbon_kg,
    score,
):
    """Expected cost of running the task on each feasible node; nodes over budget get BUDGET."""
    feasible = 0
    for i in range(verdict.shape[0]):
        if verdict[i] != FEASIBLE:
            continue
        share = acc_count * (acc_milli / WHOLE) / n_acc[i] if acc_count > 0 and n_acc[i] > 0 else cpu / cpu_total[i]
        kwh = power_kw[i] * share * pue[i] * hours
        energy_kwh[i] = kwh
        p = province[i]
        compute[i] = unit_price[i] * throughput[i] * share * hours
        energy_cost[i] = kwh * price_now[p]
        transfer[i] = input_gb * transfer_price[data_hub, hub[i]]
        carbon_kg[i] = kwh * (1.0 - green_now[p]) * emission_kg_per_kwh
        carbon_cost[i] = carbon_kg[i] * carbon_price
        total = compute[i] + energy_cost[i] + transfer[i] + carbon_cost[i]
        if budget > 0 and total > budget:
            verdict[i] = BUDGET
            continue
        score[i] = total + fragmentation_weight * fragmentation(acc_free[i], n_acc[i], acc_count, acc_milli)
        feasible += 1
    return feasible


@njit(cache=True, inline="always")
def fragmentation(acc_free_row, n_acc, count, milli):
    """Share of the node's still-whole accelerators this placement would break or take (0..1)."""
    if count == 0 or n_acc == 0:
        return 0.0
    whole = 0
    partial_fits = False
    for a in range(n_acc):
        if acc_free_row[a] == WHOLE:
            whole += 1
        elif acc_free_row[a] >= milli:
            partial_fits = True
    if count == 1 and milli < WHOLE:
        return 0.0 if partial_fits else 1.0 / max(whole, 1)
    return count / max(whole, 1)


@njit(cache=True)
def select(verdict, score, hub, origin_hub, picks):
    """Best and runner-up node by score, and the best node in the origin hub (-1 when none)."""
    best = -1
    second = -1
    local = -1
    for i in range(verdict.shape[0]):
        if verdict[i] != FEASIBLE:
            continue
        if best < 0 or score[i] < score[best]:
            second = best
            best = i
        elif second < 0 or score[i] < score[second]:
            second = i
        if hub[i] == origin_hub and (local < 0 or score[i] < score[local]):
            local = i
    picks[0] = best
    picks[1] = second
    picks[2] = local


@njit(cache=True)
def reserve(i, cpu_free, mem_free, acc_free, n_acc, cpu, mem, acc_count, acc_milli, chosen):
    """Takes the task's resources on node i; writes the accelerator indices into `chosen`, returns their count."""
    cpu_free[i] -= cpu
    mem_free[i] -= mem
    if acc_count == 0:
        return 0
    if acc_count == 1 and acc_milli < WHOLE:
        pick = -1
        for a in range(n_acc[i]):  # best fit: the fullest accelerator that still holds the share
            if acc_free[i, a] >= acc_milli and (pick < 0 or acc_free[i, a] < acc_free[i, pick]):
                pick = a
        acc_free[i, pick] -= acc_milli
        chosen[0] = pick
        return 1
    taken = 0
    for a in range(n_acc[i]):
        if taken == acc_count:
            break
        if acc_free[i, a] == WHOLE:
            acc_free[i, a] = 0
            chosen[taken] = a
            taken += 1
    return taken


@njit(cache=True)
def release(i, cpu_free, mem_free, acc_free, cpu, mem, acc_milli, chosen, n_chosen):
    """Gives back what `reserve` took."""
    cpu_free[i] += cpu
    mem_free[i] += mem
    for k in range(n_chosen):
        acc_free[i, chosen[k]] += acc_milli


@njit(cache=True)
def count_verdicts(verdict, counts):
    counts[:] = 0
    for i in range(verdict.shape[0]):
        counts[verdict[i]] += 1
