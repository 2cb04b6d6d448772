"""`suanwang bench packing`: the field's experiment on an openb GPU-sharing trace, ours beside the baselines.

As in the FGD paper (USENIX ATC 2023) and its simulator: tasks are sampled uniformly with replacement from
the pod list until their GPU requests reach INFLATE x the cluster's GPUs, placed one by one in that order
with no departures, and what does not fit is rejected. Every policy sees the same samples in the same run.
Each placement is applied to the bench's own copy of the cluster, which checks it independently (CPU,
memory, models, a share on one GPU that holds it, whole GPUs that are wholly free): a placement that breaks
a rule counts as a violation and is not applied. The figure is the share of the GPUs allocated when the
arrived requests reach 100 % and INFLATE x of the capacity.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import Progress

from suanwang.dispatcher.core import Dispatcher, warm_up
from suanwang.dispatcher.stages import WHOLE
from suanwang.dispatcher.state import MAX_ACCELERATORS
from suanwang.errors import SuanwangError
from suanwang.schemas.topics import PLACEMENT
from suanwang.simulator.trace import TraceNode, TraceTask, node_registration, task_request
from suanwang.topology import load_network

NODES_FILE, PODS_FILE = "openb_node_list_gpu_node.csv", "openb_pod_list_default.csv"
NODE_FIELDS = ("sn", "cpu_milli", "memory_mib", "gpu", "model")
POD_FIELDS = ("name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli", "gpu_spec")


@dataclass(frozen=True)
class TraceCluster:
    names: list[str]
    cpu: np.ndarray
    mem: np.ndarray
    gpus: np.ndarray
    models: list[str]


@dataclass(frozen=True)
class Pods:
    names: list[str]
    cpu: np.ndarray
    mem: np.ndarray
    count: np.ndarray  # GPUs asked for
    milli: np.ndarray  # thousandths of each GPU: below 1000 only for a share of one
    models: list[tuple[str, ...]]  # allowed GPU models; empty: any


def _csv(path: Path, fields: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [f for f in fields if f not in (reader.fieldnames or [])]
            if missing:
                raise SuanwangError(f"{path}: no column {', '.join(missing)} (an openb file has {', '.join(fields)})")
            return [(line, row) for line, row in enumerate(reader, start=2)]
    except OSError as exc:
        raise SuanwangError(f"cannot read {path}: {exc.strerror}") from None


def _whole(path: Path, line: int, row: dict[str, str], column: str, low: int, high: int) -> int:
    text = (row.get(column) or "").strip()
    try:
        value = int(float(text))
    except ValueError:
        raise SuanwangError(f"{path.name}:{line}: {column}={text!r} is not a number") from None
    if not low <= value <= high:
        raise SuanwangError(f"{path.name}:{line}: {column}={value} is outside {low}..{high}")
    return value


def read_openb(trace_dir: Path) -> tuple[TraceCluster, Pods]:
    """The GPU nodes and the pod list of an openb trace directory."""
    path = trace_dir / NODES_FILE
    rows = _csv(path, NODE_FIELDS)
    if not rows:
        raise SuanwangError(f"{path} has no node")
    nodes = [
        (r["sn"], _whole(path, n, r, "cpu_milli", 1, 10**9), _whole(path, n, r, "memory_mib", 1, 10**12),
         _whole(path, n, r, "gpu", 0, MAX_ACCELERATORS), r["model"].strip())
        for n, r in rows
    ]  # fmt: skip
    cluster = TraceCluster(
        [n[0] for n in nodes], *(np.array([n[k] for n in nodes], dtype=np.int64) for k in (1, 2, 3)),
        [n[4] for n in nodes],
    )  # fmt: skip
    path = trace_dir / PODS_FILE
    pods = []
    for n, r in _csv(path, POD_FIELDS):
        count = _whole(path, n, r, "num_gpu", 0, MAX_ACCELERATORS)
        milli = _whole(path, n, r, "gpu_milli", 0, WHOLE)
        if count == 1 and milli == 0:
            raise SuanwangError(f"{path.name}:{n}: gpu_milli=0 for num_gpu=1; a share is 1..1000")
        models = tuple(m.strip() for m in (r["gpu_spec"] or "").split("|") if m.strip())
        cpu, mem = _whole(path, n, r, "cpu_milli", 0, 10**9), _whole(path, n, r, "memory_mib", 0, 10**12)
        pods.append((r["name"], cpu, mem, count, milli if count == 1 else WHOLE * (count > 0), models))
    if not pods:
        raise SuanwangError(f"{path} has no pod")
    return cluster, Pods(
        [p[0] for p in pods], *(np.array([p[k] for p in pods], dtype=np.int64) for k in (1, 2, 3, 4)),
        [p[5] for p in pods],
    )  # fmt: skip


@dataclass(frozen=True)
class Variant:
    """How a run departs from the pod list as published, the way the FGD paper's variant traces do: a share
    of the GPU pods bound to one chip model (`gpu_spec`), and the share of GPU pods that ask for several whole
    GPUs (`multi_gpu`; None: as in the list)."""

    gpu_spec: float = 0.0
    multi_gpu: float | None = None

    def pods(self, pods: Pods, cluster: TraceCluster, rng: np.random.Generator) -> Pods:
        """The pod list with `gpu_spec` of its GPU pods bound to a model drawn as the cluster's GPUs are."""
        if self.gpu_spec == 0:
            return pods
        names = sorted({m for m, g in zip(cluster.models, cluster.gpus, strict=True) if g and m})
        supply = np.array([cluster.gpus[[m == name for m in cluster.models]].sum() for name in names], dtype=float)
        bound = (pods.count > 0) & (rng.random(len(pods.names)) < self.gpu_spec)
        drawn = rng.choice(len(names), size=len(pods.names), p=supply / supply.sum())
        models = [(names[drawn[k]],) if bound[k] else pods.models[k] for k in range(len(pods.names))]
        return replace(pods, models=models)

    def weights(self, pods: Pods) -> np.ndarray | None:
        """How likely each pod is drawn (None: uniformly): the GPU pods split `multi_gpu` to several whole GPUs
        and the rest to one, the pods without a GPU as often as in the list."""
        if self.multi_gpu is None:
            return None
        multi, single = pods.count > 1, pods.count == 1
        if (self.multi_gpu > 0 and not multi.any()) or (self.multi_gpu < 1 and not single.any()):
            raise SuanwangError(f"multi_gpu={self.multi_gpu}: the pod list has no pod of the kind to draw it from")
        gpu_pods = (multi | single).sum()
        w = np.where(pods.count == 0, 1.0, 0.0)
        if multi.any():
            w[multi] = self.multi_gpu * gpu_pods / multi.sum()
        if single.any():
            w[single] = (1 - self.multi_gpu) * gpu_pods / single.sum()
        return w / w.sum()


