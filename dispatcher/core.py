"""One placement decision: validate the request, run the stages, reserve, and explain the result."""

from __future__ import annotations

import pickle
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from suanwang.bus import event
from suanwang.clock import epoch_ms, now_ms
from suanwang.dispatcher import batch, stages
from suanwang.dispatcher.priority import (
    BEST_EFFORT,
    EMERGENCY,
    PRODUCTION,
    RANK,
    Priorities,
    PriorityError,
    may_preempt,
)
from suanwang.dispatcher.shapes import Shapes
from suanwang.dispatcher.stages import Ask, Float, Int, Verdict
from suanwang.dispatcher.state import HOUR_MS, MAX_ACCELERATORS, Horizon, NodeTable
from suanwang.schemas.topics import PLACEMENT, REJECTION, TASK_LIFECYCLE, TASK_REQUEST, TopicSpec
from suanwang.schemas.values import BATCH, GREEDY, NODE_OFFLINE, PREEMPTION
from suanwang.settings import default_of
from suanwang.topology import PRECISIONS, Network

MAX_TASK_HOURS = 24 * 365
ESCALATED = "ESCALATED"  # a tier's rejection code: the request went on to the national dispatcher
NO_FEASIBLE_NODE = "NO_FEASIBLE_NODE"  # the national dispatcher's: no node of the table can take it
UNKNOWN_ARCH = "UNKNOWN_ARCH"  # no registered node has any of the architectures asked for
HOURS_FOR_OPEN_ENDED = 1.0  # open-ended tasks are costed per hour of running
MAX_SHIFT_HOURS = 24  # a task with a deadline may start up to this many hours later
RETRIES_EXHAUSTED = "RETRIES_EXHAUSTED"  # a task that failed or was preempted too often is not re-dispatched
NODE_FAULT, PREEMPTED = "node_fault", "preempted"  # TaskLifecycle.cause, beside NODE_OFFLINE
PREEMPTION_CANDIDATES = 256  # nodes holding preemptible work examined for one preemptor, at most


@dataclass
class Reservation:
    """What a placed task holds on its node, and what preemption and re-dispatch need to know of it."""

    row: int
    cpu: int
    mem: int
    acc_milli: int
    accelerators: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    tenant: str = ""
    priority: str = PRODUCTION
    started_ms: int | None = None  # when it started running: the progress a preemption would lose
    request: dict[str, Any] | None = None  # to dispatch it again; None if the request is not known here


class Invalid(Exception):
    """A request the dispatcher refuses before any node is looked at."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code


@dataclass
class Demand:
    """A request as the stages see it: name masks and the numbers of `ask`, and the four it is reserved by."""

    arch_ok: np.ndarray
    model_ok: np.ndarray
    province_ok: np.ndarray
    ask: np.ndarray
    cpu: int
    mem: int
    acc_count: int
    acc_milli: int
    models: int = stages.ANY_MODELS  # the chip models it may run on, as `Vocabulary.bits`
    avoid: np.ndarray = field(default_factory=lambda: NO_ROWS)  # rows it is not placed on (`avoid_nodes`)

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        """What the workload's shapes record of it (`Shapes.observe`)."""
        return self.cpu, self.mem, self.acc_count, self.acc_milli, self.models


NO_ROWS = np.zeros(0, dtype=np.int64)
FRAGMENTATION_WEIGHT = 1.0  # yuan per accelerator the workload could no longer use: measured by bench packing


def demand_of(t: NodeTable, req: dict[str, Any], fragmentation_weight: float) -> Demand:
    """The request's masks over the table's vocabularies and its figures; open-ended tasks cost per hour."""
    cpu, mem, count = req["cpu_milli"], req["memory_mib"], req["accelerators"]
    milli = req["accelerator_milli"] if count == 1 else stages.WHOLE
    ask = np.array(
        [
            not req["chip_models"],
            not req["allowed_provinces"],
            t.hubs.ids[req["origin_hub"]],
            t.hubs.ids[req["data_hub"]],
            req["latency_tier_ms"] or 0,
            cpu,
            mem,
            count,
            milli,
            req["duration_s"] / 3600 if req["duration_s"] else HOURS_FOR_OPEN_ENDED,
            req["input_gb"] or 0,
            req["budget_yuan"] or 0,
            fragmentation_weight,
            PRECISIONS.index(req.get("precision", "fp32")),
        ],
        dtype=np.float64,
    )
    avoid = req.get("avoid_nodes")
    return Demand(
        t.archs.mask(req["chip_archs"]),
        t.models.mask(req["chip_models"]),
        t.provinces.mask(req["allowed_provinces"]),
        ask,
        cpu,
        mem,
        count,
        milli,
        t.models.bits(req["chip_models"]),
        np.array([t.row[n] for n in avoid if n in t.row], dtype=np.int64) if avoid else NO_ROWS,
    )


@dataclass
class Choice:
    """What `choose` found: best, runner-up and best local row (-1: none), their costs, verdict counts."""

    picks: np.ndarray = field(default_factory=lambda: np.full(3, -1, dtype=np.int64))
    costs: np.ndarray = field(default_factory=lambda: np.zeros(3))
    counts: np.ndarray = field(default_factory=lambda: np.zeros(len(Verdict), dtype=np.int64))
    feasible: int = 0


