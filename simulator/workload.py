"""What the simulated network does: node registrations, telemetry, grid, probes and task requests.

Pure generators over the reference model, driven by a seeded random stream and the hour of day in
China Standard Time, so the simulator's output is deterministic for a seed and a clock.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from suanwang.bus import event
from suanwang.topology import Network, NodeSpec

CST = timezone(timedelta(hours=8))
GIB = 1024


def cst_hour(ms: int) -> float:
    """Hour of day (fractional) in China Standard Time."""
    t = datetime.fromtimestamp(ms / 1000, CST)
    return t.hour + t.minute / 60


def diurnal(hour: float, peak: float = 14.0) -> float:
    """0..1 daily curve peaking at `peak` o'clock: the tidal pattern of interactive demand."""
    return 0.5 + 0.5 * math.cos((hour - peak) / 24 * 2 * math.pi)


def registration(spec: NodeSpec, network: Network) -> dict[str, Any]:
    pool = network.pools[spec.pool]
    return event(
        node_id=spec.node_id,
        hub=spec.hub,
        cluster=spec.cluster,
        province=spec.province,
        data_center=f"{spec.cluster}-dc1",
        compute_class=pool.compute_class,
        chip_arch=pool.chip_arch,
        chip_model=pool.chip_model,
        cpu_milli=pool.cpu_cores * 1000,
        memory_mib=pool.memory_gib * GIB,
        accelerators=pool.accelerators,
        accelerator_memory_mib=pool.accelerator_memory_gib * GIB,
        throughput=pool.throughput,
        power_kw=pool.power_kw,
        idle_power_kw=pool.idle_power_kw,
        pue=spec.pue,
        unit_price=pool.unit_price,
        active=True,
    )


class NodeBehaviour:
    """Load, power and temperature of each node, with failures (silence) and overheating episodes."""

    def __init__(self, nodes: list[NodeSpec], network: Network, rng: random.Random) -> None:
        self.nodes = nodes
        self.network = network
        self.rng = rng
        self.silent_until: dict[str, int] = {}
        self.hot_until: dict[str, int] = {}

    def sample(self, spec: NodeSpec, now: int, running: int) -> dict[str, Any] | None:
        """One telemetry record, or None while the node is failed and silent."""
        rng = self.rng
        if self.silent_until.get(spec.node_id, 0) > now:
            return None
        if rng.random() < 0.0005:  # a failure: silent for one to three minutes
            self.silent_until[spec.node_id] = now + rng.randint(60_000, 180_000)
            return None
        if rng.random() < 0.002:  # a cooling fault: hot for half a minute to two minutes
            self.hot_until[spec.node_id] = now + rng.randint(30_000, 120_000)
        pool = self.network.pools[spec.pool]
        role = self.network.hubs[spec.hub].role
        hour = cst_hour(now)
        if pool.accelerators:  # training and inference run around the clock, inference follows the day
            base = 0.55 + 0.25 * diurnal(hour) if role == "east" else 0.7 + 0.1 * diurnal(hour, 3.0)
        else:
            base = 0.25 + 0.55 * diurnal(hour) if role == "east" else 0.35 + 0.3 * diurnal(hour, 20.0)
        cpu = min(1.0, max(0.0, base + rng.gauss(0, 0.08) + 0.02 * running))
        acc = min(1.0, max(0.0, base + rng.gauss(0, 0.1))) if pool.accelerators else 0.0
        load = acc if pool.accelerators else cpu
        power = pool.idle_power_kw + (pool.power_kw - pool.idle_power_kw) * load
        temp = 21.0 + 9.0 * load + rng.gauss(0, 0.8)
        if self.hot_until.get(spec.node_id, 0) > now:
            temp += 16.0
        return event(
            node_id=spec.node_id,
            hub=spec.hub,
            cluster=spec.cluster,
            province=spec.province,
            cpu_util=cpu,
            memory_util=min(1.0, max(0.0, 0.3 + 0.5 * cpu + rng.gauss(0, 0.05))),
            accelerator_util=acc,
            power_kw=power,
            inlet_temp_c=temp,
            running_tasks=running,
        )


