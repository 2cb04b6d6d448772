"""The reference network model (network.yaml), validated on load, and the nodes it implies at a scale."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Literal

import numpy as np
import yaml
from pydantic import BaseModel, ValidationError, model_validator

from suanwang.errors import SuanwangError
from suanwang.schemas.values import COMPUTE_CLASSES

Role = Literal["east", "west", "central"]
PRECISIONS = ("fp64", "fp32", "fp16", "int8")  # the arithmetic a task names; metered per chip (network.yaml)


class Names(BaseModel):
    en: str
    zh: str


class Place(BaseModel):
    name: str
    province: str
    lat: float
    lon: float


class Cluster(BaseModel):
    name: Names
    province: str
    lat: float
    lon: float
    share: float
    pue: float
    green_share: float


class Hub(BaseModel):
    name: Names
    role: Role
    city: Place
    share: float
    demand: float
    pairs: list[str]
    clusters: dict[str, Cluster]


class Pool(BaseModel):
    compute_class: Literal[COMPUTE_CLASSES]  # type: ignore[valid-type]  # the contract's list
    chip_arch: str
    chip_model: str
    cpu_cores: int
    memory_gib: int
    accelerators: int
    accelerator_memory_gib: int
    throughput: float
    power_kw: float
    idle_power_kw: float
    unit_price: float


class Province(BaseModel):
    zh: str
    flat_price: float
    green_share: float


class Industry(BaseModel):
    name: Names
    clusters: list[str]


class Latency(BaseModel):
    base_ms: float
    fibre_km_per_ms: float
    route_factor: float
    intra_hub_ms: float
    tiers_ms: list[int]
    transfer_yuan_per_gb: dict[str, float]
    bandwidth_gbps: dict[str, float]


class Grid(BaseModel):
    emission_kg_per_kwh: float
    peak_hours: list[int]
    valley_hours: list[int]
    peak_multiplier: float
    valley_multiplier: float


class Metering(BaseModel):
    """The conversion of every chip model and precision to compute units (see network.yaml)."""

    weights: dict[str, float]
    peaks: dict[str, dict[str, float]]

    @model_validator(mode="after")
    def _complete(self) -> Metering:
        if set(self.weights) != set(PRECISIONS):
            raise ValueError(f"metering weights must name exactly the precisions {PRECISIONS}")
        for model, peaks in self.peaks.items():
            if set(peaks) != set(PRECISIONS) or peaks["fp32"] <= 0 or min(peaks.values()) < 0:
                raise ValueError(f"metering peaks of {model} must give every precision, fp32 above 0")
        return self

    def factor(self, chip_model: str, precision: str) -> float:
        """CU per hour at `precision` for each CU per hour at FP32; 0 when the chip cannot run it."""
        peaks = self.peaks.get(chip_model)
        if peaks is None:
            return 1.0
        return peaks[precision] / peaks["fp32"] * self.weights[precision]


class Market(BaseModel):
    target_utilisation: float
    utilisation_gain: float
    pressure_gain: float
    max_step: float
    min_index: float
    max_index: float

    @model_validator(mode="after")
    def _bounded(self) -> Market:
        if not 0 < self.min_index <= 1.0 <= self.max_index:
            raise ValueError("market bounds must hold the base price: 0 < min_index <= 1 <= max_index")
        return self


class Billing(BaseModel):
    storage_yuan_per_gb_month: float
    network_operators: dict[str, str]


class Network(BaseModel):
    latency: Latency
    grid: Grid
    metering: Metering
    market: Market
    billing: Billing
    pools: dict[str, Pool]
    mixes: dict[Role, dict[str, float]]
    provinces: dict[str, Province]
    industries: dict[str, Industry] = {}
    hubs: dict[str, Hub]

    @model_validator(mode="after")
    def _consistent(self) -> Network:
        for hub_id, hub in self.hubs.items():
            for pair in hub.pairs:
                if pair not in self.hubs:
                    raise ValueError(f"hub {hub_id} pairs with unknown hub {pair!r}")
            provinces = [hub.city.province] + [c.province for c in hub.clusters.values()]
            for province in provinces:
                if province not in self.provinces:
                    raise ValueError(f"hub {hub_id} names unknown province {province!r}")
            if not math.isclose(sum(c.share for c in hub.clusters.values()), 1.0, abs_tol=1e-6):
                raise ValueError(f"cluster shares of hub {hub_id} do not sum to 1")
        for role, mix in self.mixes.items():
            for pool in mix:
                if pool not in self.pools:
                    raise ValueError(f"mix {role} names unknown pool {pool!r}")
            if not math.isclose(sum(mix.values()), 1.0, abs_tol=1e-6):
                raise ValueError(f"pool shares of mix {role} do not sum to 1")
        clusters = {c for hub in self.hubs.values() for c in hub.clusters}
        for industry_id, industry in self.industries.items():
            for cluster in industry.clusters:
                if cluster not in clusters:
                    raise ValueError(f"industry {industry_id} names unknown cluster {cluster!r}")
        for pool_id, pool in self.pools.items():
            if pool.chip_model not in self.metering.peaks:
                raise ValueError(f"pool {pool_id}'s chip {pool.chip_model!r} has no metering peaks")
        for hub_id in self.hubs:
            if hub_id not in self.billing.network_operators:
                raise ValueError(f"hub {hub_id} has no network operator for billing")
        for what in ("share", "demand"):
            if not math.isclose(sum(getattr(h, what) for h in self.hubs.values()), 1.0, abs_tol=1e-6):
                raise ValueError(f"hub {what}s do not sum to 1")
        return self

    @property
    def hub_ids(self) -> list[str]:
        return list(self.hubs)

    def distance_km(self, a: str, b: str) -> float:
        return haversine_km(self.hubs[a].city, self.hubs[b].city)

    def rtt_matrix(self) -> np.ndarray:
        """Round-trip ms between hub cities, by the formula stated in network.yaml."""
        lat = self.latency
        ids = self.hub_ids
        out = np.empty((len(ids), len(ids)))
        for i, a in enumerate(ids):
            for j, b in enumerate(ids):
                km = self.distance_km(a, b)
                fibre_ms = 2 * km * lat.route_factor / lat.fibre_km_per_ms
                out[i, j] = lat.intra_hub_ms if i == j else lat.base_ms + fibre_ms
        return out

    def transfer_price_matrix(self) -> np.ndarray:
        """Yuan per GB moved from hub i to hub j; free inside a hub."""
        price = self.latency.transfer_yuan_per_gb
        ids = self.hub_ids
        out = np.zeros((len(ids), len(ids)))
        for i, a in enumerate(ids):
            for j, b in enumerate(ids):
                if i != j:
                    out[i, j] = price["fixed"] + price["per_1000_km"] * self.distance_km(a, b) / 1000
        return out

    def price_multiplier(self, hour: int) -> float:
        """Time-of-use multiplier for an hour of the day, China Standard Time."""
        grid = self.grid
        if hour in grid.peak_hours:
            return grid.peak_multiplier
        if hour in grid.valley_hours:
            return grid.valley_multiplier
        return 1.0


def haversine_km(a: Place, b: Place) -> float:
    p1, p2 = math.radians(a.lat), math.radians(b.lat)
    dp, dl = p2 - p1, math.radians(b.lon - a.lon)
    x = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371.0 * math.asin(math.sqrt(x))


@cache
def load_network() -> Network:
    """The shipped reference model; a clear error if the file is inconsistent."""
    text = resources.files("suanwang").joinpath("network.yaml").read_text(encoding="utf-8")
    try:
        return Network.model_validate(yaml.safe_load(text))
    except ValidationError as exc:
        raise SuanwangError(f"network.yaml is invalid: {exc.errors()[0]['msg']} at {exc.errors()[0]['loc']}") from None


@dataclass(frozen=True)
class NodeSpec:
    """One simulated node: where it is and which pool it belongs to."""

    node_id: str
    hub: str
    cluster: str
    province: str
    pool: str
    pue: float


def largest_remainder(total: int, weights: dict[str, float]) -> dict[str, int]:
    """Splits `total` into whole parts proportional to `weights`, summing exactly to `total`."""
    raw = {k: total * w for k, w in weights.items()}
    out = {k: int(v) for k, v in raw.items()}
    short = total - sum(out.values())
    for k in sorted(raw, key=lambda k: raw[k] - out[k], reverse=True)[:short]:
        out[k] += 1
    return out


def scaled_nodes(network: Network, total: int) -> list[NodeSpec]:
    """`total` nodes spread over hubs, clusters and pools in the model's proportions."""
    nodes = []
    for hub_id, hub_nodes in largest_remainder(total, {h: x.share for h, x in network.hubs.items()}).items():
        hub = network.hubs[hub_id]
        by_cluster = largest_remainder(hub_nodes, {c: x.share for c, x in hub.clusters.items()})
        for cluster_id, cluster_nodes in by_cluster.items():
            cluster = hub.clusters[cluster_id]
            for pool, count in largest_remainder(cluster_nodes, network.mixes[hub.role]).items():
                for i in range(count):
                    nodes.append(
                        NodeSpec(
                            f"{cluster_id}-{pool}-{i:05d}", hub_id, cluster_id, cluster.province, pool, cluster.pue
                        )
                    )
    return nodes