@dataclass
class Timing:
    """When the task would run, per province: the start hour index and time, and the yuan per kWh drawn
    (price plus the carbon price of the non-green share) averaged over the hours it runs."""

    horizon: Horizon
    hours: float
    start: np.ndarray  # start hour index per province (0: now)
    start_ms: np.ndarray
    per_kwh: np.ndarray

    def grid(self, province: int) -> tuple[float, float]:
        """Average price and green share of the hours the task would run in `province`."""
        start = int(self.start[province])
        return (
            self.horizon.mean_at("price", start, self.hours, province),
            self.horizon.mean_at("green", start, self.hours, province),
        )


HOLD_PRICE: float = default_of("dispatch_hold_yuan_per_kwh")  # measured by bench quality


def timing_of(
    t: NodeTable, req: dict[str, Any], now: int, carbon_price: float, hold_price: float = HOLD_PRICE
) -> Timing:
    """The cheapest start per province: now, or for work with a deadline any later hour that still meets it.

    Energy and carbon are linear in the price of the hours run, so the best start in a province is the
    same for every node there: one pass of the stages then scores every node at its province's best. A
    later start holds the task's capacity idle until then, priced at `hold_price` per kWh it would draw and
    hour held: without it, deferral saves on power but turns work away at the peaks."""
    hours = req["duration_s"] / 3600 if req["duration_s"] else HOURS_FOR_OPEN_ENDED
    horizon = t.grid.horizon(now, t.emission_kg_per_kwh * carbon_price)
    latest = 0
    deadline = epoch_ms(req["deadline"])
    if deadline is not None and req["duration_s"]:
        latest = int((deadline - horizon.hour) / HOUR_MS - hours)  # last whole start hour that meets it
        latest = max(0, min(latest, MAX_SHIFT_HOURS))
    return Timing(horizon, hours, *horizon.cheapest(latest, hours, hold_price, now))


NO_SCORES = np.zeros(0)


def choose(
    t: NodeTable, d: Demand, out: Choice, w: Timing, load: Shapes, scores: np.ndarray = NO_SCORES, only: int = -1
) -> Choice:
    """Filter, score and select over the whole table (the compiled pass, a group of equal nodes at a time),
    packing for the `load` seen; over node `only` alone when given, or over the rows the demand does not avoid.
    `scores`, when not empty, gets every node's cost (infinite: infeasible)."""
    grouped, units = only < 0 and not len(d.avoid), NO_ROWS
    if only >= 0:
        units = np.array([only], dtype=np.int64)
    elif not grouped:  # pre-filter: a re-dispatch is not sent back to the nodes that failed it
        units = np.setdiff1d(np.arange(t.size, dtype=np.int64), d.avoid)
    out.feasible = stages.choose(
        t.ints,
        t.floats,
        t.transfer_price,
        t.rtt,
        w.per_kwh,
        grouped,
        units,
        t.links,
        t.groups,
        t.tally,
        t.live_ints,
        t.live_floats,
        d.arch_ok,
        d.model_ok,
        d.province_ok,
        d.ask,
        t.acc_free,
        load.shapes,
        load.weights,
        load.version,
        load.keys,
        load.values,
        out.picks,
        out.costs,
        out.counts,
        scores,
    )
    return out


def reserve(t: NodeTable, row: int, d: Demand, load: Shapes) -> np.ndarray:
    """Takes the demand on node `row`; the accelerator indices it got."""
    chosen = np.zeros(max(d.acc_count, 1), dtype=np.int64)
    taken = stages.reserve(
        row, t.ints, t.acc_free, d.cpu, d.mem, d.acc_count, d.acc_milli, load.shapes, load.weights, load.keys,
        load.values, load.version, chosen,
    )  # fmt: skip
    t.regroup(row)
    return chosen[:taken]


@dataclass
class BatchPlan:
    """A window's requests ready to be solved together: what `batch.solve` needs, and what binding needs after."""

    requests: list[dict[str, Any]]
    priorities: list[str]
    demands: list[Demand]
    windows: list[Timing]
    rows: np.ndarray  # the table row of each node of the problem
    problem: batch.Problem
    refused: list[tuple[dict[str, Any], tuple[TopicSpec, dict[str, Any]]]]  # requests invalid on their own
    prepare_s: float  # what preparing took, shared out over the window's tasks in their decision time
    now: int


