"""The placement pipeline's stages, each a small numba function over the node table's arrays.

Modelled on kube-scheduler's framework: filter (the first failing check of a node), score (expected cost
in yuan plus a fragmentation term), select (best, runner-up, best in the origin hub) and reserve. `choose`
chains filter, score and select in one pass over the nodes, compiled once per process (cached on disk);
the stages are inlined into it, and each is also callable, and tested, alone.

Node figures are the columns of two node-major matrices (`ints`, `floats`: one row per node, so a
node's figures share a cache line and a decision hands numba a dozen arguments, not forty); the request
is one float array `ask`. Nodes whose figures are all equal form a group (`dispatcher.groups`), and the
pass scores each group once, at its lowest row. Their columns, the workload's shape columns, the groups'
columns and the filters' verdicts are declared once, below: `Int`, `Float`, `Ask`, `Shape`, `Link`, `Group`,
`Tally` and `Verdict`.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np
from numba import njit

from suanwang.topology import PRECISIONS

WHOLE = 1000  # an accelerator's capacity in thousandths
CPU_STEP, MEM_STEP = 4000, 16384  # the workload's shapes are bucketed by these (dispatcher.shapes)


class Declared(IntEnum):
    """An index into one of the dispatcher's number layouts, numbered in the order declared, with what it
    holds. Declared here, beside the stages, so an edit recompiles them; numba reads a member as a constant."""

    meaning: str

    def __new__(cls, meaning: str) -> Declared:
        index = len(cls.__members__)
        member = int.__new__(cls, index)
        member._value_ = index
        member.meaning = meaning
        return member


class Int(Declared):
    """The node table's integer columns (`NodeTable.ints`, one row per node)."""

    HEALTHY = "1 while the node is registered active, not paused, not offline and its collector reporting"
    ARCH = "chip architecture (an id of NodeTable.archs)"
    MODEL = "chip model (an id of NodeTable.models)"
    HUB = "hub (an id of NodeTable.hubs)"
    PROVINCE = "province (an id of NodeTable.provinces)"
    CPU_TOTAL = "CPU, millicores"
    CPU_FREE = "CPU not reserved, millicores"
    MEM_TOTAL = "memory, MiB"
    MEM_FREE = "memory not reserved, MiB"
    N_ACC = "accelerators (at most state.MAX_ACCELERATORS)"
    WHOLE_FREE = "accelerators wholly free"
    BEST_SHARE = "the largest free share of an accelerator in use, thousandths"
    CLASS = "compute class (CPU, GPU, NPU, HPC): with HUB, what a market price applies to"
    ACC_KEY = "a hash of the free accelerators as a multiset, kept by `summarise_accelerators`"


class Float(Declared):
    """The node table's float columns (`NodeTable.floats`). Compute costs CU x UNIT_PRICE x PRICE_INDEX per
    hour; energy and carbon follow the grid of the hours run."""

    UNIT_PRICE = "yuan per compute unit"
    PRICE_INDEX = "the market's index of the node's hub and class (1: none published)"
    METER_KW = "power the whole node draws at the meter, kW (power x PUE)"
    CU = "compute units per hour of the whole node at precision 0; column CU + p at precision p (0: cannot)"


class Ask(Declared):
    """The fields of `ask`, a request as the numbers the compiled pass reads."""

    ANY_MODEL = "1 when the request names no chip model"
    ANY_PROVINCE = "1 when the request's data may go to any province"
    ORIGIN = "the hub the request comes from (an id of NodeTable.hubs)"
    DATA_HUB = "the hub its input data is in"
    TIER_MS = "the round trip it allows from its origin, ms (0: any)"
    CPU = "CPU, millicores"
    MEM = "memory, MiB"
    ACC_COUNT = "accelerators"
    ACC_MILLI = "thousandths of each accelerator (below WHOLE only for a share of one)"
    HOURS = "hours it runs"
    INPUT_GB = "input to move to the node, GB"
    BUDGET_YUAN = "the most it may cost (0: no limit)"
    FRAG_WEIGHT = "yuan per accelerator of fragmentation"
    PRECISION = "its precision (an index of topology.PRECISIONS)"


class Shape(Declared):
    """The columns of `shapes`, the workload that fragmentation is measured against (`dispatcher.shapes`)."""

    CPU = "CPU, millicores (a whole number of CPU_STEP)"
    MEM = "memory, MiB (a whole number of MEM_STEP)"
    COUNT = "accelerators"
    MILLI = "thousandths of each accelerator"
    MODELS = "the chip models it may run on, one bit per id of NodeTable.models below ANY_MODEL_BIT, or ANY_MODELS"


