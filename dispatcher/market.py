"""Price discovery (价格发现): a price index per hub and compute class that rises with the share of that
capacity already promised and with the requests for the class that found none, within configured bounds.

The national dispatcher sets it (it holds the reservations, the truest utilisation there is) and publishes
it on `market.price`; every dispatcher applies what it reads there to its nodes' compute price, and the bill
charges the index a placement was quoted at. `next_index` is the rule; `PriceSetter` feeds it.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from suanwang.bus import event
from suanwang.dispatcher import stages as s
from suanwang.dispatcher.stages import Float, Int
from suanwang.dispatcher.state import NodeTable
from suanwang.topology import Market


def next_index(previous: float, utilisation: float, pressure: float, market: Market) -> float:
    """The index after one interval: toward 1 + gains x (utilisation above target, pressure), by at most
    `max_step`, within [min_index, max_index]."""
    target = 1.0 + market.utilisation_gain * (utilisation - market.target_utilisation) + market.pressure_gain * pressure
    step = max(-market.max_step, min(market.max_step, target - previous))
    return round(max(market.min_index, min(market.max_index, previous + step)), 4)


def utilisation(t: NodeTable) -> dict[tuple[int, int], tuple[float, int, float]]:
    """Per (hub id, class id): the promised share of the class's scarce resource (accelerator thousandths
    where nodes have accelerators, else CPU), its node count and mean unit price."""
    ints, floats = t.ints, t.floats
    n_acc = ints[:, Int.N_ACC]
    acc_total = n_acc * s.WHOLE
    acc_free = t.acc_free.sum(axis=1)
    total = np.where(n_acc > 0, acc_total, ints[:, Int.CPU_TOTAL]).astype(float)
    used = np.where(n_acc > 0, acc_total - acc_free, ints[:, Int.CPU_TOTAL] - ints[:, Int.CPU_FREE]).astype(float)
    classes = max(len(t.classes), 1)
    key = ints[:, Int.HUB] * classes + ints[:, Int.CLASS]
    size = len(t.hubs) * classes
    totals = np.bincount(key, total, size)
    useds = np.bincount(key, used, size)
    counts = np.bincount(key, minlength=size)
    prices = np.bincount(key, floats[:, Float.UNIT_PRICE], size)
    return {
        (int(k) // classes, int(k) % classes): (useds[k] / totals[k], int(counts[k]), prices[k] / counts[k])
        for k in np.flatnonzero(counts)
        if totals[k] > 0
    }


class PriceSetter:
    """Counts each class's requests and those that found no capacity, and turns them with the table's
    utilisation into new prices once per interval."""

    def __init__(self, market: Market, table: NodeTable, scope: str = "national") -> None:
        self.market = market
        self.table = table
        self.scope = scope
        self.asked: Counter[int] = Counter()
        self.short: Counter[int] = Counter()
        self._classes_of: dict[tuple[tuple[str, ...], int], tuple[int, ...]] = {}

    def classes_of(self, chip_archs: list[str]) -> tuple[int, ...]:
        """The classes of the nodes whose architecture the request allows."""
        t = self.table
        key = (tuple(chip_archs), t.size)
        found = self._classes_of.get(key)
        if found is None:
            archs = [t.archs.ids[a] for a in chip_archs if a in t.archs.ids]
            rows = np.isin(t.column(Int.ARCH), archs)
            found = tuple(int(c) for c in np.unique(t.column(Int.CLASS)[rows]))
            if len(self._classes_of) > 1024:
                self._classes_of.clear()
            self._classes_of[key] = found
        return found

    def observe(self, request: dict[str, Any], decision: dict[str, Any]) -> None:
        """One decided request: a rejection for lack of capacity is pressure on every class it could use."""
        classes = self.classes_of(request["chip_archs"])
        self.asked.update(classes)
        if decision.get("filtered", {}).get("capacity", 0) > 0 and "node_id" not in decision:
            self.short.update(classes)

    def step(self) -> list[dict[str, Any]]:
        """The MarketPrice records of this interval, one per hub and class, from the indices in force."""
        t = self.table
        out = []
        for (hub, klass), (used, nodes, unit_price) in sorted(utilisation(t).items()):
            pressure = self.short[klass] / self.asked[klass] if self.asked[klass] else 0.0
            previous = t.price_index.get((hub, klass), 1.0)
            index = next_index(previous, used, pressure, self.market)
            hub_id, class_name = t.hubs.names[hub], t.classes.names[klass]
            out.append(
                event(
                    price_key=f"{hub_id}/{class_name}",
                    hub=hub_id,
                    compute_class=class_name,
                    price_index=index,
                    yuan_per_cu_hour=unit_price * index,
                    utilisation=used,
                    pressure=pressure,
                    nodes=nodes,
                    scope=self.scope,
                )
            )
        self.asked.clear()
        self.short.clear()
        return out