def sample(
    pods: Pods, gpus: int, inflate: float, rng: np.random.Generator, weights: np.ndarray | None = None
) -> np.ndarray:
    """Pod indices drawn with replacement (uniformly, or by `weights`) until their GPU requests reach
    `inflate` x `gpus`."""
    demand = pods.count * pods.milli / WHOLE
    if demand.sum() == 0:
        raise SuanwangError("the pod list asks for no GPU: nothing to pack")
    drawn: list[int] = []
    total = 0.0
    while total < inflate * gpus:
        batch = (
            rng.choice(len(pods.names), 4096, p=weights)
            if weights is not None
            else rng.integers(0, len(pods.names), 4096)
        )
        for i in batch:
            drawn.append(int(i))
            total += demand[i]
            if total >= inflate * gpus:
                break
    return np.array(drawn, dtype=np.int64)


class Free:
    """The bench's own copy of what each node has left: it checks every placement before applying it."""

    def __init__(self, cluster: TraceCluster) -> None:
        self.cluster = cluster
        self.cpu = cluster.cpu.copy()
        self.mem = cluster.mem.copy()
        exists = np.arange(MAX_ACCELERATORS)[None, :] < cluster.gpus[:, None]
        self.acc = np.where(exists, WHOLE, -1).astype(np.int64)  # -1: no such GPU
        self.allocated = 0  # thousandths of a GPU

    def feasible(self, pods: Pods, p: int) -> np.ndarray:
        """Nodes that can take pod p."""
        ok = (self.cpu >= pods.cpu[p]) & (self.mem >= pods.mem[p])
        if pods.models[p]:
            ok &= np.isin(np.array(self.cluster.models), pods.models[p])
        count, milli = pods.count[p], pods.milli[p]
        if count == 1 and milli < WHOLE:
            ok &= (self.acc >= milli).any(axis=1)
        elif count:
            ok &= (self.acc == WHOLE).sum(axis=1) >= count
        return ok

    def gpus_for(self, pods: Pods, p: int, node: int) -> list[int]:
        """The baselines' pick inside a node: the fullest GPU that holds a share, else the first whole ones."""
        count, milli, acc = pods.count[p], pods.milli[p], self.acc[node]
        if count == 1 and milli < WHOLE:
            fits = np.flatnonzero(acc >= milli)
            return [int(fits[np.argmin(acc[fits])])]
        return [int(g) for g in np.flatnonzero(acc == WHOLE)[:count]]

    def violation(self, pods: Pods, p: int, node: int, gpus: list[int]) -> str | None:
        """Why placing pod p on `node` with `gpus` breaks a rule, or None."""
        count, milli, acc = pods.count[p], pods.milli[p], self.acc[node]
        if self.cpu[node] < pods.cpu[p] or self.mem[node] < pods.mem[p]:
            return "cpu or memory"
        if pods.models[p] and self.cluster.models[node] not in pods.models[p]:
            return "model"
        if len(set(gpus)) != len(gpus) or len(gpus) != count or any(not 0 <= g < len(acc) for g in gpus):
            return "gpu count"
        if any(acc[g] < (milli if count == 1 and milli < WHOLE else WHOLE) for g in gpus):
            return "gpu capacity"
        return None

    def place(self, pods: Pods, p: int, node: int, gpus: list[int]) -> None:
        self.cpu[node] -= pods.cpu[p]
        self.mem[node] -= pods.mem[p]
        for g in gpus:
            self.acc[node, g] -= pods.milli[p]
        self.allocated += int(pods.count[p] * pods.milli[p])


