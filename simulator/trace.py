"""Recorded cluster traces (nodes.csv, tasks.csv): parsed row by row, bad rows reported and skipped.

The format follows the Alibaba GPU cluster traces: accelerator models are opaque names, and whatever
the nodes file lists is a valid model for that run. See the README, "Trace replay".
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from suanwang.bus import event
from suanwang.dispatcher.state import MAX_ACCELERATORS
from suanwang.errors import SuanwangError
from suanwang.topology import Network

NODE_COLUMNS = ("node_id", "hub", "cpu_milli", "memory_mib", "gpu", "gpu_model")
TASK_COLUMNS = ("task_id", "arrival_s", "duration_s", "cpu_milli", "memory_mib", "gpu", "gpu_milli", "gpu_models")
ABSURD = 10**9  # more milli-cores or MiB than any one node has
CPU_ARCH = "cpu"  # trace nodes name no architecture: CPU-only nodes get this one,
GPU_ARCH = "gpu"  # nodes with accelerators this one, and their model is the trace's own name


class RowError(ValueError):
    """One field of one row that cannot be used."""

    def __init__(self, file: str, line: int, column: str, message: str) -> None:
        super().__init__(f"{file}:{line}: {column}: {message}")
        self.file, self.line, self.column = file, line, column


@dataclass(frozen=True)
class TraceNode:
    node_id: str
    hub: str
    cpu_milli: int
    memory_mib: int
    gpu: int
    gpu_model: str

    @property
    def arch(self) -> str:
        return GPU_ARCH if self.gpu else CPU_ARCH


@dataclass(frozen=True)
class TraceTask:
    task_id: str
    arrival_s: float
    duration_s: float | None  # None: runs until the trace ends
    cpu_milli: int
    memory_mib: int
    gpu: int
    gpu_milli: int  # share of one accelerator when gpu == 1; 1000 otherwise
    gpu_models: tuple[str, ...]  # allowed models; empty: any


T = TypeVar("T")


@dataclass
class Parsed(Generic[T]):
    """The rows that parsed, and one error for each row that did not."""

    rows: list[T] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)


class _Row:
    """Typed access to one CSV row; each failure names the file, line and column."""

    def __init__(self, file: str, line: int, values: dict[str | None, Any]) -> None:
        self.file, self.line, self.values = file, line, values
        self.complete = None not in values and all(v is not None for v in values.values())

    def fail(self, column: str, message: str) -> RowError:
        return RowError(self.file, self.line, column, message)

    def text(self, column: str, required: bool = True) -> str:
        value = (self.values.get(column) or "").strip()
        if required and not value:
            raise self.fail(column, "is empty")
        return value

    def whole(self, column: str, low: int = 0, high: int = ABSURD) -> int:
        raw = self.text(column)
        try:
            value = int(raw)
        except ValueError:
            raise self.fail(column, f"{raw!r} is not a whole number") from None
        if not low <= value <= high:
            raise self.fail(column, f"{value} is not in {low}..{high}")
        return value

    def seconds(self, column: str, positive: bool = False) -> float:
        raw = self.text(column)
        try:
            value = float(raw)
        except ValueError:
            raise self.fail(column, f"{raw!r} is not a number of seconds") from None
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            raise self.fail(column, f"{raw} is not a {'positive' if positive else 'non-negative'} number of seconds")
        return value


def _rows(path: Path, columns: tuple[str, ...]) -> Iterator[_Row]:
    """Each data row of a CSV file whose header has every column (in any order)."""
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise SuanwangError(f"cannot read {path}: {exc.strerror}") from None
    with handle:
        reader = csv.DictReader(handle)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise SuanwangError(f"{path}: header lacks {', '.join(missing)}; expected {','.join(columns)}")
        for values in reader:
            yield _Row(path.name, reader.line_num, values)


def _parse(path: Path, columns: tuple[str, ...], build: Callable[[_Row], T], key: Callable[[T], str]) -> Parsed[T]:
    out: Parsed[T] = Parsed()
    seen: set[str] = set()
    for row in _rows(path, columns):
        try:
            if not row.complete:
                raise row.fail("row", "has a different number of fields than the header")
            item = build(row)
            if key(item) in seen:
                raise row.fail(columns[0], f"{key(item)!r} appears twice")
        except RowError as exc:
            out.errors.append(exc)
            continue
        seen.add(key(item))
        out.rows.append(item)
    return out


def read_nodes(path: Path, hubs: list[str], default_hub: str) -> Parsed[TraceNode]:
    """The nodes of a trace; an empty `hub` is `default_hub`, any other must be one of `hubs`."""

    def build(row: _Row) -> TraceNode:
        hub = row.text("hub", required=False) or default_hub
        if hub not in hubs:
            raise row.fail("hub", f"{hub!r} is not a hub ({', '.join(hubs)})")
        gpu = row.whole("gpu", 0, MAX_ACCELERATORS)
        model = row.text("gpu_model", required=False)
        if gpu and not model:
            raise row.fail("gpu_model", f"is empty for a node with gpu={gpu}")
        return TraceNode(
            row.text("node_id"), hub, row.whole("cpu_milli", 1), row.whole("memory_mib", 1), gpu, model if gpu else ""
        )

    return _parse(path, NODE_COLUMNS, build, lambda n: n.node_id)


def read_tasks(path: Path) -> Parsed[TraceTask]:
    """The tasks of a trace, in arrival order (ties keep file order)."""

    def build(row: _Row) -> TraceTask:
        gpu = row.whole("gpu", 0, MAX_ACCELERATORS)
        milli = row.whole("gpu_milli", 0, 1000)
        if gpu == 1 and milli == 0:
            raise row.fail("gpu_milli", "is 0 for a task with gpu=1; give its share of the accelerator, 1..1000")
        models = tuple(m.strip() for m in row.text("gpu_models", required=False).split("|") if m.strip())
        duration = row.seconds("duration_s", positive=True) if row.text("duration_s", required=False) else None
        return TraceTask(
            row.text("task_id"),
            row.seconds("arrival_s"),
            duration,
            row.whole("cpu_milli"),
            row.whole("memory_mib"),
            gpu,
            milli if gpu == 1 else 1000,
            models,
        )

    parsed = _parse(path, TASK_COLUMNS, build, lambda t: t.task_id)
    parsed.rows.sort(key=lambda t: t.arrival_s)
    return parsed


def report(parsed: Parsed[Any], limit: int = 20) -> list[str]:
    """Lines telling the user which rows were skipped and why (the first `limit`, then a count)."""
    lines = [f"skipped {e}" for e in parsed.errors[:limit]]
    if len(parsed.errors) > limit:
        lines.append(f"... and {len(parsed.errors) - limit} more rows skipped")
    return lines


# What a trace does not say about a node is filled in from these figures (modelling assumptions, as in
# network.yaml): power and throughput per CPU core and per accelerator, and the price of a unit-hour.
KW_PER_CORE, KW_PER_GPU, IDLE_SHARE = 0.007, 0.5, 0.25
UNITS_PER_CORE, UNITS_PER_GPU, YUAN_PER_UNIT_HOUR = 1 / 112, 5.0, 0.6


def node_registration(node: TraceNode, network: Network) -> dict[str, Any]:
    """The NodeRegistration of a trace node, placed in the first cluster of its hub."""
    cluster_id, cluster = next(iter(network.hubs[node.hub].clusters.items()))
    cores = node.cpu_milli / 1000
    power = KW_PER_CORE * cores + KW_PER_GPU * node.gpu
    return event(
        node_id=node.node_id,
        hub=node.hub,
        cluster=cluster_id,
        province=cluster.province,
        data_center=f"{cluster_id}-dc1",
        compute_class="GPU" if node.gpu else "CPU",
        chip_arch=node.arch,
        chip_model=node.gpu_model or CPU_ARCH,
        cpu_milli=node.cpu_milli,
        memory_mib=node.memory_mib,
        accelerators=node.gpu,
        accelerator_memory_mib=0,
        throughput=UNITS_PER_CORE * cores + UNITS_PER_GPU * node.gpu,
        power_kw=power,
        idle_power_kw=IDLE_SHARE * power,
        pue=cluster.pue,
        unit_price=YUAN_PER_UNIT_HOUR,
        active=True,
    )


def task_request(task: TraceTask, archs: list[str], origin_hub: str, network: Network) -> dict[str, Any]:
    """The TaskRequest of a trace task: accelerator tasks need a GPU node, others run on any node."""
    return event(
        task_id=task.task_id,
        tenant="trace",
        industry="trace",
        kind="trace",
        origin_hub=origin_hub,
        origin_province=network.hubs[origin_hub].city.province,
        data_hub=origin_hub,
        chip_archs=[GPU_ARCH] if task.gpu else archs,
        chip_models=list(task.gpu_models),
        cpu_milli=task.cpu_milli,
        memory_mib=task.memory_mib,
        accelerators=task.gpu,
        accelerator_milli=task.gpu_milli,
        duration_s=task.duration_s,
        latency_tier_ms=None,
        input_gb=0.0,
        allowed_provinces=[],
        deadline=None,
        budget_yuan=None,
    )
