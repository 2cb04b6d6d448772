"""One placement decision: validate the request, run the stages, reserve, and explain the result."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from suanwang.bus import event, now_ms
from suanwang.dispatcher import stages
from suanwang.dispatcher.state import MAX_ACCELERATORS, NodeTable
from suanwang.schemas.topics import PLACEMENT, REJECTION, TopicSpec
from suanwang.topology import Network

MAX_TASK_HOURS = 24 * 365
HOURS_FOR_OPEN_ENDED = 1.0  # open-ended tasks are costed per hour of running


@dataclass
class Reservation:
    row: int
    cpu: int
    mem: int
    acc_milli: int
    accelerators: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))


class Invalid(Exception):
    """A request the dispatcher refuses before any node is looked at."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code


class Dispatcher:
    """Owns the node table and the reservations; every decision goes through `decide`."""

    def __init__(
        self, network: Network, scope: str = "national", carbon_price: float = 0.1, fragmentation_weight: float = 0.05
    ) -> None:
        self.scope = scope
        self.nodes = NodeTable(network)
        self.carbon_price = carbon_price
        self.fragmentation_weight = fragmentation_weight
        self.reservations: dict[str, Reservation] = {}
        self.decisions: dict[str, tuple[TopicSpec, dict[str, Any]]] = {}
        self._scratch_size = 0

    def _scratch(self, n: int) -> None:
        if n > self._scratch_size:
            size = max(n, 2 * self._scratch_size, 1024)
            self.verdict = np.zeros(size, dtype=np.int8)
            self.costs = np.zeros((7, size))
            self._scratch_size = size

    # ---- inputs other than requests

    def release(self, task_id: str) -> bool:
        """Frees a task's reservation (finished, failed, cancelled); False if it held none."""
        res = self.reservations.pop(task_id, None)
        if res is None:
            return False
        t = self.nodes
        stages.release(
            res.row,
            t.cpu_free,
            t.mem_free,
            t.acc_free,
            res.cpu,
            res.mem,
            res.acc_milli,
            res.accelerators,
            len(res.accelerators),
        )
        return True

    def set_health(self, node_id: str, healthy: bool) -> None:
        row = self.nodes.row.get(node_id)
        if row is not None:
            self.nodes.healthy[row] = healthy

    def grid_signal(self, signal: dict[str, Any]) -> None:
        p = self.nodes.provinces.ids.get(signal["province"])
        if p is not None:
            self.nodes.price_now[p] = signal["price_yuan_kwh"]
            self.nodes.green_now[p] = signal["green_share"]

    # ---- the decision

    def _validate(self, req: dict[str, Any], now: int) -> None:
        t = self.nodes
        if req["origin_hub"] not in t.hubs.ids:
            raise Invalid("UNKNOWN_HUB", f"origin_hub {req['origin_hub']!r} is not a hub")
        if req["data_hub"] not in t.hubs.ids:
            raise Invalid("UNKNOWN_HUB", f"data_hub {req['data_hub']!r} is not a hub")
        for prov in req["allowed_provinces"]:
            if prov not in t.provinces.ids:
                raise Invalid("UNKNOWN_PROVINCE", f"allowed_provinces names unknown province {prov!r}")
        if not req["chip_archs"] or not any(a in t.archs.ids for a in req["chip_archs"]):
            raise Invalid("UNKNOWN_ARCH", f"chip_archs {req['chip_archs']} names no architecture of any node")
        for name in ("cpu_milli", "memory_mib", "accelerators"):
            if req[name] < 0 or req[name] > 10**9:
                raise Invalid("INVALID_RESOURCES", f"{name}={req[name]} is negative or absurd")
        if req["accelerators"] > MAX_ACCELERATORS:
            raise Invalid("INVALID_RESOURCES", f"accelerators={req['accelerators']} exceeds {MAX_ACCELERATORS}")
        if not 1 <= req["accelerator_milli"] <= stages.WHOLE:
            raise Invalid("INVALID_RESOURCES", f"accelerator_milli={req['accelerator_milli']} is not in 1..1000")
        duration = req["duration_s"]
        if duration is not None and not 0 < duration <= MAX_TASK_HOURS * 3600:
            raise Invalid("INVALID_RESOURCES", f"duration_s={duration} is not in (0, one year]")
        if req["latency_tier_ms"] is not None and req["latency_tier_ms"] <= 0:
            raise Invalid("INVALID_RESOURCES", f"latency_tier_ms={req['latency_tier_ms']} must be positive")
        if (req["input_gb"] or 0) < 0:
            raise Invalid("INVALID_RESOURCES", f"input_gb={req['input_gb']} is negative")
        deadline = _ms(req["deadline"])
        if deadline is not None and deadline < now:
            raise Invalid("DEADLINE_PASSED", f"deadline {req['deadline']} is in the past")

    def decide(self, req: dict[str, Any]) -> tuple[TopicSpec, dict[str, Any]]:
        """A Placement or Rejection record for the request; a redelivered request gets the same one."""
        done = self.decisions.get(req["task_id"])
        if done is not None:
            return done
        started = time.perf_counter()
        try:
            self._validate(req, now_ms())
            out = self._place(req, started)
        except Invalid as bad:
            out = REJECTION, self._rejection(req, bad.code, str(bad), {})
        self.decisions[req["task_id"]] = out
        return out

    def _place(self, req: dict[str, Any], started: float) -> tuple[TopicSpec, dict[str, Any]]:
        t = self.nodes
        n = t.size
        self._scratch(n)
        verdict = self.verdict[:n]
        compute, kwh, energy, transfer, carbon_cost, carbon_kg, score = (row[:n] for row in self.costs)
        origin = t.hubs.ids[req["origin_hub"]]
        cpu, mem = int(req["cpu_milli"]), int(req["memory_mib"])
        acc_count, acc_milli = int(req["accelerators"]), int(req["accelerator_milli"])
        tier = float(req["latency_tier_ms"] or 0)
        stages.filter_nodes(
            t.view("healthy"),
            t.view("arch"),
            t.view("model"),
            t.view("hub"),
            t.view("province"),
            t.view("cpu_free"),
            t.view("mem_free"),
            t.acc_free[:n],
            t.view("n_acc"),
            t.archs.mask(req["chip_archs"]),
            t.models.mask(req["chip_models"]),
            not req["chip_models"],
            t.provinces.mask(req["allowed_provinces"]),
            not req["allowed_provinces"],
            t.rtt,
            origin,
            tier,
            cpu,
            mem,
            acc_count,
            acc_milli,
            verdict,
        )
        hours = req["duration_s"] / 3600 if req["duration_s"] else HOURS_FOR_OPEN_ENDED
        feasible = stages.score_nodes(
            verdict,
            t.view("hub"),
            t.view("province"),
            t.view("cpu_total"),
            t.view("n_acc"),
            t.acc_free[:n],
            t.view("throughput"),
            t.view("power_kw"),
            t.view("pue"),
            t.view("unit_price"),
            t.price_now,
            t.green_now,
            t.emission_kg_per_kwh,
            self.carbon_price,
            t.transfer_price,
            t.hubs.ids[req["data_hub"]],
            cpu,
            acc_count,
            acc_milli,
            hours,
            float(req["input_gb"] or 0),
            float(req["budget_yuan"] or 0),
            self.fragmentation_weight,
            compute,
            kwh,
            energy,
            transfer,
            carbon_cost,
            carbon_kg,
            score,
        )
        picks = np.empty(3, dtype=np.int64)
        stages.select(verdict, score, t.view("hub"), origin, picks)
        best, second, local = (int(x) for x in picks)
        if best < 0:
            counts = np.zeros(len(stages.FILTER_NAMES) + 1, dtype=np.int64)
            stages.count_verdicts(verdict, counts)
            removed = {name: int(counts[k + 1]) for k, name in enumerate(stages.FILTER_NAMES) if counts[k + 1]}
            summary = ", ".join(f"{v} {k}" for k, v in removed.items())
            return REJECTION, self._rejection(req, "NO_FEASIBLE_NODE", f"0/{n} nodes: {summary}", removed)
        chosen = np.zeros(max(acc_count, 1), dtype=np.int32)
        taken = stages.reserve(
            best, t.cpu_free, t.mem_free, t.acc_free, t.n_acc, cpu, mem, acc_count, acc_milli, chosen
        )
        per_acc = acc_milli if acc_count == 1 else stages.WHOLE
        self.reservations[req["task_id"]] = Reservation(best, cpu, mem, per_acc, chosen[:taken].copy())

        def total(i: int) -> float:
            return float(compute[i] + energy[i] + transfer[i] + carbon_cost[i])

        record = event(
            task_id=req["task_id"],
            tenant=req["tenant"],
            kind=req["kind"],
            request_time=_ms(req["event_time"]),
            scope=self.scope,
            node_id=t.node_ids[best],
            hub=t.hubs.names[t.hub[best]],
            cluster=t.clusters[best],
            province=t.provinces.names[t.province[best]],
            origin_hub=req["origin_hub"],
            accelerator_indices=[int(a) for a in chosen[:taken]],
            accelerator_milli=per_acc,
            cpu_milli=cpu,
            memory_mib=mem,
            compute_cost=float(compute[best]),
            energy_cost=float(energy[best]),
            transfer_cost=float(transfer[best]),
            carbon_cost=float(carbon_cost[best]),
            total_cost=total(best),
            energy_kwh=float(kwh[best]),
            carbon_kg=float(carbon_kg[best]),
            est_latency_ms=float(t.rtt[origin, t.hub[best]]),
            runner_up_node_id=t.node_ids[second] if second >= 0 else None,
            runner_up_cost=total(second) if second >= 0 else None,
            local_node_id=t.node_ids[local] if local >= 0 else None,
            local_cost=total(local) if local >= 0 else None,
            saved_yuan=total(local) - total(best) if local >= 0 else 0.0,
            saved_carbon_kg=float(carbon_kg[local] - carbon_kg[best]) if local >= 0 else 0.0,
            feasible_nodes=feasible,
            decision_us=(time.perf_counter() - started) * 1e6,
        )
        record["start_at"] = record["event_time"]
        return PLACEMENT, record

    def _rejection(self, req: dict[str, Any], code: str, reason: str, removed: dict[str, int]) -> dict[str, Any]:
        return event(
            task_id=req["task_id"],
            tenant=req["tenant"],
            request_time=_ms(req["event_time"]),
            scope=self.scope,
            reason_code=code,
            reason=reason,
            nodes_total=self.nodes.size,
            filtered=removed,
        )


