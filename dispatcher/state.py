"""The dispatcher's view of the network as structure-of-arrays, the layout the numba stages read."""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit

from suanwang.clock import HOUR_MS, epoch_ms
from suanwang.dispatcher import groups
from suanwang.dispatcher import stages as s
from suanwang.dispatcher.stages import Float, Int
from suanwang.topology import PRECISIONS, Metering, Network

MAX_ACCELERATORS = 16


class Vocabulary:
    """Dense ids for names (architectures, models, hubs, provinces), growing as names appear."""

    def __init__(self, names: list[str] | tuple[str, ...] = ()) -> None:
        self.ids: dict[str, int] = {}
        self.names: list[str] = []
        self._masks: dict[tuple[str, ...], np.ndarray] = {}
        self._bits: dict[tuple[str, ...], int] = {}
        for name in names:
            self.add(name)

    def add(self, name: str) -> int:
        if name not in self.ids:
            self.ids[name] = len(self.names)
            self.names.append(name)
            self._masks.clear()
            self._bits.clear()
        return self.ids[name]

    def bits(self, names: list[str]) -> int:
        """The known names given as one bit per id below `stages.ANY_MODEL_BIT` (the kernel counts the ids
        above as in every set), or `stages.ANY_MODELS` when none is given: a workload shape's chip models."""
        if not names:
            return s.ANY_MODELS
        key = tuple(names)
        out = self._bits.get(key)
        if out is None:
            out = 0
            for name in names:
                if self.ids.get(name, s.ANY_MODEL_BIT) < s.ANY_MODEL_BIT:
                    out |= 1 << self.ids[name]
            if len(self._bits) < 4096:
                self._bits[key] = out
        return out

    def __len__(self) -> int:
        return len(self.names)

    def mask(self, names: list[str]) -> np.ndarray:
        """An array over ids, 1 for each known name given; shared between requests naming the same ones."""
        key = tuple(names)
        out = self._masks.get(key)
        if out is None:
            out = np.zeros(max(len(self), 1), dtype=np.int8)
            for name in names:
                if name in self.ids:
                    out[self.ids[name]] = 1
            out.flags.writeable = False
            if len(self._masks) < 4096:
                self._masks[key] = out
        return out


class GridSignals:
    """Power price and green share per province and hour, from grid signals; flat figures until one comes.

    `horizon` gives the figures of the hours ahead as matrices (hour x province) with running sums, so
    the average over any run of hours costs a few array operations; it is rebuilt once per hour and
    after each new signal.
    """

    def __init__(self, network: Network, provinces: Vocabulary) -> None:
        self.provinces = provinces
        self.flat = {name: (p.flat_price, p.green_share) for name, p in network.provinces.items()}
        self.signals: dict[tuple[str, int], tuple[float, float]] = {}
        self._horizon: tuple[int, Horizon] | None = None

    def add(self, signal: dict[str, Any]) -> None:
        hour = epoch_ms(signal["hour_start"])
        self.signals[(signal["province"], hour)] = (signal["price_yuan_kwh"], signal["green_share"])
        self._horizon = None

    def at(self, ms: int) -> tuple[np.ndarray, np.ndarray]:
        """Price (yuan/kWh) and green share of each province in the hour holding `ms`."""
        hour = ms - ms % HOUR_MS
        figures = [self.signals.get((name, hour), self.flat[name]) for name in self.provinces.names]
        return np.array([f[0] for f in figures]), np.array([f[1] for f in figures])

    def horizon(self, now: int, carbon_yuan_per_kwh: float) -> Horizon:
        """The figures from the current hour on; `carbon_yuan_per_kwh` prices a kWh of non-green power."""
        hour = now - now % HOUR_MS
        key = (hour, carbon_yuan_per_kwh)
        if self._horizon is None or self._horizon[0] != key:
            figures = [self.at(hour + k * HOUR_MS) for k in range(HORIZON_HOURS)]
            price, green = np.array([f[0] for f in figures]), np.array([f[1] for f in figures])
            self._horizon = key, Horizon(hour, price, green, carbon_yuan_per_kwh)
        return self._horizon[1]


HORIZON_HOURS = 48  # start hours up to a day ahead, each with up to a day of running