ANY_MODEL_BIT = 63  # models with this id or above are in every shape's MODELS
ANY_MODELS = -1  # every bit set: a shape, or a request, that names no chip model


class Link(Declared):
    """The columns of `NodeTable.links`, one row per node: its group and its neighbours there."""

    GROUP = "the node's group (-1: none yet)"
    NEXT = "the next row of its group, rows ascending (-1: it is the last)"
    PREV = "the row before it in its group (-1: it is the first)"


class Group(Declared):
    """The columns of `NodeTable.groups`, one row per group of nodes with equal figures."""

    HEAD = "its lowest row: the one the pass scores"
    TAIL = "its highest row"
    SIZE = "its nodes (0: empty, kept until the groups are rebuilt)"
    POS = "its place in the list of groups with nodes"
    KEY = "the hash of its figures (`groups.figures_key`)"
    LIVE = "not the group's: row k of this column is the k-th group with nodes"


class Tally(Declared):
    """The fields of `NodeTable.tally`: how many groups there are."""

    LIVE = "groups with nodes"
    ALLOCATED = "group rows used, empty ones included"


class Verdict(Declared):
    """Filter's answer for a node: FEASIBLE, or the first check it fails, named as a rejection counts it."""

    FEASIBLE = "feasible"
    UNHEALTHY = "unhealthy"
    ARCHITECTURE = "wrong architecture"
    RESIDENCY = "data residency"
    LATENCY = "latency tier"
    CAPACITY = "capacity"
    BUDGET = "budget"
    AVOIDED = "failed this task before"


INT_FIELDS = len(Int)
FLOAT_FIELDS = Float.CU + len(PRECISIONS)
ASK_FIELDS = len(Ask)
SHAPE_FIELDS = len(Shape)


@njit(cache=True)
def accelerators_fit(whole_free, best_share, count, milli):
    """Whether a node can hold `count` whole accelerators, or one share of `milli` thousandths."""
    if count == 0:
        return True
    if count == 1 and milli < WHOLE:
        return best_share >= milli or whole_free > 0
    return whole_free >= count


@njit(cache=True)
def verdict(
    healthy,
    arch_ok,
    model_ok,
    province_ok,
    rtt,
    tier_ms,
    cpu_free,
    mem_free,
    whole_free,
    best_share,
    cpu,
    mem,
    count,
    milli,
):
    """Filter: the first check a node fails, or FEASIBLE."""
    if healthy == 0:
        return Verdict.UNHEALTHY
    if not arch_ok or not model_ok:
        return Verdict.ARCHITECTURE
    if not province_ok:
        return Verdict.RESIDENCY
    if tier_ms > 0 and rtt > tier_ms:
        return Verdict.LATENCY
    if cpu_free < cpu or mem_free < mem or not accelerators_fit(whole_free, best_share, count, milli):
        return Verdict.CAPACITY
    return Verdict.FEASIBLE


@njit(cache=True)
def share(n_acc, cpu_total, cpu, count, milli):
    """The fraction of a node the task holds: its accelerators' share, or its CPU share."""
    if count > 0 and n_acc > 0:
        return count * (milli / WHOLE) / n_acc
    return cpu / cpu_total


@njit(cache=True)
def compute_rate(cu_per_hour, unit_price, price_index):
    """Price: yuan per hour of the whole node's compute at the task's precision, at the market's index."""
    return cu_per_hour * unit_price * price_index


@njit(cache=True)
def cost(node_share, hours, rate, input_gb, transfer_price):
    """Score: expected yuan, compute + energy + carbon for the hours the task runs, plus moving its data."""
    return node_share * hours * rate + input_gb * transfer_price