@dataclass(frozen=True)
class Held:
    """What the running tasks of a node hold: CPU milli-cores, memory MiB, accelerator thousandths."""

    cpu_milli: int
    memory_mib: int
    accelerator_milli: int

    def __add__(self, other: Held) -> Held:
        return Held(
            self.cpu_milli + other.cpu_milli,
            self.memory_mib + other.memory_mib,
            self.accelerator_milli + other.accelerator_milli,
        )

    def __sub__(self, other: Held) -> Held:
        return Held(
            self.cpu_milli - other.cpu_milli,
            self.memory_mib - other.memory_mib,
            self.accelerator_milli - other.accelerator_milli,
        )


IDLE = Held(0, 0, 0)


def usage_telemetry(reg: dict[str, Any], running: int, used: Held) -> dict[str, Any]:
    """Telemetry of a replayed node: its utilisation is the share of capacity its running tasks hold."""
    cpu = min(1.0, used.cpu_milli / reg["cpu_milli"])
    acc = min(1.0, used.accelerator_milli / (1000 * reg["accelerators"])) if reg["accelerators"] else 0.0
    load = acc if reg["accelerators"] else cpu
    power = reg["idle_power_kw"] + (reg["power_kw"] - reg["idle_power_kw"]) * load
    return event(
        node_id=reg["node_id"],
        hub=reg["hub"],
        cluster=reg["cluster"],
        province=reg["province"],
        cpu_util=cpu,
        memory_util=min(1.0, used.memory_mib / reg["memory_mib"]),
        accelerator_util=acc,
        power_kw=power,
        inlet_temp_c=21.0 + 9.0 * load,
        running_tasks=running,
    )


def grid_signal(network: Network, province: str, hub: str, hour_start_ms: int, rng: random.Random) -> dict[str, Any]:
    """Price and green share of one province for one hour: time-of-use price, sun by day, wind by night."""
    prov = network.provinces[province]
    hour = cst_hour(hour_start_ms)
    price = prov.flat_price * network.price_multiplier(int(hour))
    west = network.hubs[hub].role == "west"
    solar = max(0.0, math.sin((hour - 6) / 12 * math.pi))  # 06:00-18:00
    wind = 0.5 + 0.5 * math.cos((hour - 2) / 24 * 2 * math.pi)  # strongest around 02:00
    swing = (0.10 * solar + 0.08 * wind - 0.09) if west else 0.06 * solar - 0.03
    green = min(0.99, max(0.0, prov.green_share + swing + rng.gauss(0, 0.02)))
    return event(
        province=province,
        hub=hub,
        hour_start=hour_start_ms,
        price_yuan_kwh=round(price, 4),
        green_share=green,
        carbon_kg_per_kwh=(1 - green) * network.grid.emission_kg_per_kwh,
    )


def network_probe(network: Network, a: str, b: str, rtt_ms: float, rng: random.Random) -> dict[str, Any]:
    congested = rng.random() < 0.01
    jitter = rng.gauss(1.0, 0.03) * (rng.uniform(1.5, 3.0) if congested else 1.0)
    bw = network.latency.bandwidth_gbps["intra_hub" if a == b else "inter_hub"]
    return event(
        from_hub=a,
        to_hub=b,
        rtt_ms=max(0.05, rtt_ms * jitter),
        bandwidth_gbps=bw * (rng.uniform(0.2, 0.5) if congested else rng.uniform(0.8, 1.0)),
    )


@dataclass(frozen=True)
class TaskKind:
    """One kind of work: its share of requests and how its requirements are drawn."""

    weight: float
    tiers: tuple[int | None, ...]
    chips: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]  # (archs, models) choices
    cores: tuple[int, int]
    accelerators: tuple[int, ...]  # 0: none, 1: possibly a share, n: whole
    share_milli: tuple[int, ...]
    hours: tuple[float, float]
    input_gb: tuple[float, float]
    residency: float  # probability the data may not leave its province
    shiftable: bool
    precision: str = "fp32"  # the arithmetic it runs in (metered per chip: network.yaml `metering`)


GPU = (("cuda",), ())
NPU = (("cann",), ())
ANY_ACC = (("cuda", "cann"), ())
CPU = (("x86_64", "aarch64"), ())
X86 = (("x86_64",), ("Xeon-8480",))
HPC = (("x86_64",), ("EPYC-9654",))

