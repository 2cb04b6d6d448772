"""The node scope's partial panes as columns: a worker keeps ten minutes of every node's panes, so they live
in a few arrays per chunk and pane, not as an object and two dicts each (about 1 kB a node pane, and the
worker's memory growing by a hundred MB a minute at 10,000 nodes)."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

SUMS = ("samples", "cpu_sum", "mem_sum", "acc_sum", "power_sum", "facility_sum", "green_sum")
MAXES = ("cpu_max", "mem_max", "acc_max")
COLUMNS = (*SUMS, *MAXES, "load_min")  # a node pane's figures, in this order
_MAX_AT = slice(len(SUMS), len(SUMS) + len(MAXES))
_LOAD_MIN = len(COLUMNS) - 1


class Names:
    """A dense code for each name seen (node ids, compute classes), so panes hold integers, not strings."""

    def __init__(self) -> None:
        self.code: dict[str, int] = {}
        self.names: list[str] = []

    def of(self, name: str) -> int:
        code = self.code.get(name)
        if code is None:
            code = self.code[name] = len(self.names)
            self.names.append(name)
        return code


@dataclass(frozen=True, slots=True)
class FreeByClass:
    """Free capacity of a block's rows per compute class, one entry per (row, class) the pane had."""

    rows: np.ndarray  # int64: the row of each entry
    classes: np.ndarray  # int64: its class code
    values: np.ndarray  # float64

    @classmethod
    def of(cls, maps: list[dict[str, float]], classes: Names) -> FreeByClass:
        entries = [
            (row, classes.of(name), value) for row, by_class in enumerate(maps) for name, value in by_class.items()
        ]
        rows, codes, values = zip(*entries, strict=True) if entries else ((), (), ())
        return cls(np.array(rows, dtype=np.int64), np.array(codes, dtype=np.int64), np.array(values, dtype=np.float64))


@dataclass(frozen=True, slots=True)
class NodeBlock:
    """One chunk's partial panes of some nodes, all of one pane start: row r is node `codes[r]`."""

    codes: np.ndarray  # int64 node codes
    figures: np.ndarray  # float64, one row per node, `COLUMNS` across
    free_cpu: FreeByClass
    free_acc: FreeByClass

    @classmethod
    def of(cls, panes: list[dict[str, Any]], nodes: Names, classes: Names) -> NodeBlock:
        """From ScopePane records of node scopes (one pane start, one chunk)."""
        return cls(
            np.array([nodes.of(p["scope_key"]) for p in panes], dtype=np.int64),
            np.array([[p[name] for name in COLUMNS] for p in panes], dtype=np.float64).reshape(
                len(panes), len(COLUMNS)
            ),
            FreeByClass.of([p["free_cpu"] for p in panes], classes),
            FreeByClass.of([p["free_acc"] for p in panes], classes),
        )


@dataclass(frozen=True, slots=True)
class NodeTotals:
    """A window's sums for the nodes that had samples in it: row r is node `codes[r]`."""

    codes: np.ndarray
    figures: np.ndarray  # `COLUMNS` across
    panes: np.ndarray  # how many of its panes each node had samples in
    free_cpu: list[dict[int, float]]  # per row: class code -> free capacity summed
    free_acc: list[dict[int, float]]


class NodePanes:
    """Every partial node pane kept, as blocks by pane start and by the part of a chunk they sum (a chunk's
    scopes travel in buckets; one delivered again replaces its first delivery), each with the chunk-topic
    partition it arrived on."""

    def __init__(self) -> None:
        self.nodes = Names()
        self.classes = Names()
        self.blocks: dict[int, dict[Hashable, tuple[int, NodeBlock]]] = {}

    def put(self, start: int, part: Hashable, partition: int, block: NodeBlock) -> None:
        self.blocks.setdefault(start, {})[part] = (partition, block)

    def drop(self, unwanted: Callable[[Any, int], bool]) -> None:
        """Drops the blocks whose (part, partition) is unwanted: superseded, or of a partition let go."""
        for start in list(self.blocks):
            by_part = self.blocks[start]
            for part in [k for k, (p, _b) in by_part.items() if unwanted(k, p)]:
                del by_part[part]
            if not by_part:
                del self.blocks[start]

    def evict(self, before_ms: int) -> None:
        for start in [s for s in self.blocks if s < before_ms]:
            del self.blocks[start]

    def totals(self, starts: Iterable[int], wanted: np.ndarray) -> NodeTotals:
        """Sums the panes starting at `starts` of the nodes whose codes are `wanted`, as `Pane.merge` would."""
        n = len(self.nodes.names)
        want = np.zeros(n, dtype=bool)
        want[wanted] = True
        codes, figures, panes = [], [], np.zeros(n, dtype=np.int64)
        free: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {"cpu": [], "acc": []}
        for start in starts:
            here = np.zeros(n, dtype=bool)
            for _partition, block in self.blocks.get(start, {}).values():
                keep = want[block.codes]
                codes.append(block.codes[keep])
                figures.append(block.figures[keep])
                here[block.codes[keep]] = True
                for name, entries in (("cpu", block.free_cpu), ("acc", block.free_acc)):
                    taken = keep[entries.rows]
                    free[name].append((block.codes[entries.rows[taken]], entries.classes[taken], entries.values[taken]))
            panes += here
        if not codes:
            return NodeTotals(np.zeros(0, dtype=np.int64), np.zeros((0, len(COLUMNS))), panes[:0], [], [])
        code, table = np.concatenate(codes), np.concatenate(figures)
        summed = np.zeros((n, len(COLUMNS)))
        for j in range(len(SUMS)):
            summed[:, j] = np.bincount(code, weights=table[:, j], minlength=n)
        for j in range(_MAX_AT.start, _MAX_AT.stop):
            np.maximum.at(summed[:, j], code, table[:, j])
        summed[:, _LOAD_MIN] = 1.0
        np.minimum.at(summed[:, _LOAD_MIN], code, table[:, _LOAD_MIN])
        present = np.flatnonzero(panes)
        row_of = np.full(n, -1, dtype=np.int64)
        row_of[present] = np.arange(len(present))
        return NodeTotals(
            present,
            summed[present],
            panes[present],
            _by_class(free["cpu"], row_of, len(present)),
            _by_class(free["acc"], row_of, len(present)),
        )


def _by_class(
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]], row_of: np.ndarray, rows: int
) -> list[dict[int, float]]:
    """Free capacity summed per (node, class), as a dict per output row; a class a pane had counts even at 0."""
    out: list[dict[int, float]] = [{} for _ in range(rows)]
    if not parts:
        return out
    codes, classes, values = (np.concatenate(column) for column in zip(*parts, strict=True))
    width = int(classes.max()) + 1 if len(classes) else 1
    keys, inverse = np.unique(codes * width + classes, return_inverse=True)
    sums = np.bincount(inverse, weights=values, minlength=len(keys))
    for key, value in zip(keys.tolist(), sums.tolist(), strict=True):
        out[row_of[key // width]][key % width] = value
    return out