class Dispatcher:
    """Owns the node table and the reservations; every decision goes through `decide` (or, for a window of
    work that can wait, `prepare_batch`, `batch.solve` and `bind_batch`)."""

    def __init__(
        self,
        network: Network,
        scope: str = "national",
        carbon_price: float = default_of("carbon_price_yuan_per_kg"),
        hold_price: float = HOLD_PRICE,
        fragmentation_weight: float = FRAGMENTATION_WEIGHT,
        start_timeout_s: float = default_of("dispatch_start_timeout_s"),
        remembered_decisions: int = default_of("dispatch_remembered_decisions"),
        priorities: Priorities | None = None,
        max_attempts: int = default_of("dispatch_max_attempts"),
        retry_backoff_s: float = default_of("dispatch_retry_backoff_s"),
    ) -> None:
        self.scope = scope
        self.priorities = priorities or Priorities()
        self.max_attempts = max_attempts
        self.retry_backoff_ms = int(retry_backoff_s * 1000)
        self.start_timeout_ms = int(start_timeout_s * 1000)
        self.unstarted: dict[str, int] = {}  # task id -> when its placement lapses unless the task starts
        self.nodes = NodeTable(network)
        self.carbon_price = carbon_price
        self.hold_price = hold_price
        self.fragmentation_weight = fragmentation_weight
        self.load = Shapes()  # the shapes of recent requests, that fragmentation is measured against
        self.reservations: dict[str, Reservation] = {}
        self.on_row: dict[int, set[str]] = {}  # node row -> the tasks holding capacity on it
        self.rows_by_class: dict[str, dict[int, int]] = {name: {} for name in RANK}  # class -> row -> its tasks
        self.offline_since: dict[int, int] = {}  # node row -> when it was declared offline (ms), until back
        self.silent_clusters: set[str] = set()  # clusters whose collector is silent: no new work, nothing moved
        self.outbox: list[tuple[TopicSpec, dict[str, Any]]] = []  # events a decision caused beside its own
        # the newest decisions, to answer a redelivered request the same way; redelivery replays only the
        # tail a consumer had not committed, so older ones are forgotten (capacity is tracked apart). Each is
        # kept pickled: 1 kB against 2.9 as a dict of 45 fields, and tens of thousands are kept
        self.decisions: OrderedDict[str, tuple[TopicSpec, bytes]] = OrderedDict()
        self.remembered_decisions = remembered_decisions
        self._choice = Choice()

    # ---- inputs other than requests

    def release(self, task_id: str) -> bool:
        """Frees a task's reservation (finished, failed, cancelled); False if it held none."""
        self.unstarted.pop(task_id, None)
        res = self.reservations.pop(task_id, None)
        if res is None:
            return False
        self.on_row[res.row].discard(task_id)
        rows = self.rows_by_class[res.priority]
        rows[res.row] -= 1
        if not rows[res.row]:
            del rows[res.row]
        self._give(res)
        return True

    def _give(self, res: Reservation, sign: int = 1) -> None:
        """Gives back what `res` names on its node, or with `sign` -1 takes exactly that again."""
        t, n = self.nodes, len(res.accelerators)
        stages.release(
            res.row, t.ints, t.acc_free, sign * res.cpu, sign * res.mem, sign * res.acc_milli, res.accelerators, n
        )
        t.regroup(res.row)

    def started(self, task_id: str, at_ms: int) -> None:
        """The task runs: its placement no longer lapses, and a preemption would lose what it has done since."""
        self.unstarted.pop(task_id, None)
        res = self.reservations.get(task_id)
        if res is not None and res.started_ms is None:
            res.started_ms = at_ms

    def lapse(self, now: int) -> list[tuple[str, str]]:
        """Frees every placement whose task has not started in time; (task id, node id) of each."""
        lapsed = [task for task, deadline in self.unstarted.items() if deadline < now]
        out = []
        for task in lapsed:
            out.append((task, self.nodes.node_ids[self.reservations[task].row]))
            self.release(task)
        return out

    def restore(
        self,
        spec: TopicSpec,
        record: dict[str, Any],
        holds: bool,
        started_ms: int | None,
        request: dict[str, Any] | None = None,
    ) -> None:
        """Takes back an earlier decision (after a restart): the same answer to a redelivered request, and,
        while the task `holds` its placement, the very resources it was given (and its `request`, to dispatch
        it again should its node fail)."""
        self._remember(record["task_id"], (spec, record))
        row = self.nodes.row.get(record.get("node_id") or "")
        if spec is not PLACEMENT or not holds or row is None or record["task_id"] in self.reservations:
            return
        chosen = np.array(record["accelerator_indices"], dtype=np.int64)
        held = Reservation(
            row, record["cpu_milli"], record["memory_mib"], record["accelerator_milli"], chosen,
            record["tenant"], record.get("priority") or PRODUCTION, started_ms, request,
        )  # fmt: skip
        self._hold(record["task_id"], held)
        if started_ms is None:
            self.unstarted[record["task_id"]] = epoch_ms(record["start_at"]) + self.start_timeout_ms

    def _hold(self, task_id: str, held: Reservation) -> None:
        """Takes what `held` names on its node and keeps the reservation."""
        self._give(held, -1)
        self.keep(task_id, held)

    def keep(self, task_id: str, held: Reservation) -> None:
        """Notes a reservation whose capacity is taken already, so release, preemption and fail-over find it."""
        self.reservations[task_id] = held
        self.on_row.setdefault(held.row, set()).add(task_id)
        rows = self.rows_by_class[held.priority]
        rows[held.row] = rows.get(held.row, 0) + 1

    def register(self, reg: dict[str, Any]) -> int | None:
        """Adds or updates a node (`NodeTable.register`); a registration sent again leaves an open offline or
        collector alert in force, as an alert resolved leaves a paused node paused."""
        row = self.nodes.register(reg)
        if row is not None:
            self._judge_health(row)
        return row

    def set_health(self, node_id: str, healthy: bool, now: int) -> None:
        """A node declared offline takes no new work at once; its tasks move once it stays offline (`fail_over`)."""
        row = self.nodes.row.get(node_id)
        if row is None:
            return
        if healthy:
            self.offline_since.pop(row, None)
        else:
            self.offline_since.setdefault(row, now)
        self._judge_health(row)

    def set_collector(self, cluster: str, reporting: bool) -> None:
        """A cluster whose collector went silent takes no new work until it reports again, but its tasks stay:
        a collector or its link down is far likelier than a whole data centre (kube's zone-disruption rule)."""
        if reporting:
            self.silent_clusters.discard(cluster)
        else:
            self.silent_clusters.add(cluster)
        for row in [row for row, name in enumerate(self.nodes.clusters) if name == cluster]:
            self._judge_health(row)

    def _judge_health(self, row: int) -> None:
        reporting = self.nodes.clusters[row] not in self.silent_clusters
        self.nodes.set_healthy(row, self.nodes.enabled[row] and row not in self.offline_since and reporting)

    # ---- recovery: work whose node failed, or which was preempted, is dispatched again

    def fail_over(self, now: int, grace_ms: int) -> int:
        """Releases the tasks of every node offline for longer than `grace_ms` and dispatches them again
        (their events go to `outbox`); how many tasks it moved."""
        moved = 0
        for row, since in list(self.offline_since.items()):
            if now - since < grace_ms:
                continue
            silent = f"node {self.nodes.node_ids[row]} offline for {(now - since) / 1000:.0f} s"
            for task_id in sorted(self.on_row.get(row, ())):
                self.outbox.extend(self.evict(task_id, NODE_OFFLINE, silent, now))
                moved += 1
        return moved

    def evict(
        self, task_id: str, cause: str, detail: str, now: int, preempted_by: str | None = None, report: bool = True
    ) -> list[tuple[TopicSpec, dict[str, Any]]]:
        """Frees a task's capacity and dispatches it again; the lifecycle event that says so (unless `report`
        is False: a provider's FAILED said it already) and its re-dispatch, or the rejection ending the chain.
        A task holding nothing has been moved already: nothing happens twice."""
        res = self.reservations.get(task_id)
        if res is None:
            return []
        node_id = self.nodes.node_ids[res.row]
        self.release(task_id)
        out: list[tuple[TopicSpec, dict[str, Any]]] = []
        retry = self._retry(task_id, res, cause, detail, now)
        if report:
            out.append(
                (
                    TASK_LIFECYCLE,
                    event(
                        task_id=task_id,
                        node_id=node_id,
                        state="FAILED",
                        detail=detail,
                        cause=cause,
                        retry_task_id=retry[1]["task_id"] if retry else None,
                        preempted_by=preempted_by,
                    ),
                )
            )
        if retry:
            out.append(retry)
        return out

    def _retry(
        self, task_id: str, res: Reservation, cause: str, detail: str, now: int
    ) -> tuple[TopicSpec, dict[str, Any]] | None:
        """The next attempt's request (from the second on, after a back-off doubling each time), kept off the
        nodes that failed it, or past `max_attempts` its rejection; None when the request is not known here."""
        req = res.request
        if req is None:
            return None
        first = req.get("retry_of") or task_id
        attempt = req.get("attempt", 0) + 1
        retry_id = f"{first}~{attempt}"
        if attempt >= self.max_attempts:
            reason = f"{first} ended {attempt} times, the last {cause}: {detail}; not dispatched again"
            return REJECTION, self._rejection({**req, "task_id": retry_id}, RETRIES_EXHAUSTED, reason, {})
        backoff = self.retry_backoff_ms * 2 ** (attempt - 2) if attempt > 1 else 0
        fields = {k: v for k, v in req.items() if k not in ("event_id", "event_time")}
        avoid = list(req.get("avoid_nodes") or ())
        if cause != PREEMPTED:  # a node that failed the task may come back; the task is not sent there again
            avoid.append(self.nodes.node_ids[res.row])
        return TASK_REQUEST, event(
            **fields
            | dict(
                task_id=retry_id,
                attempt=attempt,
                retry_of=first,
                not_before=now + backoff if backoff else None,
                escalated_from=None,
                escalation_reason=None,
                avoid_nodes=avoid,
            )
        )

    def _preempt(self, req: dict[str, Any], priority: str, d: Demand, w: Timing) -> bool:
        """PostFilter: when no node fits, frees the node where preempting costs least (fewest victims, of the
        lowest classes, least progress lost), if any; whether it did. The victims' events go to `outbox`."""
        now = now_ms()
        best: tuple[tuple[int, int, int], int, list[str]] | None = None
        candidates = 0
        for row in self._rows_below(priority):
            tasks = self.on_row[row]
            victims = [
                v
                for v in tasks
                if may_preempt(priority, req["tenant"], self.reservations[v].priority, self.reservations[v].tenant)
            ]
            if not victims or not self.nodes.column(Int.HEALTHY)[row]:
                continue
            candidates += 1
            if candidates > PREEMPTION_CANDIDATES:
                break
            chosen = self._victims(row, victims, d, w, now)
            if chosen is not None:
                key = (
                    len(chosen),
                    -min(RANK[self.reservations[v].priority] for v in chosen),
                    sum(self._progress(v, now) for v in chosen),
                )
                if best is None or key < best[0]:
                    best = key, row, chosen
        if best is None:
            return False
        for victim in best[2]:
            detail = f"preempted by {priority} task {req['task_id']} of {req['tenant']}"
            self.outbox.extend(self.evict(victim, PREEMPTED, detail, now, preempted_by=req["task_id"]))
        return True

    def _rows_below(self, priority: str) -> list[int]:
        """The nodes holding work of a class below `priority`, the only ones a preemption may free: a rejection
        must not scan every busy node."""
        classes = [self.rows_by_class[name] for name, rank in RANK.items() if rank > RANK[priority]]
        return list(dict.fromkeys(row for rows in classes for row in rows))

    def _victims(self, row: int, eligible: list[str], d: Demand, w: Timing, now: int) -> list[str] | None:
        """The fewest of `eligible` whose capacity lets the demand fit on `row`, or None; the table is left as
        it was. Lowest class and least progress go first; then each is spared again if the demand still fits
        without freeing it (kube-scheduler's reprieve)."""
        order = sorted(eligible, key=lambda v: (-RANK[self.reservations[v].priority], self._progress(v, now), v))
        held = self.reservations
        freed: list[str] = []
        for victim in order:
            self._give(held[victim])
            freed.append(victim)
            if self._fits_on(row, d, w):
                break
        else:
            for victim in freed:
                self._give(held[victim], -1)
            return None
        for victim in reversed(freed[:-1]):  # the last one freed was needed
            self._give(held[victim], -1)
            if not self._fits_on(row, d, w):
                self._give(held[victim])
            else:
                freed.remove(victim)
        for victim in freed:
            self._give(held[victim], -1)
        return freed

    def _fits_on(self, row: int, d: Demand, w: Timing) -> bool:
        """Whether the compiled pass, shown node `row` alone, finds it feasible: the one policy decides."""
        return int(choose(self.nodes, d, Choice(), w, self.load, only=row).picks[0]) == row

    def _progress(self, task_id: str, now: int) -> int:
        """The ms of work a task would lose if stopped now (0 before it starts)."""
        started = self.reservations[task_id].started_ms
        return 0 if started is None else max(0, now - started)

    def take_outbox(self) -> list[tuple[TopicSpec, dict[str, Any]]]:
        """The events decisions and fail-overs caused since the last call, in order, to be sent."""
        out, self.outbox = self.outbox, []
        return out

    def grid_signal(self, signal: dict[str, Any]) -> None:
        """Keeps the signal for its hour; the current hour's figures apply from the next decision."""
        self.nodes.grid.add(signal)

    # ---- the decision

    def _validate(self, req: dict[str, Any], now: int) -> str:
        """Invalid naming the field and value of the first thing wrong; else the request's priority class."""
        t = self.nodes
        if req["origin_hub"] not in t.hubs.ids:
            raise Invalid("UNKNOWN_HUB", f"origin_hub {req['origin_hub']!r} is not a hub")
        if req["data_hub"] not in t.hubs.ids:
            raise Invalid("UNKNOWN_HUB", f"data_hub {req['data_hub']!r} is not a hub")
        for prov in req["allowed_provinces"]:
            if prov not in t.provinces.ids:
                raise Invalid("UNKNOWN_PROVINCE", f"allowed_provinces names unknown province {prov!r}")
        if not req["chip_archs"] or not any(a in t.archs.ids for a in req["chip_archs"]):
            raise Invalid(UNKNOWN_ARCH, f"chip_archs {req['chip_archs']} names no architecture of any node")
        for name in ("cpu_milli", "memory_mib", "accelerators"):
            if req[name] < 0 or req[name] > 10**9:
                raise Invalid("INVALID_RESOURCES", f"{name}={req[name]} is negative or absurd")
        if req["accelerators"] > MAX_ACCELERATORS:
            raise Invalid("INVALID_RESOURCES", f"accelerators={req['accelerators']} exceeds {MAX_ACCELERATORS}")
        if req["accelerators"] and not 1 <= req["accelerator_milli"] <= stages.WHOLE:  # a share only with one
            raise Invalid("INVALID_RESOURCES", f"accelerator_milli={req['accelerator_milli']} is not in 1..1000")
        duration = req["duration_s"]
        if duration is not None and not 0 < duration <= MAX_TASK_HOURS * 3600:
            raise Invalid("INVALID_RESOURCES", f"duration_s={duration} is not in (0, one year]")
        if req.get("precision", "fp32") not in PRECISIONS:
            raise Invalid("UNKNOWN_PRECISION", f"precision {req['precision']!r} is not one of {', '.join(PRECISIONS)}")
        if req["latency_tier_ms"] is not None and req["latency_tier_ms"] <= 0:
            raise Invalid("INVALID_RESOURCES", f"latency_tier_ms={req['latency_tier_ms']} must be positive")
        if (req["input_gb"] or 0) < 0:
            raise Invalid("INVALID_RESOURCES", f"input_gb={req['input_gb']} is negative")
        deadline = epoch_ms(req["deadline"])
        if deadline is not None and deadline < now:
            raise Invalid("DEADLINE_PASSED", f"deadline {req['deadline']} is in the past")
        try:
            return self.priorities.of(req)
        except PriorityError as bad:
            raise Invalid(bad.code, str(bad)) from None

    def decide(self, req: dict[str, Any], now: int | None = None) -> tuple[TopicSpec, dict[str, Any]]:
        """A Placement or Rejection record for the request; a redelivered request gets the same one.

        `now` (ms) sets the clock for simulated time: the grid hour and the deadline check."""
        done = self.decisions.get(req["task_id"])
        if done is not None:
            return done[0], pickle.loads(done[1])
        started = time.perf_counter()
        now = now_ms() if now is None else now
        try:
            out = self._place(req, self._validate(req, now), started, now)
        except Invalid as bad:
            out = REJECTION, self._rejection(req, bad.code, str(bad), {})
        self._remember(req["task_id"], out)
        return out

    def decide_batch(
        self, reqs: list[dict[str, Any]], now: int | None = None, time_limit_s: float = 0.2
    ) -> list[tuple[TopicSpec, dict[str, Any]]]:
        """The decisions of a window of requests placed together, in one call (the service solves apart)."""
        plan = self.prepare_batch(reqs, now_ms() if now is None else now)
        return [decision for _req, decision in self.bind_batch(plan, batch.solve(plan.problem, time_limit_s))]

    def prepare_batch(self, reqs: list[dict[str, Any]], now: int) -> BatchPlan:
        """Validates each request (rejecting the invalid) and offers the MILP each valid one's cheapest feasible
        nodes, as the compiled pass scores them, and the greedy path's answer for them to start from."""
        started = time.perf_counter()
        t = self.nodes
        scores = np.empty(t.size)
        valid: list[tuple[dict[str, Any], str, Demand, Timing]] = []
        refused = []
        for req in reqs:
            if self.has_decided(req["task_id"]):
                continue
            try:
                priority = self._validate(req, now)
            except Invalid as bad:
                refused.append((req, (REJECTION, self._rejection(req, bad.code, str(bad), {}))))
                self._remember(req["task_id"], refused[-1][1])
                continue
            w = timing_of(t, req, now, self.carbon_price, self.hold_price)
            valid.append((req, priority, demand_of(t, req, self.fragmentation_weight), w))
        picks = self._greedy_picks(valid)
        kept: list[tuple[dict[str, Any], str, Demand, Timing, np.ndarray, np.ndarray]] = []
        for req, priority, d, w in valid:
            scores.fill(np.inf)
            choose(t, d, Choice(), w, self.load, scores)
            top = np.argpartition(scores, batch.CANDIDATES)[: batch.CANDIDATES] if t.size > batch.CANDIDATES else None
            rows = np.arange(t.size) if top is None else top
            rows = rows[np.isfinite(scores[rows])]
            rows = rows[np.argsort(scores[rows], kind="stable")]
            kept.append((req, priority, d, w, rows, scores[rows]))
        rows = np.unique(np.concatenate([k[4] for k in kept] + [picks[picks >= 0]]))
        index = {int(r): i for i, r in enumerate(rows)}
        candidates = np.full((len(kept), batch.CANDIDATES), -1, dtype=np.int64)
        costs = np.full((len(kept), batch.CANDIDATES), np.inf)
        needs = np.zeros((len(kept), 4))
        greedy = np.full(len(kept), -1, dtype=np.int64)
        for j, (_req, _priority, d, w, cand, cand_costs) in enumerate(kept):
            pick = int(picks[j])
            if pick >= 0 and pick not in cand:  # fragmentation chose past the cheapest: it displaces the dearest
                cost = float(choose(t, d, Choice(), w, self.load, only=pick).costs[0])
                cand, cand_costs = (
                    np.append(cand[: batch.CANDIDATES - 1], pick),
                    np.append(cand_costs[: batch.CANDIDATES - 1], cost),
                )
            candidates[j, : len(cand)] = [index[int(r)] for r in cand]
            costs[j, : len(cand)] = cand_costs
            if pick >= 0:
                greedy[j] = int(np.flatnonzero(cand == pick)[0])
            whole = d.acc_milli == stages.WHOLE
            needs[j] = (d.cpu, d.mem, d.acc_count if whole else 0, d.acc_count * d.acc_milli)
        free = np.stack(
            [
                t.column(Int.CPU_FREE)[rows],
                t.column(Int.MEM_FREE)[rows],
                t.column(Int.WHOLE_FREE)[rows],
                t.acc_free[rows].sum(axis=1),
            ],
            axis=1,
        ).astype(float)
        problem = batch.Problem(candidates, costs, needs, free, greedy)
        return BatchPlan(
            [k[0] for k in kept], [k[1] for k in kept], [k[2] for k in kept], [k[3] for k in kept], rows, problem,
            refused, time.perf_counter() - started, now,
        )  # fmt: skip

    def _greedy_picks(self, valid: list[tuple[dict[str, Any], str, Demand, Timing]]) -> np.ndarray:
        """The node the greedy path would give each of the window's tasks in turn (-1: none), each seen by the
        workload's shapes just before its pick as it would be deciding one by one: reserved on the table,
        read, and given back. The MILP starts from this answer, so it places at least as many."""
        t, held = self.nodes, []
        picks = np.full(len(valid), -1, dtype=np.int64)
        for j, (_req, _priority, d, w) in enumerate(valid):
            self.load.observe(*d.shape)
            best = int(choose(t, d, Choice(), w, self.load).picks[0])
            if best >= 0:
                held.append(Reservation(best, d.cpu, d.mem, d.acc_milli, reserve(t, best, d, self.load)))
                picks[j] = best
        for res in reversed(held):
            self._give(res)
        return picks

    def bind_batch(
        self, plan: BatchPlan, solution: batch.Solution
    ) -> list[tuple[dict[str, Any], tuple[TopicSpec, dict[str, Any]]]]:
        """Each request with its decision: binds each assignment through the table, which the greedy path may have
        changed meanwhile; a task whose node no longer fits it (or that the MILP left out) is then placed alone,
        still on the batch path."""
        out = list(plan.refused)
        chosen = solution.chosen
        share_s = (plan.prepare_s + solution.seconds) / max(len(plan.requests), 1)  # each task's part of the window
        order = sorted(
            range(len(plan.requests)),
            key=lambda j: (chosen[j] < 0, plan.demands[j].acc_milli, -plan.demands[j].acc_count, j),
        )  # whole accelerators before shares, so shares fill what is left
        left = []
        for j in order:
            req, d, w = plan.requests[j], plan.demands[j], plan.windows[j]
            if self.has_decided(req["task_id"]):
                continue  # decided on another path while the window was being solved
            if chosen[j] >= 0:
                row = int(plan.rows[plan.problem.candidates[j, chosen[j]]])
                c = choose(self.nodes, d, Choice(), w, self.load, only=row)
                if int(c.picks[0]) == row:
                    started = time.perf_counter() - share_s  # its decision time: its share, then its own binding
                    decision = PLACEMENT, self._bind(req, plan.priorities[j], d, w, c, started, BATCH)
                    self._remember(req["task_id"], decision)
                    out.append((req, decision))
                    continue
            left.append(j)
        for j in sorted(left):  # the greedy path, with the demand and window already made
            req = plan.requests[j]
            if not self.has_decided(req["task_id"]):
                started = time.perf_counter() - share_s
                decision = self._place_demand(req, plan.priorities[j], plan.demands[j], plan.windows[j], started, BATCH)
                self._remember(req["task_id"], decision)
                out.append((req, decision))
        return out

    def forget(self, task_id: str) -> None:
        """Drops a rejection made before the node table was current, so the request is decided again
        (a placement is never forgotten: it holds capacity until released)."""
        if self.decisions.get(task_id, (PLACEMENT,))[0] is REJECTION:
            del self.decisions[task_id]

    def has_decided(self, task_id: str) -> bool:
        """Whether this task's decision is among the newest `remembered_decisions` made or restored."""
        return task_id in self.decisions

    def _remember(self, task_id: str, decision: tuple[TopicSpec, dict[str, Any]]) -> None:
        spec, record = decision
        self.decisions[task_id] = spec, pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL)
        if len(self.decisions) > self.remembered_decisions:
            self.decisions.popitem(last=False)

    def _place(self, req: dict[str, Any], priority: str, started: float, now: int) -> tuple[TopicSpec, dict[str, Any]]:
        t = self.nodes
        d = demand_of(t, req, self.fragmentation_weight)
        self.load.observe(*d.shape)
        return self._place_demand(req, priority, d, timing_of(t, req, now, self.carbon_price, self.hold_price), started)

    def _place_demand(
        self, req: dict[str, Any], priority: str, d: Demand, w: Timing, started: float, path: str = GREEDY
    ) -> tuple[TopicSpec, dict[str, Any]]:
        """Filter, score, select (and, when nothing fits, preempt), then reserve and bind; or the rejection.
        `path` is BATCH for what a window's solve left to be placed alone: it waited for the window all the same."""
        t = self.nodes
        c = choose(t, d, self._choice, w, self.load)
        # a tier passes on what it cannot place, and preempts only for emergency work, which cannot wait
        may_preempt_here = priority != BEST_EFFORT and (self.scope == "national" or priority == EMERGENCY)
        if c.picks[0] < 0 and may_preempt_here and self._preempt(req, priority, d, w):
            c, path = choose(t, d, self._choice, w, self.load), PREEMPTION
        best, second, local = (int(x) for x in c.picks)
        if best < 0:
            removed = {v.meaning: int(c.counts[v]) for v in Verdict if v != Verdict.FEASIBLE and c.counts[v]}
            summary = ", ".join(f"{v} {k}" for k, v in removed.items())
            if self.scope != "national":  # a tier passes on what it cannot place
                return REJECTION, self._rejection(req, ESCALATED, f"{self.scope}: 0/{t.size} nodes: {summary}", removed)
            return REJECTION, self._rejection(req, NO_FEASIBLE_NODE, f"0/{t.size} nodes: {summary}", removed)
        return PLACEMENT, self._bind(req, priority, d, w, c, started, path)

    def _bind(
        self, req: dict[str, Any], priority: str, d: Demand, w: Timing, c: Choice, started: float, path: str
    ) -> dict[str, Any]:
        """Reserve and bind: takes the demand on the chosen node and says so, and which `path` decided, in the
        explained Placement record."""
        t = self.nodes
        best, second, local = (int(x) for x in c.picks)
        chosen = reserve(t, best, d, self.load)
        self.keep(
            req["task_id"], Reservation(best, d.cpu, d.mem, d.acc_milli, chosen, req["tenant"], priority, None, req)
        )
        node = t.ints[best].tolist()  # Python ints: cheap to read, unlike NumPy scalars
        start_at = int(w.start_ms[node[Int.PROVINCE]])
        self.unstarted[req["task_id"]] = start_at + self.start_timeout_ms
        parts, quoted = explain(t, best, d.ask, w, self.carbon_price)
        local_cost = float(c.costs[2]) if local >= 0 else None
        local_carbon = carbon_kg(t, local, d.ask, w) if local >= 0 else 0.0
        record = event(
            task_id=req["task_id"],
            tenant=req["tenant"],
            kind=req["kind"],
            request_time=epoch_ms(req["event_time"]),
            scope=self.scope,
            node_id=t.node_ids[best],
            hub=t.hubs.names[node[Int.HUB]],
            cluster=t.clusters[best],
            province=t.provinces.names[node[Int.PROVINCE]],
            origin_hub=req["origin_hub"],
            accelerator_indices=[int(a) for a in chosen],
            accelerator_milli=d.acc_milli,
            cpu_milli=d.cpu,
            memory_mib=d.mem,
            **parts,
            total_cost=float(c.costs[0]),
            est_latency_ms=float(t.rtt[int(d.ask[Ask.ORIGIN]), node[Int.HUB]]),
            runner_up_node_id=t.node_ids[second] if second >= 0 else None,
            runner_up_cost=float(c.costs[1]) if second >= 0 else None,
            local_node_id=t.node_ids[local] if local >= 0 else None,
            local_cost=local_cost,
            saved_yuan=local_cost - float(c.costs[0]) if local_cost is not None else 0.0,
            saved_carbon_kg=local_carbon - parts["carbon_kg"] if local >= 0 else 0.0,
            feasible_nodes=c.feasible,
            decision_us=(time.perf_counter() - started) * 1e6,
            precision=req.get("precision", "fp32"),
            compute_class=t.classes.names[node[Int.CLASS]],
            chip_model=t.models.names[node[Int.MODEL]],
            input_gb=req["input_gb"] or 0.0,
            priority=priority,
            retry_of=req.get("retry_of"),
            decided_by=path,
            **quoted,
        )
        record["start_at"] = start_at
        return record

    def _rejection(self, req: dict[str, Any], code: str, reason: str, removed: dict[str, int]) -> dict[str, Any]:
        return event(
            task_id=req["task_id"],
            tenant=req["tenant"],
            request_time=epoch_ms(req["event_time"]),
            scope=self.scope,
            reason_code=code,
            reason=reason,
            nodes_total=self.nodes.size,
            filtered=removed,
        )