KINDS: dict[str, TaskKind] = {
    "inference": TaskKind(
        0.28, (5, 5, 20), (GPU, NPU, ANY_ACC), (4, 8), (1,), (250, 500, 1000), (0.1, 1.0), (0.05, 2), 0.1, False, "int8"
    ),
    "autonomous_driving": TaskKind(
        0.05, (1, 5), (GPU,), (8, 16), (1,), (500, 1000), (0.05, 0.5), (1, 5), 0.5, False, "int8"
    ),
    "interactive": TaskKind(0.15, (5, 20), (CPU,), (4, 16), (0,), (1000,), (0.2, 2.0), (0.1, 2), 0.1, False),
    "training": TaskKind(
        0.10,
        (None,),
        (GPU, NPU, (("cuda",), ("A800",))),
        (32, 96),
        (2, 4, 8),
        (1000,),
        (2.0, 24.0),
        (50, 500),
        0.1,
        True,
        "fp16",
    ),
    "rendering": TaskKind(0.10, (None,), (X86, GPU), (16, 64), (0, 1), (1000,), (1.0, 6.0), (5, 50), 0.0, True),
    "genomics": TaskKind(0.06, (None,), (HPC,), (64, 128), (0,), (1000,), (2.0, 12.0), (100, 300), 0.3, True),
    "analytics": TaskKind(0.14, (None, 20), (CPU,), (16, 32), (0,), (1000,), (0.5, 4.0), (10, 200), 0.2, True),
    "backup": TaskKind(0.12, (None,), (CPU,), (2, 4), (0,), (1000,), (1.0, 3.0), (100, 1000), 0.0, True),
}


BUDGETED = 0.2  # share of requests that carry a budget


class TaskGenerator:
    """Task requests from the mix, mostly from the eastern hubs, in proportion to each hub's demand."""

    def __init__(self, network: Network, rng: random.Random) -> None:
        self.network = network
        self.rng = rng
        self.hubs = list(network.hubs)
        self.hub_weights = [network.hubs[h].demand for h in self.hubs]
        self.kinds = list(KINDS)
        self.kind_weights = [KINDS[k].weight for k in self.kinds]
        self.seq = 0

    def weights_at(self, hour: float) -> list[float]:
        """The mix at an hour: interactive kinds swell by day, time-shiftable batch work by night."""
        day = diurnal(hour)
        return [
            w * ((1.6 - 1.2 * day) if KINDS[k].shiftable else (0.4 + 1.2 * day))
            for k, w in zip(self.kinds, self.kind_weights, strict=True)
        ]

    def next(self, now: int) -> dict[str, Any]:
        rng = self.rng
        self.seq += 1
        name = rng.choices(self.kinds, self.weights_at(cst_hour(now)))[0]
        kind = KINDS[name]
        origin = rng.choices(self.hubs, self.hub_weights)[0]
        hub = self.network.hubs[origin]
        archs, models = rng.choice(kind.chips)
        acc = rng.choice(kind.accelerators) if archs[0] in ("cuda", "cann") else 0
        milli = rng.choice(kind.share_milli) if acc == 1 else 1000
        hours = rng.uniform(*kind.hours)
        province = hub.city.province
        deadline = None
        if kind.shiftable and rng.random() < 0.5:
            deadline = now + int((hours + rng.uniform(2, 12)) * 3_600_000)
        tenant = f"tenant-{rng.randint(1, 40):02d}"
        cores = rng.randint(*kind.cores)
        return event(
            task_id=f"t{now:x}-{self.seq}",
            tenant=tenant,
            industry=name,
            kind=name,
            origin_hub=origin,
            origin_province=province,
            chip_archs=list(archs),
            chip_models=list(models),
            cpu_milli=cores * 1000,
            memory_mib=rng.choice((8, 16, 32, 64, 128)) * GIB,
            accelerators=acc,
            accelerator_milli=milli,
            precision=kind.precision,
            duration_s=hours * 3600,
            latency_tier_ms=rng.choice(kind.tiers),
            input_gb=round(rng.uniform(*kind.input_gb), 2),
            data_hub=origin,
            allowed_provinces=[province] if rng.random() < kind.residency else [],
            deadline=deadline,
            budget_yuan=self._budget(rng, hours, acc * milli / 1000, cores) if rng.random() < BUDGETED else None,
        )

    @staticmethod
    def _budget(rng: random.Random, hours: float, accelerators: float, cores: int) -> float:
        """A tenant's ceiling: a rough market price of the resources for the hours, times 0.5 to 3."""
        return round(rng.uniform(0.5, 3.0) * hours * (6.0 * accelerators + 0.04 * cores), 2)


def utc_hour_start(ms: int) -> int:
    t = datetime.fromtimestamp(ms / 1000, UTC).replace(minute=0, second=0, microsecond=0)
    return int(t.timestamp() * 1000)
