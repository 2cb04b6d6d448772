"""The task shapes the dispatcher has seen lately, weighted by how often they come: FGD's workload.

Fragmentation is measured against the work that will arrive, so the dispatcher learns it from the requests
themselves: each request adds 1 to its shape's weight (cpu and memory bucketed, the accelerator ask and the
chip models it names exact) and every weight decays with a half-life counted in requests. Before any
request the weights are a prior of the common shapes, so the first decisions already pack. The compiled
pass reads a snapshot taken every SNAPSHOT requests (and after 1, 2, 4 … while it first learns), so between
two its answers per node state can be remembered.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from suanwang.dispatcher.stages import ANY_MODELS, CPU_STEP, MEM_STEP, SHAPE_FIELDS, WHOLE

MAX_SHAPES = 64
HALF_LIFE = 2000  # requests
SNAPSHOT = 256  # requests between two versions of the weights the compiled pass reads
CACHE_SLOTS = 1 << 16  # remembered fragmentation answers, one per distinct node state and task shape
PRIOR = ((1, WHOLE), (1, 500), (2, WHOLE), (4, WHOLE), (8, WHOLE))  # (accelerators, thousandths of each)
PRIOR_WEIGHT = 1.0


Key = tuple[int, int, int, int, int]  # cpu bucket, memory bucket, accelerators, thousandths of each, models


class Shapes:
    """The arrays the compiled pass reads: `shapes` (columns: `stages.Shape`), their `weights` as of snapshot
    `version`, and the table of answers remembered for that version (`keys`, `values`). Between snapshots
    every shape seen is weighed; a snapshot keeps the MAX_SHAPES heaviest and forgets the rest."""

    def __init__(self) -> None:
        self.shapes = np.zeros((MAX_SHAPES, SHAPE_FIELDS), dtype=np.int64)
        self.weights = np.zeros(MAX_SHAPES, dtype=np.float64)
        self.version = 0
        self.keys = np.zeros(CACHE_SLOTS, dtype=np.uint64)
        self.values = np.zeros(CACHE_SLOTS, dtype=np.float64)
        # the shapes weighed since the last snapshot began: their rows, weights and keys, in the order seen
        self._rows: dict[Key, int] = {}
        self._keys: list[Key] = []
        self._live_shapes = np.zeros((MAX_SHAPES + SNAPSHOT, SHAPE_FIELDS), dtype=np.int64)
        self._live = np.zeros(MAX_SHAPES + SNAPSHOT)
        self._seen = 0
        self._scale = 1.0  # weights are stored divided by the decay so far, so a request costs O(1)
        self._decay = 0.5 ** (1 / HALF_LIFE)
        for count, milli in PRIOR:
            self._add((0, 0, count, milli, ANY_MODELS), PRIOR_WEIGHT)
        self._snapshot()

    def observe(self, cpu: int, mem: int, count: int, milli: int, models: int = ANY_MODELS) -> None:
        """One more request of this shape (`models`: a bit per chip model it may run on, or ANY_MODELS); every older
        one counts a little less."""
        self._scale /= self._decay
        if self._scale > 1e100:  # renormalise long before float range ends
            self._live /= self._scale
            self._scale = 1.0
        key = (cpu // CPU_STEP * CPU_STEP, mem // MEM_STEP * MEM_STEP, count, milli if count else 0, models)
        self._add(key, self._scale)
        self._seen += 1
        if self._seen % SNAPSHOT == 0 or self._seen & (self._seen - 1) == 0:  # often while it learns
            self._snapshot()

    def _add(self, key: Key, weight: float) -> None:
        row = self._rows.get(key)
        if row is None:
            row = self._rows[key] = len(self._keys)
            self._keys.append(key)
            self._live_shapes[row] = key
            self._live[row] = 0.0
        self._live[row] += weight

    def _snapshot(self) -> None:
        """The heaviest shapes and their weights as shares of their sum (the scale cancels out); a new version.
        Only they are weighed on."""
        n = len(self._keys)
        kept = _keep_heaviest(n, self._live, self._live_shapes, self.shapes, self.weights)
        if n > MAX_SHAPES:
            self._keys = [self._keys[k] for k in kept]
            self._rows = {key: row for row, key in enumerate(self._keys)}
        self.version += 1


@njit(cache=True)
def _keep_heaviest(n, live, live_shapes, shapes, weights):
    """`Shapes._snapshot`'s arrays, compiled (it runs within a decision): moves the MAX_SHAPES heaviest of the
    `n` shapes weighed to the front, in the order seen, publishes them as `shapes` and `weights`, and
    returns which rows they were."""
    kept = np.arange(n)
    if n > MAX_SHAPES:
        kept = np.sort(np.argsort(live[:n], kind="mergesort")[n - MAX_SHAPES :])  # ties: the latest seen
        for row in range(MAX_SHAPES):
            live[row] = live[kept[row]]
            live_shapes[row] = live_shapes[kept[row]]
    k = min(n, MAX_SHAPES)
    total = 0.0
    for row in range(k):  # in order, not NumPy's pairwise sum: the same weights with the JIT disabled
        total += live[row]
    shapes[:] = 0
    weights[:] = 0.0
    for row in range(k):
        shapes[row] = live_shapes[row]
        weights[row] = live[row] / total
    return kept
