"""Event-time windows without Faust: 10-s panes summed with NumPy, merged into hopping windows.

Telemetry is summed into tumbling 10-s panes per scope (node, cluster, hub, province), one chunk of
telemetry offsets at a time. Panes are additive, so partials from several workers, or from one worker at
several times, merge exactly; each partial is kept by the chunk it sums, so a chunk read again after a
crash replaces its first delivery instead of adding to it. The hopping windows (1 min every 10 s, 5 min
every minute) are sums of the panes they cover.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import numpy as np

from suanwang.clock import HOUR_MS
from suanwang.streams.node_panes import COLUMNS, NodeBlock, NodePanes

PANE_MS = 10_000
HOPPING_MS: tuple[tuple[int, int], ...] = ((60_000, 10_000), (300_000, 60_000))  # (length, hop)
LONGEST_MS = max(length for length, _hop in HOPPING_MS)
SCOPE_KINDS = ("node", "cluster", "hub", "province")
_SUMS = ("samples", "cpu_sum", "mem_sum", "acc_sum", "power_sum", "facility_sum", "green_sum")
_MAXES = ("cpu_max", "mem_max", "acc_max")


class EventClock:
    """Event time that keeps moving with the wall clock while no event arrives.

    A quiet stream would otherwise never close its last windows, and a silent node never be missed."""

    def __init__(self) -> None:
        self.max_event_ms = 0
        self._wall_at_max = 0.0

    def saw(self, event_ms: int) -> None:
        if event_ms > self.max_event_ms:
            self.max_event_ms = event_ms
            self._wall_at_max = time.monotonic()

    def now_ms(self) -> int:
        if not self.max_event_ms:
            return 0
        return self.max_event_ms + int((time.monotonic() - self._wall_at_max) * 1000)


@dataclass(slots=True)
class Pane:
    """Sums over the samples of one scope in one 10-s pane; `nodes` is how many distinct nodes they came from."""

    samples: int = 0
    nodes: int = 0
    cpu_sum: float = 0.0
    cpu_max: float = 0.0
    mem_sum: float = 0.0
    mem_max: float = 0.0
    acc_sum: float = 0.0
    acc_max: float = 0.0
    load_min: float = 1.0
    power_sum: float = 0.0
    facility_sum: float = 0.0
    green_sum: float = 0.0
    free_cpu: dict[str, float] = field(default_factory=dict)
    free_acc: dict[str, float] = field(default_factory=dict)

    def merge(self, other: Pane) -> None:
        """Adds a partial pane of the same scope and time (from another worker, or arriving later)."""
        for name in _SUMS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in _MAXES:
            setattr(self, name, max(getattr(self, name), getattr(other, name)))
        self.nodes += other.nodes  # summed over a window's panes; a pane's parts carry none: see PaneParts.total
        self.load_min = min(self.load_min, other.load_min)
        for mine, theirs in ((self.free_cpu, other.free_cpu), (self.free_acc, other.free_acc)):
            for cls, value in theirs.items():
                mine[cls] = mine.get(cls, 0.0) + value

    def to_record(self) -> dict[str, Any]:
        """The ScopePane fields of this pane but its nodes, which travel as their ids."""
        return {name: getattr(self, name) for name in _PART_FIELDS}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Pane:
        return cls(**{name: record[name] for name in _PART_FIELDS})


_PART_FIELDS = tuple(f.name for f in fields(Pane) if f.name != "nodes")
_FIGURES = tuple(f.name for f in fields(Pane) if f.type == "float")  # after samples and nodes, before free_*


@dataclass
class Samples:
    """A batch of valid telemetry as columns, joined with each node's registration and its grid hour."""

    event_ms: np.ndarray
    scope_keys: dict[str, list[str]]  # scope kind -> key of each sample
    cpu: np.ndarray
    mem: np.ndarray
    acc: np.ndarray
    power_kw: np.ndarray
    pue: np.ndarray
    green: np.ndarray
    compute_class: list[str]
    cpu_milli: np.ndarray
    accelerators: np.ndarray