def explain(t: NodeTable, row: int, ask: np.ndarray, w: Timing, carbon_price: float) -> tuple[dict, dict]:
    """A placement on node `row`: the parts of its cost, for the explained event (they sum to its total), and
    the prices it is quoted at per hour of the task's share, which the bill applies to the hours metered."""
    node, figures, a = t.ints[row].tolist(), t.floats[row].tolist(), ask.tolist()  # Python scalars: cheap to read
    node_share = stages.share(node[Int.N_ACC], node[Int.CPU_TOTAL], a[Ask.CPU], a[Ask.ACC_COUNT], a[Ask.ACC_MILLI])
    cu = figures[Float.CU + int(a[Ask.PRECISION])]
    price, green = w.grid(node[Int.PROVINCE])
    quoted = {
        "price_index": figures[Float.PRICE_INDEX],
        "cu_per_hour": node_share * cu,
        "compute_yuan_per_hour": node_share
        * stages.compute_rate(cu, figures[Float.UNIT_PRICE], figures[Float.PRICE_INDEX]),
        "meter_kw": node_share * figures[Float.METER_KW],
        "yuan_per_kwh": price,
    }
    hours = a[Ask.HOURS]
    kwh = quoted["meter_kw"] * hours
    carbon_kg = kwh * (1.0 - green) * t.emission_kg_per_kwh
    parts = {
        "compute_cost": quoted["compute_yuan_per_hour"] * hours,
        "energy_cost": kwh * price,
        "transfer_cost": a[Ask.INPUT_GB] * float(t.transfer_price[int(a[Ask.DATA_HUB]), node[Int.HUB]]),
        "carbon_cost": carbon_kg * carbon_price,
        "energy_kwh": kwh,
        "carbon_kg": carbon_kg,
    }
    return parts, quoted


def carbon_kg(t: NodeTable, row: int, ask: np.ndarray, w: Timing) -> float:
    """The carbon of the task on node `row`, as `explain` counts it: the counterfactual needs only that."""
    node, a = t.ints[row].tolist(), ask.tolist()
    node_share = stages.share(node[Int.N_ACC], node[Int.CPU_TOTAL], a[Ask.CPU], a[Ask.ACC_COUNT], a[Ask.ACC_MILLI])
    green = w.horizon.mean_at("green", int(w.start[node[Int.PROVINCE]]), w.hours, node[Int.PROVINCE])
    kwh = node_share * float(t.floats[row, Float.METER_KW]) * a[Ask.HOURS]
    return kwh * (1.0 - green) * t.emission_kg_per_kwh


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
            compute_class="GPU",
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