@njit(cache=True)
def unusable(i, ints, acc_free, cpu_free, mem_free, shapes, weights):
    """FGD's measure of node i: the free accelerator capacity (in accelerators) the workload could not use,
    each shape weighted by how often it comes. Shapes bound to other chip models are left out, not counted
    as losing everything: that would draw unbound work onto the models fewest tasks ask for, and fill them
    (bench packing --gpu-spec 0.25: 0.934 of GPUs allocated at 100 % arrived counting them, 0.944 not)."""
    n = ints[i, Int.N_ACC]
    total = 0
    whole = 0
    for a in range(n):
        total += acc_free[i, a]
        if acc_free[i, a] == WHOLE:
            whole += 1
    if total == 0:
        return 0.0
    lost = 0.0
    weight_sum = 0.0
    model = ints[i, Int.MODEL]
    for k in range(shapes.shape[0]):
        w = weights[k]
        models = shapes[k, Shape.MODELS]
        if w <= 0 or (model < ANY_MODEL_BIT and (models >> model) & 1 == 0):
            continue
        weight_sum += w
        count, milli = shapes[k, Shape.COUNT], shapes[k, Shape.MILLI]
        if cpu_free < shapes[k, Shape.CPU] or mem_free < shapes[k, Shape.MEM] or (milli == WHOLE and whole < count):
            lost += w * total  # the shape cannot run here at all: every free accelerator is lost to it
        elif count > 0:
            below = total - whole * WHOLE  # for whole accelerators: all the free capacity of those in use
            if milli < WHOLE:
                below = 0
                for a in range(n):
                    if acc_free[i, a] < milli:
                        below += acc_free[i, a]
            lost += w * below
    return lost / weight_sum / WHOLE if weight_sum > 0 else 0.0


@njit(cache=True)
def fragmentation(i, ints, acc_free, cpu, mem, count, milli, shapes, weights, keys, values, version, chosen):
    """Score's packing term (FGD): how much the workload's unusable capacity on node i grows if the task goes
    there, in accelerators; the accelerators it would take go into `chosen` (a share: the one that grows it
    least, then the fullest, then the lowest index). Each `unusable` is remembered in `keys` and `values`
    per state it depends on and workload `version`: nodes of many groups share the same free accelerators."""
    cpu_free, mem_free = ints[i, Int.CPU_FREE], ints[i, Int.MEM_FREE]
    sort = np.empty(max(acc_free.shape[1], 1), dtype=np.int64)
    top = headroom(shapes, weights)
    before = remembered(i, ints, acc_free, cpu_free, mem_free, shapes, weights, keys, values, version, top, sort)
    cpu_left, mem_left = cpu_free - cpu, mem_free - mem
    n = ints[i, Int.N_ACC]
    if count == 1 and milli < WHOLE:
        best = -1
        best_delta = 0.0
        for a in range(n):
            free = acc_free[i, a]
            if free < milli:
                continue
            seen = False  # accelerators with the same free capacity give the same answer
            for b in range(a):
                if acc_free[i, b] == free:
                    seen = True
                    break
            if seen:
                continue
            acc_free[i, a] = free - milli
            after = remembered(i, ints, acc_free, cpu_left, mem_left, shapes, weights, keys, values, version, top, sort)
            delta = after - before
            acc_free[i, a] = free
            if best < 0 or delta < best_delta or (delta == best_delta and free < acc_free[i, best]):
                best, best_delta = a, delta
        chosen[0] = best
        return best_delta
    taken = 0
    for a in range(n):
        if taken == count:
            break
        if acc_free[i, a] == WHOLE:
            acc_free[i, a] = 0
            chosen[taken] = a
            taken += 1
    after = remembered(i, ints, acc_free, cpu_left, mem_left, shapes, weights, keys, values, version, top, sort)
    for k in range(taken):
        acc_free[i, chosen[k]] = WHOLE
    return after - before


@njit(cache=True)
def mix(h, v):
    """One step of FNV-1a over 64-bit words."""
    return (h ^ np.uint64(v)) * np.uint64(1099511628211)


@njit(cache=True)
def multiset_key(i, ints, acc_free, scratch):
    """A hash of node i's free accelerators as a multiset (sorted first: which accelerator is which does not
    matter to the workload)."""
    n = ints[i, Int.N_ACC]
    for a in range(n):  # insertion sort: at most MAX_ACCELERATORS values
        v = acc_free[i, a]
        b = a
        while b > 0 and scratch[b - 1] > v:
            scratch[b] = scratch[b - 1]
            b -= 1
        scratch[b] = v
    h = np.uint64(14695981039346656037)
    for a in range(n):
        h = mix(h, scratch[a] + 1)
    return mix(h, n)


