"""The task shapes the dispatcher has seen lately, weighted by how often they come: FGD's workload.

Fragmentation is measured against the work that will arrive, so the dispatcher learns it from the requests
themselves: each request adds 1 to its shape's weight (cpu and memory bucketed, the accelerator ask exact)
and every weight decays with a half-life counted in requests. Before any request the weights are a prior
of the common shapes, so the first decisions already pack.
"""

from __future__ import annotations

import numpy as np

from suanwang.dispatcher.stages import WHOLE

MAX_SHAPES = 64
HALF_LIFE = 2000  # requests
PRIOR = ((1, WHOLE), (1, 500), (2, WHOLE), (4, WHOLE), (8, WHOLE))  # (accelerators, thousandths of each)
PRIOR_WEIGHT = 1.0
CPU_STEP, MEM_STEP = 4000, 16384  # buckets: shapes differing below these are one shape


class Shapes:
    """The arrays the compiled pass reads: `shapes` rows of (cpu, mem, count, milli) and their `weights`."""

    def __init__(self) -> None:
        self.shapes = np.zeros((MAX_SHAPES, 4), dtype=np.int64)
        self.weights = np.zeros(MAX_SHAPES, dtype=np.float64)
        self._rows: dict[tuple[int, int, int, int], int] = {}
        self._scale = 1.0  # weights are stored divided by the decay so far, so a request costs O(1)
        self._decay = 0.5 ** (1 / HALF_LIFE)
        for count, milli in PRIOR:
            self._add((0, 0, count, milli), PRIOR_WEIGHT)

    def observe(self, cpu: int, mem: int, count: int, milli: int) -> None:
        """One more request of this shape; every older one counts a little less."""
        self._scale /= self._decay
        if self._scale > 1e100:  # renormalise long before float range ends
            self.weights /= self._scale
            self._scale = 1.0
        key = (cpu // CPU_STEP * CPU_STEP, mem // MEM_STEP * MEM_STEP, count, milli if count else 0)
        self._add(key, self._scale)

    def _add(self, key: tuple[int, int, int, int], weight: float) -> None:
        row = self._rows.get(key)
        if row is None:
            if len(self._rows) < MAX_SHAPES:
                row = len(self._rows)
            else:  # the rarest shape makes room
                row = int(np.argmin(self.weights))
                del self._rows[next(k for k, r in self._rows.items() if r == row)]
                self.weights[row] = 0.0
            self._rows[key] = row
            self.shapes[row] = key
        self.weights[row] += weight