NODE_ID_SEPARATOR = "\x1f"  # ASCII's unit separator, which no node id is expected to contain


def pane_sums(batch: Samples) -> Iterator[tuple[str, str, int, Pane, str]]:
    """(scope kind, scope key, pane start, partial pane, its node ids joined) for every scope and pane the
    batch touches. A node scope's ids are empty: its one node is the scope."""
    pane_start = batch.event_ms - batch.event_ms % PANE_MS
    load = np.maximum(batch.cpu, batch.acc)
    facility = batch.power_kw * batch.pue
    free_cpu = batch.cpu_milli * (1.0 - batch.cpu)
    free_acc = batch.accelerators * (1.0 - batch.acc)
    class_names, class_of = _codes(batch.compute_class)
    codes = {kind: _codes(batch.scope_keys[kind]) for kind in SCOPE_KINDS}
    for kind in SCOPE_KINDS:
        key_values, key_index = codes[kind]
        group_id = key_index.astype(np.int64) * (1 << 40) + pane_start // PANE_MS
        groups, inverse = np.unique(group_id, return_inverse=True)
        n = len(groups)
        counts = np.bincount(inverse, minlength=n)
        sums = {
            "cpu_sum": _total(inverse, n, batch.cpu),
            "mem_sum": _total(inverse, n, batch.mem),
            "acc_sum": _total(inverse, n, batch.acc),
            "power_sum": _total(inverse, n, batch.power_kw),
            "facility_sum": _total(inverse, n, facility),
            "green_sum": _total(inverse, n, facility * batch.green),
        }
        maxes = {
            "cpu_max": _extreme(inverse, n, batch.cpu, np.maximum, 0.0),
            "mem_max": _extreme(inverse, n, batch.mem, np.maximum, 0.0),
            "acc_max": _extreme(inverse, n, batch.acc, np.maximum, 0.0),
        }
        load_min = _extreme(inverse, n, load, np.minimum, 1.0)
        free_by_class = {
            str(cls): (
                _total(inverse, n, np.where(class_of == c, free_cpu, 0.0)),
                _total(inverse, n, np.where(class_of == c, free_acc, 0.0)),
            )
            for c, cls in enumerate(class_names)
        }
        present = {str(cls): np.bincount(inverse[class_of == c], minlength=n) > 0 for c, cls in enumerate(class_names)}
        nodes = [""] * n if kind == "node" else _nodes_of(inverse, *codes["node"], n)
        sample_of = np.empty(n, dtype=np.int64)
        sample_of[inverse] = np.arange(len(inverse))  # any sample of each group: it names the key and pane
        keys, starts = [key_values[k] for k in key_index[sample_of].tolist()], pane_start[sample_of].tolist()
        figures = {**sums, **maxes, "load_min": load_min}
        rows = zip(*(figures[name].tolist() for name in _FIGURES), strict=True)  # plain floats, in Pane's order
        free = [(cls, cpu.tolist(), acc.tolist(), present[cls].tolist()) for cls, (cpu, acc) in free_by_class.items()]
        for g, (samples, row) in enumerate(zip(counts.tolist(), rows, strict=True)):
            cpu_by_class = {cls: cpu[g] for cls, cpu, _, here in free if here[g]}
            acc_by_class = {cls: acc[g] for cls, _, acc, here in free if here[g]}
            pane = Pane(samples, nodes[g].count(NODE_ID_SEPARATOR) + 1, *row, cpu_by_class, acc_by_class)
            yield kind, keys[g], starts[g], pane, nodes[g]


def _total(inverse: np.ndarray, n: int, values: np.ndarray) -> np.ndarray:
    return np.bincount(inverse, weights=values, minlength=n)


def _extreme(inverse: np.ndarray, n: int, values: np.ndarray, ufunc: np.ufunc, start: float) -> np.ndarray:
    out = np.full(n, start)
    ufunc.at(out, inverse, values)
    return out