def _gpu_free(free: Free) -> np.ndarray:
    return np.where(free.acc > 0, free.acc, 0).sum(axis=1)


def _after(free: Free, pods: Pods, p: int) -> tuple[np.ndarray, np.ndarray]:
    """Each node's CPU and GPU share left if pod p went there."""
    c = free.cluster
    cpu_left = (free.cpu - pods.cpu[p]) / c.cpu
    gpu_left = (_gpu_free(free) - pods.count[p] * pods.milli[p]) / np.maximum(c.gpus * WHOLE, 1)
    return cpu_left, gpu_left


def first_fit(free: Free, pods: Pods, p: int, ok: np.ndarray) -> int:
    return int(np.flatnonzero(ok)[0])


def best_fit(free: Free, pods: Pods, p: int, ok: np.ndarray) -> int:
    """The node left with the least of its CPU and GPUs free."""
    cpu_left, gpu_left = _after(free, pods, p)
    return int(np.flatnonzero(ok)[np.argmin((cpu_left + gpu_left)[ok])])


def dot_product(free: Free, pods: Pods, p: int, ok: np.ndarray) -> int:
    """Tetris: the node whose free CPU, memory and GPU line up best with the demand (each as a share)."""
    c = free.cluster
    demand = np.array([pods.cpu[p], pods.mem[p], pods.count[p] * pods.milli[p]], dtype=np.float64)
    left = np.stack([free.cpu / c.cpu, free.mem / c.mem, _gpu_free(free) / np.maximum(c.gpus * WHOLE, 1)], axis=1)
    scale = np.array([c.cpu.max(), c.mem.max(), max(c.gpus.max(), 1) * WHOLE])
    return int(np.flatnonzero(ok)[np.argmax((left * (demand / scale))[ok].sum(axis=1))])


def gpu_packing(free: Free, pods: Pods, p: int, ok: np.ndarray) -> int:
    """FGD's packing baseline: a share on a GPU already shared, then nodes already in use, fullest first."""
    used = _gpu_free(free) < free.cluster.gpus * WHOLE
    shared = ((free.acc > 0) & (free.acc < WHOLE) & (free.acc >= pods.milli[p])).any(axis=1)
    share = pods.count[p] == 1 and pods.milli[p] < WHOLE
    _, gpu_left = _after(free, pods, p)
    key = gpu_left - 2 * used - (4 * shared if share else 0)
    return int(np.flatnonzero(ok)[np.argmin(key[ok])])


def random_fit(rng: np.random.Generator) -> Callable[[Free, Pods, int, np.ndarray], int]:
    def pick(free: Free, pods: Pods, p: int, ok: np.ndarray) -> int:
        return int(rng.choice(np.flatnonzero(ok)))

    return pick


BASELINES = {"best_fit": best_fit, "first_fit": first_fit, "dot_product": dot_product, "gpu_packing": gpu_packing}