class Horizon:
    """Hourly figures per province from the current hour on (hour x province), with running sums, so the
    average over any run of hours costs a few array operations."""

    def __init__(self, hour: int, price: np.ndarray, green: np.ndarray, carbon_yuan_per_kwh: float) -> None:
        self.hour = hour
        self.price, self.green = price, green
        self.per_kwh = price + (1.0 - green) * carbon_yuan_per_kwh  # yuan per kWh drawn, carbon included
        zero = np.zeros((1, price.shape[1]))
        self._sums = {
            name: np.vstack([zero, np.cumsum(getattr(self, name), axis=0)]) for name in ("price", "green", "per_kwh")
        }

    def mean(self, name: str, start: int, hours: float) -> np.ndarray:
        """Average of figure `name` over `hours` from start hour index `start`, per province."""
        span, whole, part = _span(start, hours)
        last = min(start + whole, HORIZON_HOURS - 1)
        sums = self._sums[name]
        return (sums[start + whole] - sums[start] + part * getattr(self, name)[last]) / span

    def mean_at(self, name: str, start: int, hours: float, province: int) -> float:
        """`mean` for one start hour and one province: the explained event needs just that."""
        span, whole, part = _span(start, hours)
        sums, hourly = self._sums[name], getattr(self, name)
        last = min(start + whole, HORIZON_HOURS - 1)
        return float((sums[start + whole, province] - sums[start, province] + part * hourly[last, province]) / span)

    def cheapest(
        self, latest: int, hours: float, hold_price: float, now: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per province, the start hour index in 0..`latest` whose yuan per kWh over `hours`, plus `hold_price`
        for each hour held before it, is least (ties: the earliest); its start time (`now` for 0) and its
        yuan per kWh. Compiled: it runs once per decision."""
        return _cheapest(self._sums["per_kwh"], self.per_kwh, latest, hours, hold_price, self.hour, now)


@njit(cache=True)
def _cheapest(sums, hourly, latest, hours, hold_price, hour, now):
    """`Horizon.cheapest`'s loop: every start hour of every province, averaged over the same span."""
    provinces = sums.shape[1]
    start, start_ms, per_kwh = np.zeros(provinces, np.int64), np.zeros(provinces, np.int64), np.zeros(provinces)
    span = min(max(hours, 1e-9), HORIZON_HOURS - latest)
    whole = int(span)
    part = span - whole
    for p in range(provinces):
        best, best_value = 0, np.inf
        for k in range(latest + 1):
            last = min(k + whole, HORIZON_HOURS - 1)
            mean = (sums[k + whole, p] - sums[k, p] + part * hourly[last, p]) / span
            value = mean + hold_price * k / hours
            if value < best_value:
                best, best_value, per_kwh[p] = k, value, mean
        start[p] = best
        start_ms[p] = now if best == 0 else hour + best * HOUR_MS
    return start, start_ms, per_kwh


def _span(top: int, hours: float) -> tuple[float, int, float]:
    """Hours averaged over (cut at the horizon: beyond it, what is known), and their whole and partial parts."""
    span = min(max(hours, 1e-9), HORIZON_HOURS - top)
    return span, int(span), span - int(span)


class NodeTable:
    """Per-node figures in two node-major matrices, one row per node (a node's row is never reused), and the
    groups of nodes with equal figures (`dispatcher.groups`): every change of a row goes through a method
    here, or is followed by `regroup`."""

    def __init__(self, network: Network, capacity: int = 1024) -> None:
        self.hubs = Vocabulary(network.hub_ids)
        self.provinces = Vocabulary(list(network.provinces))
        self.archs = Vocabulary()
        self.models = Vocabulary()
        self.classes = Vocabulary()
        self.metering: Metering = network.metering
        self.price_index: dict[tuple[int, int], float] = {}  # (hub, class) -> the market's index; absent: 1
        self.node_ids: list[str] = []
        self.row: dict[str, int] = {}
        self.clusters: list[str] = []
        self.enabled: list[bool] = []  # per row: registered active and not paused (alerts aside)
        self.size = 0
        self._ints = np.zeros((capacity, s.INT_FIELDS), dtype=np.int64)
        self._floats = np.zeros((capacity, s.FLOAT_FIELDS))
        self._acc = np.zeros((capacity, MAX_ACCELERATORS), dtype=np.int64)
        self._links = np.full((capacity, groups.LINK_FIELDS), -1, dtype=np.int64)
        self.tally = np.zeros(groups.TALLY_FIELDS, dtype=np.int64)
        self.groups, self.slots, self.live_ints, self.live_floats = _group_rows(capacity)
        self.rtt = network.rtt_matrix()
        self.transfer_price = network.transfer_price_matrix()
        self.emission_kg_per_kwh = network.grid.emission_kg_per_kwh
        self.grid = GridSignals(network, self.provinces)

    @property
    def ints(self) -> np.ndarray:
        """Integer figures, one row per live node (see the column names in `stages`)."""
        return self._ints[: self.size]

    @property
    def floats(self) -> np.ndarray:
        return self._floats[: self.size]

    @property
    def acc_free(self) -> np.ndarray:
        """Free thousandths of each accelerator, one row per node."""
        return self._acc[: self.size]

    def column(self, field: int) -> np.ndarray:
        """One integer figure of every live node (a view), e.g. `column(Int.CPU_FREE)`."""
        return self._ints[: self.size, field]

    @property
    def links(self) -> np.ndarray:
        """Each live node's group and its neighbours there (columns: `stages.Link`)."""
        return self._links[: self.size]

    def regroup(self, row: int) -> None:
        """Moves node `row` to the group of its figures, after they changed."""
        if not groups.regroup(row, *self._group_arrays()):
            self.rebuild_groups()

    def rebuild_groups(self) -> None:
        """Groups every node afresh, with room for twice as many groups as the table has rows (a rebuild needs
        at most one per row, so it always fits)."""
        self.groups, self.slots, self.live_ints, self.live_floats = _group_rows(self._ints.shape[0])
        groups.rebuild(self.size, *self._group_arrays())

    def _group_arrays(self) -> tuple[np.ndarray, ...]:
        """The arrays every function of `dispatcher.groups` takes after the row, in its order."""
        return self.ints, self.floats, self.links, self.groups, self.slots, self.tally, self.live_ints, self.live_floats

    def set_healthy(self, row: int, healthy: bool) -> None:
        """Whether node `row` may take work (`Dispatcher._judge_health` decides: registration, alerts)."""
        self._ints[row, Int.HEALTHY] = healthy
        self.regroup(row)

    def _grow(self) -> None:
        for name in ("_ints", "_floats", "_acc", "_links"):
            old = getattr(self, name)
            new = np.full((old.shape[0] * 2, old.shape[1]), -1 if name == "_links" else 0, dtype=old.dtype)
            new[: old.shape[0]] = old
            setattr(self, name, new)
        self.rebuild_groups()

    def register(self, reg: dict[str, Any]) -> int | None:
        """Adds or updates a node from a NodeRegistration; None when its hub or province is unknown."""
        if reg["hub"] not in self.hubs.ids or reg["province"] not in self.provinces.ids:
            return None
        ints, floats = self._ints, self._floats
        i = self.row.get(reg["node_id"])
        if i is None:
            if self.size == ints.shape[0]:
                self._grow()
                ints, floats = self._ints, self._floats
            i = self.size
            self.size += 1
            self.row[reg["node_id"]] = i
            self.node_ids.append(reg["node_id"])
            self.clusters.append(reg["cluster"])
            self.enabled.append(True)
            ints[i, Int.CPU_FREE] = reg["cpu_milli"]
            ints[i, Int.MEM_FREE] = reg["memory_mib"]
            ints[i, Int.N_ACC] = min(reg["accelerators"], MAX_ACCELERATORS)
            self._acc[i, : ints[i, Int.N_ACC]] = s.WHOLE
        else:  # capacity changes keep what is reserved
            ints[i, Int.CPU_FREE] += reg["cpu_milli"] - ints[i, Int.CPU_TOTAL]
            ints[i, Int.MEM_FREE] += reg["memory_mib"] - ints[i, Int.MEM_TOTAL]
        self.enabled[i] = reg.get("active", True) and not reg.get("paused", False)
        ints[i, Int.HEALTHY] = self.enabled[i]
        ints[i, Int.ARCH] = self.archs.add(reg["chip_arch"])
        ints[i, Int.MODEL] = self.models.add(reg["chip_model"])
        ints[i, Int.HUB] = self.hubs.ids[reg["hub"]]
        ints[i, Int.PROVINCE] = self.provinces.ids[reg["province"]]
        ints[i, Int.CLASS] = self.classes.add(reg["compute_class"])
        ints[i, Int.CPU_TOTAL] = reg["cpu_milli"]
        ints[i, Int.MEM_TOTAL] = reg["memory_mib"]
        floats[i, Float.UNIT_PRICE] = reg["unit_price"]
        floats[i, Float.PRICE_INDEX] = self.price_index.get((ints[i, Int.HUB], ints[i, Int.CLASS]), 1.0)
        floats[i, Float.METER_KW] = reg["power_kw"] * reg["pue"]
        for p, precision in enumerate(PRECISIONS):
            floats[i, Float.CU + p] = reg["throughput"] * self.metering.factor(reg["chip_model"], precision)
        s.summarise_accelerators(i, ints, self._acc)
        self.regroup(i)
        return i

    def set_price(self, hub: str, compute_class: str, index: float) -> int:
        """Applies a market index to every node of the hub and class (and to those that register later);
        how many nodes it priced."""
        if hub not in self.hubs.ids:
            return 0
        key = (self.hubs.ids[hub], self.classes.add(compute_class))
        self.price_index[key] = index
        rows = (self.column(Int.HUB) == key[0]) & (self.column(Int.CLASS) == key[1])
        self._floats[: self.size, Float.PRICE_INDEX][rows] = index
        if rows.any():
            self.rebuild_groups()
        return int(rows.sum())


def _group_rows(capacity: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For a table of `capacity` rows: rows for twice as many groups, a slot table twice as large again, and
    the figures of the groups with nodes (at most one per row), in the order of their list."""
    rows = 2 * capacity
    slots = 1 << (2 * rows - 1).bit_length()
    return (
        np.zeros((rows, groups.GROUP_FIELDS), dtype=np.int64),
        np.full(slots, -1, dtype=np.int64),
        np.zeros((capacity, s.INT_FIELDS), dtype=np.int64),
        np.zeros((capacity, s.FLOAT_FIELDS)),
    )