def _codes(values: list[str]) -> tuple[list[str], np.ndarray]:
    """The distinct values, sorted, and each value's index among them (`np.unique`'s answer, by hashing:
    sorting thousands of strings costs milliseconds)."""
    first_seen: dict[str, int] = {}
    seen = np.fromiter((first_seen.setdefault(v, len(first_seen)) for v in values), np.int64, len(values))
    names = sorted(first_seen)
    rank = np.empty(len(names), dtype=np.int64)
    rank[[first_seen[name] for name in names]] = np.arange(len(names))
    return names, rank[seen]


def _nodes_of(inverse: np.ndarray, names: list[str], node_index: np.ndarray, n: int) -> list[str]:
    """The distinct node ids of each group, joined."""
    pairs = np.unique(inverse.astype(np.int64) * len(names) + node_index)
    cuts = np.searchsorted(pairs // len(names), np.arange(1, n))
    return [
        NODE_ID_SEPARATOR.join(names[m] for m in members.tolist()) for members in np.split(pairs % len(names), cuts)
    ]


def windows_of(pane_start: int) -> Iterator[tuple[int, int]]:
    """(length, end) of every hopping window that holds the pane starting at `pane_start`."""
    for length, hop in HOPPING_MS:
        end = pane_start - pane_start % hop + hop
        while end - length <= pane_start:
            yield length, end
            end += hop


@dataclass(frozen=True, order=True)
class Run:
    """One worker's uninterrupted pass over a telemetry partition, from `offset` (where it took the partition
    up); runs of one partition sort in the order they happened: commits only move forward."""

    offset: int
    started_ms: int


@dataclass(frozen=True)
class Chunk:
    """What a partial pane sums: the offsets from `start` of one telemetry partition, read in one run."""

    partition: int
    run: Run
    start: int


class Runs:
    """The runs seen per telemetry partition. A newer run reads every offset from its start again, so a chunk
    of an older run at or past that start is superseded: its samples come again in the newer run's chunks."""

    def __init__(self) -> None:
        self.seen: dict[int, set[Run]] = defaultdict(set)

    def see(self, partition: int, run: Run) -> bool:
        """Records a run; True the first time it is seen."""
        if run in self.seen[partition]:
            return False
        self.seen[partition].add(run)
        return True

    def superseded(self, chunk: Chunk) -> bool:
        return any(run > chunk.run and run.offset <= chunk.start for run in self.seen[chunk.partition])


class PaneParts:
    """One scope's pane as its partials, kept apart by chunk: a chunk delivered twice counts once.

    A pane with one partial keeps it without a dict, as itself the pane's total; one with several (a chunk spans
    half a pane, and a scope may be fed by several telemetry partitions) keeps them by chunk and a merged copy."""

    __slots__ = ("_chunk", "_part", "_more", "_total", "nodes")  # ten minutes of every cluster, hub and province

    def __init__(self) -> None:
        self._chunk: Chunk | None = None  # the one partial, while there is one
        self._part: Pane | None = None
        self._more: dict[Chunk, Pane] | None = None  # every partial by chunk, once there are several
        # the codes of the nodes summed: a node's samples may span chunks, so it is counted once in the union;
        # codes, not their ids, as a hub's pane names a thousand nodes and ten minutes of panes are kept
        self.nodes: np.ndarray | None = None
        self._total: Pane | None = None

    @property
    def chunks(self) -> list[Chunk]:
        if self._more is not None:
            return list(self._more)
        return [] if self._chunk is None else [self._chunk]

    def put(self, chunk: Chunk, part: Pane, nodes: np.ndarray | None = None) -> None:
        """Keeps a partial by its chunk; `nodes`: the codes of the nodes it sums (sorted, distinct)."""
        if self._more is None and self._chunk in (None, chunk):
            self._chunk, self._part = chunk, part
        else:
            if self._more is None:
                self._more = {self._chunk: self._part}
                self._chunk = self._part = None
            self._more[chunk] = part
        if nodes is not None:  # a node scope's parts carry none
            self.nodes = nodes if self.nodes is None else np.union1d(self.nodes, nodes)
        self._total = None

    def drop(self, chunks: list[Chunk]) -> None:
        for chunk in chunks:
            if self._more is not None:
                del self._more[chunk]
            elif chunk == self._chunk:
                self._chunk = self._part = None
        self._total = None

    def forget_total(self) -> None:
        """Drops the merged copy once no open window needs it (a late partial makes it again)."""
        self._total = None

    def total(self) -> Pane:
        if self._total is None:
            if self._more is None and self._part is not None:
                total = self._part  # no copy: windows merge it into their own sums, never into it
            else:
                total = Pane(load_min=1.0)
                for part in (self._more or {}).values():
                    total.merge(part)
            named = 0 if self.nodes is None else len(self.nodes)
            total.nodes = named or min(total.samples, 1)  # a node scope sends no ids: it is its node
            self._total = total
        return self._total


@dataclass
class Window:
    """A closed hopping window of one scope: the merge of its panes."""

    scope_kind: str
    scope_key: str
    length_ms: int
    end_ms: int
    panes: int
    total: Pane


Outcome = Literal["added", "too_late", "superseded"]


class HoppingWindows:
    """Merges the partial panes of the scopes this worker owns and publishes each hopping window once its end
    is safely past.

    A partial arriving after its windows went out reopens them: they are published again, corrected, and
    the newer version replaces the older (the rollups table keeps the latest per window). Scopes are
    remembered by the chunk-topic partition they arrive on, so a worker can let go of a partition's."""

    def __init__(self, grace_ms: int) -> None:
        self.grace_ms = grace_ms
        self.runs = Runs()
        self.panes: dict[tuple[str, str], dict[int, PaneParts]] = defaultdict(dict)
        self.partition_of: dict[tuple[str, str], int] = {}
        self.pending: dict[int, set[tuple[str, str, int]]] = defaultdict(set)  # end -> (kind, key, length) due
        self.node_panes = NodePanes()  # the node scope's panes, as columns: most of what a worker keeps
        # end -> (length, chunk partition) -> the codes of the nodes whose window of that length is due then
        self.node_pending: dict[int, dict[tuple[int, int], list[np.ndarray]]] = defaultdict(lambda: defaultdict(list))
        self._evicted_before = 0  # panes starting before this are gone

    def oldest_kept_ms(self, now_ms: int) -> int:
        """The lateness bound: panes before this start are dropped, so a late one never half-rewrites a window.

        Twice the longest window: a partial reaching this worker a window behind the others still counts."""
        return now_ms - keep_ms(self.grace_ms)

    def add(
        self,
        kind: str,
        key: str,
        start: int,
        chunk: Chunk,
        part: Pane,
        node_ids: str,
        now_ms: int,
        partition: int,
    ) -> Outcome:
        """Keeps a partial pane by its chunk, replacing an earlier delivery of the same chunk."""
        refused = self._refused(start, chunk, now_ms)
        if refused:
            return refused
        self.partition_of[(kind, key)] = partition
        scope = self.panes[(kind, key)]
        if start not in scope:
            scope[start] = PaneParts()
        scope[start].put(chunk, part, self._codes(node_ids) if node_ids else None)
        for length, end in windows_of(start):
            self.pending[end].add((kind, key, length))
        return "added"

    def add_nodes(
        self, start: int, chunk: Chunk, bucket: str, panes: list[dict[str, Any]], now_ms: int, partition: int
    ) -> Outcome:
        """Keeps the partial panes of nodes a chunk sent in one bucket (ScopePane records, all starting at
        `start`) as one block, as `add` keeps each of another scope's."""
        refused = self._refused(start, chunk, now_ms)
        if refused:
            return refused
        block = NodeBlock.of(panes, self.node_panes.nodes, self.node_panes.classes)
        self.node_panes.put(start, (chunk, bucket), partition, block)
        for length, end in windows_of(start):
            self.node_pending[end][(length, partition)].append(block.codes)
        return "added"

    def _codes(self, node_ids: str) -> np.ndarray:
        names = self.node_panes.nodes
        return np.unique(np.fromiter(map(names.of, node_ids.split(NODE_ID_SEPARATOR)), np.int32))

    def _refused(self, start: int, chunk: Chunk, now_ms: int) -> Outcome | None:
        if start < self.oldest_kept_ms(now_ms):
            return "too_late"
        if self.runs.see(chunk.partition, chunk.run):
            self._drop_superseded(chunk.partition)
        if self.runs.superseded(chunk):  # also the first chunk of a run older than one seen (a zombie's)
            return "superseded"
        return None

    def _drop_superseded(self, partition: int) -> None:
        """Parts a newer run will send again. Their windows are not marked: the parts coming again will."""
        self.node_panes.drop(lambda part, _p: part[0].partition == partition and self.runs.superseded(part[0]))
        for scope in self.panes.values():
            for pane in scope.values():
                stale = [c for c in pane.chunks if c.partition == partition and self.runs.superseded(c)]
                if stale:
                    pane.drop(stale)

    def forget(self, partitions: set[int]) -> None:
        """Lets go of the scopes arriving on these partitions (another worker takes them over)."""
        gone = {scope for scope, p in self.partition_of.items() if p in partitions}
        for scope in gone:
            del self.partition_of[scope]
            self.panes.pop(scope, None)
        self._keep_pending(lambda _end, w: w[:2] not in gone)
        self.node_panes.drop(lambda _chunk, p: p in partitions)
        self._keep_node_pending(lambda _end, p: p not in partitions)

    def settle(self, partitions: set[int], published_by_ms: int) -> None:
        """After reading a partition back: its windows due by `published_by_ms` went out before, whole."""
        self._keep_pending(
            lambda end, w: self.partition_of.get(w[:2]) not in partitions or end + self.grace_ms > published_by_ms
        )
        self._keep_node_pending(lambda end, p: p not in partitions or end + self.grace_ms > published_by_ms)

    def _keep_pending(self, keep: Callable[[int, tuple[str, str, int]], bool]) -> None:
        for end in list(self.pending):
            kept = {w for w in self.pending[end] if keep(end, w)}
            if kept:
                self.pending[end] = kept
            else:
                del self.pending[end]

    def _keep_node_pending(self, keep: Callable[[int, int], bool]) -> None:
        for end in list(self.node_pending):
            due = self.node_pending[end]
            for length, partition in [w for w in due if not keep(end, w[1])]:
                del due[(length, partition)]
            if not due:
                del self.node_pending[end]

    def close(self, now_ms: int) -> list[Window]:
        """Windows due for publication, oldest first; panes no window can need any more are dropped. Only the
        ends due are looked at: a worker holds every node's windows, and this runs each second."""
        out = []
        for end in sorted(e for e in {*self.pending, *self.node_pending} if e + self.grace_ms <= now_ms):
            for kind, key, length in sorted(self.pending.pop(end, ()), key=lambda w: w[2]):
                out.append(self._window(kind, key, length, end))
            codes_by_length: dict[int, list[np.ndarray]] = defaultdict(list)
            for (length, _partition), codes in self.node_pending.pop(end, {}).items():
                codes_by_length[length] += codes
            for length in sorted(codes_by_length):
                out += self._node_windows(length, end, np.unique(np.concatenate(codes_by_length[length])))
        self._evict(now_ms)
        return out

    def _window(self, kind: str, key: str, length: int, end: int) -> Window:
        scope = self.panes[(kind, key)]
        starts = [s for s in scope if end - length <= s < end and scope[s].chunks]  # not a pane all dropped
        total = Pane(load_min=1.0)
        for s in starts:
            total.merge(scope[s].total())
        return Window(kind, key, length, end, len(starts), total)

    def _node_windows(self, length: int, end: int, codes: np.ndarray) -> list[Window]:
        """The windows of the nodes `codes` (those with samples in it), summed as columns."""
        totals = self.node_panes.totals([s for s in self.node_panes.blocks if end - length <= s < end], codes)
        names, classes = self.node_panes.nodes.names, self.node_panes.classes.names
        out = []
        rows = zip(totals.codes.tolist(), totals.figures.tolist(), totals.panes.tolist(), strict=True)
        for (code, figures, panes), cpu, acc in zip(rows, totals.free_cpu, totals.free_acc, strict=True):
            total = Pane(**dict(zip(COLUMNS, figures, strict=True)), nodes=panes)
            total.samples = int(total.samples)
            total.free_cpu = {classes[c]: v for c, v in cpu.items()}
            total.free_acc = {classes[c]: v for c, v in acc.items()}
            out.append(Window("node", names[code], length, end, panes, total))
        return out

    def _evict(self, now_ms: int) -> None:
        """Drops the panes before the lateness bound, once per pane it moves: each pass visits every scope."""
        oldest_needed = self.oldest_kept_ms(now_ms)
        if oldest_needed - self._evicted_before < PANE_MS:
            return
        self._evicted_before = oldest_needed
        self.node_panes.evict(oldest_needed)
        past_windows = now_ms - self.grace_ms - LONGEST_MS - PANE_MS  # panes every window of has closed
        for scope_key in list(self.panes):
            scope = self.panes[scope_key]
            for start in [s for s in scope if s < oldest_needed]:
                del scope[start]
            for start, pane in scope.items():
                if start < past_windows:
                    pane.forget_total()
            if not scope:
                del self.panes[scope_key]
                self.partition_of.pop(scope_key, None)


def keep_ms(grace_ms: int) -> int:
    """How far behind the event clock a pane is still kept: twice the longest window, the grace and a pane."""
    return grace_ms + 2 * LONGEST_MS + PANE_MS


def rollup_fields(window: Window, nodes_total: int) -> dict[str, Any]:
    """The Rollup record fields of a window: means per sample, scope power as the sum over its nodes."""
    t = window.total
    n = max(t.samples, 1)
    nodes_online = max(1, round(t.nodes / max(window.panes, 1)))  # nodes seen per pane, on average
    power_kw = t.power_sum / n * nodes_online
    return {
        "scope_kind": window.scope_kind,
        "scope_key": window.scope_key,
        "window_s": window.length_ms // 1000,
        "window_start": window.end_ms - window.length_ms,
        "window_end": window.end_ms,
        "samples": t.samples,
        "nodes_online": nodes_online,
        "nodes_total": max(nodes_total, nodes_online),
        "cpu_util_mean": t.cpu_sum / n,
        "cpu_util_max": t.cpu_max,
        "memory_util_mean": t.mem_sum / n,
        "memory_util_max": t.mem_max,
        "accelerator_util_mean": t.acc_sum / n,
        "accelerator_util_max": t.acc_max,
        "load_min": t.load_min,
        "power_kw_mean": power_kw,
        "energy_kwh": power_kw * window.length_ms / HOUR_MS,
        "pue": t.facility_sum / t.power_sum if t.power_sum else 0.0,
        "green_share": t.green_sum / t.facility_sum if t.facility_sum else 0.0,
        "free_cpu_milli": {c: v / n * nodes_online for c, v in t.free_cpu.items()},
        "free_accelerators": {c: v / n * nodes_online for c, v in t.free_acc.items()},
    }


def percentiles(values: Iterable[float]) -> dict[str, float]:
    """p50, p95, p99 and max of a window's values."""
    arr = np.fromiter(values, dtype=np.float64)
    p50, p95, p99 = np.percentile(arr, [50, 95, 99])
    return {"p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99), "max_ms": float(arr.max())}