class Ours:
    """suanwang's dispatcher core, as the live service runs it, on the trace's nodes in one hub."""

    def __init__(self, cluster: TraceCluster) -> None:
        self.network = load_network()
        self.hub = self.network.hub_ids[0]
        self.core = Dispatcher(self.network)
        self.nodes = [
            TraceNode(name, self.hub, int(cpu), int(mem), int(g), model if g else "")
            for name, cpu, mem, g, model in zip(cluster.names, cluster.cpu, cluster.mem, cluster.gpus, cluster.models,
                                                strict=True)
        ]  # fmt: skip
        for node in self.nodes:
            self.core.nodes.register(node_registration(node, self.network))
        self.row = {name: k for k, name in enumerate(cluster.names)}
        self.archs = sorted({n.arch for n in self.nodes})
        self.sent = 0

    def __call__(self, pods: Pods, p: int) -> tuple[int, list[int]] | None:
        self.sent += 1
        task = TraceTask(f"{pods.names[p]}#{self.sent}", 0.0, None, int(pods.cpu[p]), int(pods.mem[p]),
                         int(pods.count[p]), int(pods.milli[p]) if pods.count[p] else 0, pods.models[p])  # fmt: skip
        spec, record = self.core.decide(task_request(task, self.archs, self.hub, self.network))
        if spec is not PLACEMENT:
            return None
        return self.row[record["node_id"]], list(record["accelerator_indices"])


def run_policy(name: str, cluster: TraceCluster, pods: Pods, order: np.ndarray, checkpoints: list[int],
               seed: int) -> dict[str, Any]:  # fmt: skip
    """One policy over one sample: GPUs allocated at each checkpoint (index into `order`), violations."""
    free = Free(cluster)
    ours = Ours(cluster) if name == "suanwang" else None
    pick = random_fit(np.random.default_rng(seed)) if name == "random" else BASELINES.get(name)
    capacity = int(cluster.gpus.sum()) * WHOLE
    shares, violations, placed, refused = [], 0, 0, 0
    marks = set(checkpoints)
    for k, p in enumerate(order):
        if ours is not None:
            answer = ours(pods, int(p))
            refused += answer is None and bool(free.feasible(pods, int(p)).any())
        else:
            ok = free.feasible(pods, int(p))
            answer = None
            if ok.any():
                node = pick(free, pods, int(p), ok)
                answer = node, free.gpus_for(pods, int(p), node)
        if answer is not None:
            if free.violation(pods, int(p), *answer):
                violations += 1
            else:
                free.place(pods, int(p), *answer)
                placed += 1
        if k + 1 in marks:
            shares.append(free.allocated / capacity)
    return {"allocated": shares, "violations": violations, "placed": placed, "refused_though_it_fit": refused}


POLICIES = ("suanwang", "best_fit", "first_fit", "dot_product", "gpu_packing", "random")


def bench_packing(
    trace_dir: Path, seeds: int, inflate: float, console: Console, variant: Variant = Variant()
) -> dict[str, Any]:
    """Every policy on the same `seeds` samples; per policy the median and range of GPUs allocated."""
    cluster, listed = read_openb(trace_dir)
    gpus = int(cluster.gpus.sum())
    warm_up(load_network())
    weights = variant.weights(listed)
    runs: dict[str, list[dict[str, Any]]] = {p: [] for p in POLICIES}
    drawn_multi = drawn_bound = drawn_gpu = 0
    with Progress(console=console, transient=True, disable=not console.is_terminal) as progress:
        job = progress.add_task("packing", total=seeds * len(POLICIES))
        for seed in range(seeds):
            rng = np.random.default_rng(seed)
            pods = variant.pods(listed, cluster, rng)
            order = sample(pods, gpus, inflate, rng, weights)
            arrived = np.cumsum((pods.count * pods.milli / WHOLE)[order])
            checkpoints = [int(np.searchsorted(arrived, gpus)) + 1, len(order)]
            drawn_gpu += int((pods.count[order] > 0).sum())
            drawn_multi += int((pods.count[order] > 1).sum())
            drawn_bound += sum(1 for p in order if pods.models[p])
            for name in POLICIES:
                runs[name].append(run_policy(name, cluster, pods, order, checkpoints, seed))
                progress.advance(job)
    labels = ("at_100", f"at_{round(inflate * 100)}")
    policies = {}
    for name, results in runs.items():
        row: dict[str, Any] = {}
        for k, label in enumerate(labels):
            values = [r["allocated"][k] for r in results]
            row[f"{label}_median"] = round(float(np.median(values)), 4)
            row[f"{label}_min"] = round(float(min(values)), 4)
            row[f"{label}_max"] = round(float(max(values)), 4)
        row["violations"] = sum(r["violations"] for r in results)
        row["refused_though_it_fit"] = sum(r["refused_though_it_fit"] for r in results)
        policies[name] = row
    return {
        "nodes": len(cluster.names),
        "gpus": gpus,
        "pods": len(pods.names),
        "seeds": seeds,
        "inflate": inflate,
        "gpu_pods_bound_to_a_model": round(drawn_bound / max(drawn_gpu, 1), 4),
        "gpu_pods_multi_gpu": round(drawn_multi / max(drawn_gpu, 1), 4),
        "policies": policies,
    }