def warm_up(network: Network) -> None:
    """Compiles (or loads from cache) every stage before the first real task, on a throwaway table."""
    scratch = Dispatcher(network)
    hub, province = scratch.nodes.hubs.names[0], scratch.nodes.provinces.names[0]
    scratch.nodes.register(
        dict(
            node_id="warm",
            hub=hub,
            cluster="c",
            province=province,
            chip_arch="x",
            chip_model="m",
            cpu_milli=1000,
            memory_mib=1000,
            accelerators=2,
            throughput=1.0,
            power_kw=1.0,
            pue=1.2,
            unit_price=1.0,
        )
    )
    for milli in (500, 1000):  # a shared and a whole accelerator take different branches
        task = dict(
            task_id=f"warm{milli}",
            tenant="t",
            kind="k",
            event_time=now_ms(),
            origin_hub=hub,
            origin_province=province,
            data_hub=hub,
            chip_archs=["x"],
            chip_models=[],
            cpu_milli=1,
            memory_mib=1,
            accelerators=1,
            accelerator_milli=milli,
            duration_s=60.0,
            latency_tier_ms=20,
            input_gb=0.0,
            allowed_provinces=[],
            deadline=None,
            budget_yuan=None,
        )
        scratch.decide(task)
        scratch.release(task["task_id"])


def _ms(value: Any) -> int | None:
    """Milliseconds since the epoch from an Avro timestamp (datetime when decoded, int when built here)."""
    if value is None or isinstance(value, int):
        return value
    return int(value.timestamp() * 1000)