@njit(cache=True)
def headroom(shapes, weights):
    """The largest CPU and memory bucket any weighed shape asks: free capacity above it answers as it does."""
    top_cpu = top_mem = 0
    for k in range(shapes.shape[0]):
        if weights[k] > 0:
            top_cpu = max(top_cpu, shapes[k, Shape.CPU] // CPU_STEP)
            top_mem = max(top_mem, shapes[k, Shape.MEM] // MEM_STEP)
    return top_cpu, top_mem


ROUNDING = 1e-9  # yuan: the bounds on fragmentation are exact in reals; floats are given this much room
UNUSABLE = 0x756E757361626C65  # mixed into the keys of remembered `unusable` answers, apart from `state_key`'s


@njit(cache=True)
def remembered(i, ints, acc_free, cpu_free, mem_free, shapes, weights, keys, values, version, top, sort):
    """`unusable`, remembered per free multiset, CPU and memory bucket (up to `top`, the `headroom`), model and
    workload `version` (the shapes' CPU and memory are whole buckets, so within one the answer is the same)."""
    h = multiset_key(i, ints, acc_free, sort)
    for v in (min(cpu_free // CPU_STEP, top[0]), min(mem_free // MEM_STEP, top[1]), ints[i, Int.MODEL], version,
              UNUSABLE):  # fmt: skip
        h = mix(h, v)
    slot = np.int64(h & np.uint64(keys.shape[0] - 1))
    if keys[slot] != h:
        keys[slot], values[slot] = h, unusable(i, ints, acc_free, cpu_free, mem_free, shapes, weights)
    return values[slot]


@njit(cache=True)
def state_key(i, ints, cpu, mem, count, milli, version, top):
    """A hash of what `fragmentation` depends on: node i's free accelerators (their key, kept with the row),
    the buckets of its free CPU and memory before and after the task, up to `top` (the shapes' CPU and memory
    are whole buckets, so within one the answer is the same, and above the `headroom` too), its model, the
    task's accelerators and the workload's version."""
    cpu_free, mem_free = ints[i, Int.CPU_FREE], ints[i, Int.MEM_FREE]
    h = np.uint64(ints[i, Int.ACC_KEY])
    for v in (
        ints[i, Int.MODEL],
        min(cpu_free // CPU_STEP, top[0]),
        min((cpu_free - cpu) // CPU_STEP, top[0]),
        min(mem_free // MEM_STEP, top[1]),
        min((mem_free - mem) // MEM_STEP, top[1]),
        count,
        milli,
        version,
    ):
        h = mix(h, v)
    return h


@njit(cache=True)
def before(score, row, other_score, other_row):
    """Select's order: lower score first, then lower row."""
    return score < other_score or (score == other_score and row < other_row)


@njit(cache=True)
def beaten(floor, is_local, second, second_score, local, local_score):
    """Whether a node scoring at least `floor` can be neither best, runner-up nor (`is_local`) best local."""
    if second < 0 or floor <= second_score:
        return False
    return not is_local or (local >= 0 and floor > local_score)


@njit(cache=True)
def select(score, i, best, best_score, second, second_score):
    """Select's running best and runner-up after node i, scoring `score`, is offered."""
    if best < 0 or before(score, i, best_score, best):
        return i, score, best, best_score
    if second < 0 or before(score, i, second_score, second):
        return best, best_score, i, score
    return best, best_score, second, second_score


@njit(cache=True)
def choose(
    ints,
    floats,
    transfer,
    rtt,
    per_kwh,
    grouped,
    units,
    links,
    groups,
    tally,
    live_ints,
    live_floats,
    arch_ok,
    model_ok,
    province_ok,
    ask,
    acc_free,
    shapes,
    weights,
    version,
    keys,
    values,
    picks,
    costs,
    counts,
    scores,
):
    """Filter, score and select in one pass: `picks` gets best, runner-up and best local node (-1: none),
    `costs` their costs, `counts` how many nodes each verdict got, and `scores` (unless empty) the cost of
    every visited node, infinite where it is not feasible. Returns the number of feasible nodes.
    `per_kwh` is the yuan per kWh (energy and carbon) of each province over the hours the task would run.

    `grouped`: the pass visits each group of nodes with equal figures once, at its lowest row, and offers
    its next row as runner-up; else it visits the rows `units` alone (the rest counted as pre-filtered).
    Filter and cost come first; then score, the two cheapest and the cheapest local node first. A node whose
    cost, less the most its fragmentation term could take off, is already above the runner-up's score (and,
    in the origin hub, the best local's) is not measured: it can win nothing. Ties go to the lowest row,
    whatever the order. The stages take scalars only: a numba function taking arrays pays reference
    counting on every call."""
    any_model, any_province = ask[Ask.ANY_MODEL] > 0, ask[Ask.ANY_PROVINCE] > 0
    origin, data_hub, tier = int(ask[Ask.ORIGIN]), int(ask[Ask.DATA_HUB]), ask[Ask.TIER_MS]
    cpu, mem, count, milli = int(ask[Ask.CPU]), int(ask[Ask.MEM]), int(ask[Ask.ACC_COUNT]), int(ask[Ask.ACC_MILLI])
    hours, input_gb, budget, weight = ask[Ask.HOURS], ask[Ask.INPUT_GB], ask[Ask.BUDGET_YUAN], ask[Ask.FRAG_WEIGHT]
    cu = Float.CU + int(ask[Ask.PRECISION])
    freed = count * milli / WHOLE  # a placement lowers fragmentation by at most the accelerators it takes
    best = second = local = -1
    best_score = second_score = local_score = 0.0
    scratch = np.zeros(max(acc_free.shape[1], 1), dtype=np.int64)
    sort = np.zeros(max(acc_free.shape[1], 1), dtype=np.int64)
    top = headroom(shapes, weights)
    mask = np.uint64(keys.shape[0] - 1)
    for k in range(counts.shape[0]):
        counts[k] = 0
    visited = 0
    n_units = tally[Tally.LIVE] if grouped else units.shape[0]
    rows, row_costs = np.empty(n_units, dtype=np.int64), np.empty(n_units)  # the feasible, filter's output
    seeds = np.full(3, -1, dtype=np.int64)  # the two cheapest feasible and the cheapest local: scored first
    m = 0
    for k in range(n_units):
        if grouped:  # the group's figures, copied in the order of the list: read in order, not row by row
            g = groups[k, Group.LIVE]
            i, size, r, fi, ff = groups[g, Group.HEAD], groups[g, Group.SIZE], k, live_ints, live_floats
        else:
            i, size, r, fi, ff = units[k], 1, units[k], ints, floats
        visited += size
        hub = fi[r, Int.HUB]
        v = verdict(
            fi[r, Int.HEALTHY],
            arch_ok[fi[r, Int.ARCH]] != 0 and ff[r, cu] > 0,
            any_model or model_ok[fi[r, Int.MODEL]] != 0,
            any_province or province_ok[fi[r, Int.PROVINCE]] != 0,
            rtt[origin, hub],
            tier,
            fi[r, Int.CPU_FREE],
            fi[r, Int.MEM_FREE],
            fi[r, Int.WHOLE_FREE],
            fi[r, Int.BEST_SHARE],
            cpu,
            mem,
            count,
            milli,
        )
        c = 0.0
        if v == Verdict.FEASIBLE:
            node_share = share(fi[r, Int.N_ACC], fi[r, Int.CPU_TOTAL], cpu, count, milli)
            compute = compute_rate(ff[r, cu], ff[r, Float.UNIT_PRICE], ff[r, Float.PRICE_INDEX])
            rate = compute + ff[r, Float.METER_KW] * per_kwh[fi[r, Int.PROVINCE]]
            c = cost(node_share, hours, rate, input_gb, transfer[data_hub, hub])
            if budget > 0 and c > budget:
                v = Verdict.BUDGET
        counts[v] += size
        if scores.shape[0] > 0:
            j = i
            while j >= 0:  # every node of the group
                scores[j] = c if v == Verdict.FEASIBLE else np.inf
                j = links[j, Link.NEXT] if grouped else -1
        if v != Verdict.FEASIBLE:
            continue
        rows[m], row_costs[m] = i, c
        if seeds[0] < 0 or before(c, i, row_costs[seeds[0]], rows[seeds[0]]):
            seeds[0], seeds[1] = m, seeds[0]
        elif seeds[1] < 0 or before(c, i, row_costs[seeds[1]], rows[seeds[1]]):
            seeds[1] = m
        if hub == origin and (seeds[2] < 0 or before(c, i, row_costs[seeds[2]], rows[seeds[2]])):
            seeds[2] = m
        m += 1
    for t in range(m + 3):  # score: the seeds first, so the runner-up's score rules most of the rest out
        q = seeds[t] if t < 3 else t - 3
        offered = False  # each once: a seed is not offered again
        for earlier in range(min(t, 3)):
            offered = offered or seeds[earlier] == q
        if q < 0 or offered:
            continue
        i, c = rows[q], row_costs[q]
        hub = ints[i, Int.HUB]
        frag = 0.0
        if weight != 0:  # weighed at zero it would change nothing
            floor = c - weight * freed  # the lowest score fragmentation could give this node
            if weight > 0 and beaten(floor, hub == origin, second, second_score, local, local_score):
                continue
            if ints[i, Int.WHOLE_FREE] > 0 or ints[i, Int.BEST_SHARE] > 0:  # else nothing free to lose
                # remembered per distinct state in a direct-mapped table; looked up here, not in a call
                # taking the arrays, whose reference counting would cost more than the lookup
                h = state_key(i, ints, cpu, mem, count, milli, version, top)
                slot = np.int64(h & mask)
                if keys[slot] == h:
                    frag = values[slot]
                else:
                    # nor can it lose more than the node loses now (the workload's loss is never below 0); taking
                    # whole accelerators lowers only the loss of shapes that cannot run, by at most their share
                    now = remembered(i, ints, acc_free, ints[i, Int.CPU_FREE], ints[i, Int.MEM_FREE], shapes, weights,
                                     keys, values, version, top, sort)  # fmt: skip
                    gain = min(freed, now)
                    if milli == WHOLE:
                        free = 0
                        for a in range(ints[i, Int.N_ACC]):
                            free += acc_free[i, a]
                        gain = min(gain, count * now * WHOLE / free)
                    if weight > 0 and beaten(c - weight * gain - ROUNDING, hub == origin, second, second_score, local,
                                             local_score):  # fmt: skip
                        continue
                    frag = fragmentation(
                        i, ints, acc_free, cpu, mem, count, milli, shapes, weights, keys, values, version, scratch
                    )
                    keys[slot], values[slot] = h, frag
        score = c + weight * frag
        best, best_score, second, second_score = select(score, i, best, best_score, second, second_score)
        following = links[i, Link.NEXT] if grouped else -1
        if following >= 0:  # the group's next row is the runner-up, should its lowest be the best
            best, best_score, second, second_score = select(score, following, best, best_score, second, second_score)
        if hub == origin and (local < 0 or before(score, i, local_score, local)):
            local, local_score = i, score
    counts[Verdict.AVOIDED] += ints.shape[0] - visited
    picks[0], picks[1], picks[2] = best, second, local
    for k in range(3):
        costs[k] = 0.0
        i = picks[k]
        if i >= 0:
            node_share = share(ints[i, Int.N_ACC], ints[i, Int.CPU_TOTAL], cpu, count, milli)
            compute = compute_rate(floats[i, cu], floats[i, Float.UNIT_PRICE], floats[i, Float.PRICE_INDEX])
            rate = compute + floats[i, Float.METER_KW] * per_kwh[ints[i, Int.PROVINCE]]
            costs[k] = cost(node_share, hours, rate, input_gb, transfer[data_hub, ints[i, Int.HUB]])
    return counts[Verdict.FEASIBLE]


@njit(cache=True)
def summarise_accelerators(i, ints, acc_free):
    """Refreshes node i's count of whole free accelerators, its largest free share of a used one and the
    key of its free multiset."""
    ints[i, Int.ACC_KEY] = np.int64(multiset_key(i, ints, acc_free, np.zeros(acc_free.shape[1], dtype=np.int64)))
    whole = 0
    share = 0
    for a in range(ints[i, Int.N_ACC]):
        free = acc_free[i, a]
        if free == WHOLE:
            whole += 1
        elif free > share:
            share = free
    ints[i, Int.WHOLE_FREE] = whole
    ints[i, Int.BEST_SHARE] = share


@njit(cache=True)
def reserve(i, ints, acc_free, cpu, mem, count, milli, shapes, weights, keys, values, version, chosen):
    """Takes the task's resources on node i; writes the accelerator indices into `chosen`, returns their count.
    The accelerators are those `fragmentation` scored: a share's is the one it chose, whole ones the first free."""
    if count == 1 and milli < WHOLE:
        fragmentation(i, ints, acc_free, cpu, mem, count, milli, shapes, weights, keys, values, version, chosen)
    else:
        found = 0
        for a in range(ints[i, Int.N_ACC]):
            if found < count and acc_free[i, a] == WHOLE:
                chosen[found] = a
                found += 1
    ints[i, Int.CPU_FREE] -= cpu
    ints[i, Int.MEM_FREE] -= mem
    taken = 0 if count == 0 else count
    for k in range(taken):
        acc_free[i, chosen[k]] -= milli
    summarise_accelerators(i, ints, acc_free)
    return taken


@njit(cache=True)
def release(i, ints, acc_free, cpu, mem, milli, chosen, n_chosen):
    """Gives back what `reserve` took."""
    ints[i, Int.CPU_FREE] += cpu
    ints[i, Int.MEM_FREE] += mem
    for k in range(n_chosen):
        acc_free[i, chosen[k]] += milli
    summarise_accelerators(i, ints, acc_free)
