"""The dispatcher's view of the network as structure-of-arrays, the layout the numba stages read."""

from __future__ import annotations

from typing import Any

import numpy as np

from suanwang.dispatcher.stages import WHOLE
from suanwang.topology import Network

MAX_ACCELERATORS = 16


class Vocabulary:
    """Dense ids for names (architectures, models, hubs, provinces), growing as names appear."""

    def __init__(self, names: list[str] | tuple[str, ...] = ()) -> None:
        self.ids: dict[str, int] = {}
        self.names: list[str] = []
        for name in names:
            self.add(name)

    def add(self, name: str) -> int:
        if name not in self.ids:
            self.ids[name] = len(self.names)
            self.names.append(name)
        return self.ids[name]

    def __len__(self) -> int:
        return len(self.names)

    def mask(self, names: list[str], size: int | None = None) -> np.ndarray:
        """A boolean array over ids, true for each known name given."""
        out = np.zeros(max(size or len(self), 1), dtype=np.bool_)
        for name in names:
            if name in self.ids:
                out[self.ids[name]] = True
        return out


class NodeTable:
    """Per-node arrays, each indexed by the node's row; rows are never reused."""

    _FIELDS: dict[str, Any] = {
        "healthy": np.bool_,
        "arch": np.int32,
        "model": np.int32,
        "hub": np.int32,
        "province": np.int32,
        "cpu_total": np.int64,
        "cpu_free": np.int64,
        "mem_total": np.int64,
        "mem_free": np.int64,
        "n_acc": np.int32,
        "throughput": np.float64,
        "power_kw": np.float64,
        "pue": np.float64,
        "unit_price": np.float64,
    }

    def __init__(self, network: Network, capacity: int = 1024) -> None:
        self.hubs = Vocabulary(network.hub_ids)
        self.provinces = Vocabulary(list(network.provinces))
        self.archs = Vocabulary()
        self.models = Vocabulary()
        self.node_ids: list[str] = []
        self.row: dict[str, int] = {}
        self.clusters: list[str] = []
        self.size = 0
        for name, dtype in self._FIELDS.items():
            setattr(self, name, np.zeros(capacity, dtype=dtype))
        self.acc_free = np.zeros((capacity, MAX_ACCELERATORS), dtype=np.int32)
        self.rtt = network.rtt_matrix()
        self.transfer_price = network.transfer_price_matrix()
        self.price_now = np.array([p.flat_price for p in network.provinces.values()])
        self.green_now = np.array([p.green_share for p in network.provinces.values()])
        self.emission_kg_per_kwh = network.grid.emission_kg_per_kwh

    def _grow(self) -> None:
        for name in self._FIELDS:
            old = getattr(self, name)
            new = np.zeros(old.shape[0] * 2, dtype=old.dtype)
            new[: old.shape[0]] = old
            setattr(self, name, new)
        acc = np.zeros((self.acc_free.shape[0] * 2, MAX_ACCELERATORS), dtype=np.int32)
        acc[: self.acc_free.shape[0]] = self.acc_free
        self.acc_free = acc

    def register(self, reg: dict[str, Any]) -> int | None:
        """Adds or updates a node from a NodeRegistration; None when its hub or province is unknown."""
        if reg["hub"] not in self.hubs.ids or reg["province"] not in self.provinces.ids:
            return None
        i = self.row.get(reg["node_id"])
        if i is None:
            if self.size == self.healthy.shape[0]:
                self._grow()
            i = self.size
            self.size += 1
            self.row[reg["node_id"]] = i
            self.node_ids.append(reg["node_id"])
            self.clusters.append(reg["cluster"])
            self.cpu_free[i] = reg["cpu_milli"]
            self.mem_free[i] = reg["memory_mib"]
            n_acc = min(reg["accelerators"], MAX_ACCELERATORS)
            self.acc_free[i, :n_acc] = WHOLE
        else:  # capacity changes keep what is reserved
            self.cpu_free[i] += reg["cpu_milli"] - self.cpu_total[i]
            self.mem_free[i] += reg["memory_mib"] - self.mem_total[i]
            n_acc = self.n_acc[i]
        self.healthy[i] = reg.get("active", True)
        self.arch[i] = self.archs.add(reg["chip_arch"])
        self.model[i] = self.models.add(reg["chip_model"])
        self.hub[i] = self.hubs.ids[reg["hub"]]
        self.province[i] = self.provinces.ids[reg["province"]]
        self.cpu_total[i] = reg["cpu_milli"]
        self.mem_total[i] = reg["memory_mib"]
        self.n_acc[i] = n_acc
        self.throughput[i] = reg["throughput"]
        self.power_kw[i] = reg["power_kw"]
        self.pue[i] = reg["pue"]
        self.unit_price[i] = reg["unit_price"]
        return i

    def view(self, name: str) -> np.ndarray:
        """The live rows of one array (a view, not a copy)."""
        return getattr(self, name)[: self.size]
