"""Usage records from a task's placement and lifecycle events, by rules stated once (README, "Billing").

The placement is the quote: the compute units, power and prices per hour of the task's share of its node.
The lifecycle events give the hours. Events are taken by event time, not by arrival, and each event id
counts once. A task is metered once its end has waited `grace` for late events; a task still running is
metered for each month that has closed, so a month's statements hold all it used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from suanwang.billing.book import period_bounds, period_of
from suanwang.clock import epoch_ms
from suanwang.schemas.values import STARTED, TASK_ENDS

HOUR_MS = 3_600_000


@dataclass(frozen=True)
class Anomaly:
    """A rule the task's events needed, and what was done."""

    rule: str
    detail: str


@dataclass
class Usage:
    """What one task used in one month: quantities, and the charges they come to in yuan."""

    usage_id: str
    task_id: str
    period: str
    tenant: str
    node_id: str
    hub: str
    cluster: str
    origin_hub: str
    compute_class: str
    chip_model: str
    precision: str
    started_at: int
    ended_at: int
    outcome: str  # FINISHED, FAILED, CANCELLED, or RUNNING for a month closed while it ran
    hours: float
    cu_hours: float
    energy_kwh: float
    transfer_gb: float
    storage_gb_hours: float
    price_index: float
    charges: dict[str, float] = field(default_factory=dict)  # component -> yuan


@dataclass
class Metered:
    usages: list[Usage]
    anomalies: list[Anomaly]
    recheck_at: int | None  # when to meter the task again though no event came (None: only on a new event)


def meter(
    task_id: str,
    placement: dict[str, Any] | None,
    events: list[dict[str, Any]],
    now: int,
    grace_ms: int,
    storage_yuan_per_gb_month: float,
) -> Metered:
    """The task's usage records by the rules, and when to look again: after its end has waited out
    `grace_ms`, or once the month it runs in has closed."""
    anomalies: list[Anomaly] = []
    unique = {e["event_id"]: e for e in events}
    if len(unique) < len(events):
        anomalies.append(Anomaly("duplicate_event", f"{len(events) - len(unique)} repeated event ids counted once"))
    ordered = sorted(unique.values(), key=lambda e: (epoch_ms(e["event_time"]), e["event_id"]))
    if placement is None:
        if ordered:
            anomalies.append(Anomaly("no_placement", "lifecycle events for a task never placed: held, not billed"))
        return Metered([], anomalies, recheck_at=None)  # metered when its placement is stored
    for e in ordered:
        if e["node_id"] != placement["node_id"]:
            anomalies.append(
                Anomaly("node_mismatch", f"{e['state']} names node {e['node_id']}, placed on {placement['node_id']}")
            )
            break
    starts = [epoch_ms(e["event_time"]) for e in ordered if e["state"] == STARTED]
    ends = [(epoch_ms(e["event_time"]), e["state"]) for e in ordered if e["state"] in TASK_ENDS]
    if len(starts) > 1:
        anomalies.append(Anomaly("duplicate_start", f"{len(starts)} STARTED events: the earliest counts"))
    if starts:
        start = starts[0]
    elif any(state != "CANCELLED" for _, state in ends):
        start = epoch_ms(placement["start_at"])
        anomalies.append(Anomaly("missing_start", "ended without STARTED: metered from the planned start"))
    else:  # never started (or cancelled before it did): nothing used
        return Metered([], anomalies, recheck_at=None)
    after = [(t, state) for t, state in ends if t >= start]
    if len(ends) > 1:
        anomalies.append(Anomaly("duplicate_end", f"{len(ends)} end events: the earliest after the start counts"))
    if ends and not after:
        anomalies.append(Anomaly("end_before_start", "the end is stamped before the start: metered as zero hours"))
        end, outcome = start, ends[-1][1]
    elif after:
        end, outcome = after[0]
    else:
        end, outcome = None, "RUNNING"
    if end is not None and now < end + grace_ms:
        return Metered([], anomalies, recheck_at=end + grace_ms)  # late events may still change it
    usages = []
    for period, lo, hi in months(start, end, now - grace_ms):
        usages.append(_usage(task_id, placement, period, lo, hi, outcome if hi == end else "RUNNING", start))
    for u in usages:
        _charge(u, placement, storage_yuan_per_gb_month)
    recheck_at = None if end is not None else period_bounds(period_of(now - grace_ms))[1] + grace_ms
    return Metered(usages, anomalies, recheck_at)


def months(start: int, end: int | None, closed_before: int) -> list[tuple[str, int, int]]:
    """(period, from, to) of each calendar month of [start, end); a running task's (end None) months that
    closed before `closed_before` only."""
    out = []
    lo = start
    while True:
        period = period_of(lo)
        month_end = period_bounds(period)[1]
        hi = month_end if end is None or end > month_end else end
        if end is None and month_end > closed_before:
            return out
        out.append((period, lo, hi))
        if end is not None and hi >= end:
            return out
        lo = hi


def _usage(task_id: str, p: dict[str, Any], period: str, lo: int, hi: int, outcome: str, start: int) -> Usage:
    hours = (hi - lo) / HOUR_MS
    first = lo == start
    return Usage(
        usage_id=f"{task_id}/{period}",
        task_id=task_id,
        period=period,
        tenant=p["tenant"],
        node_id=p["node_id"],
        hub=p["hub"],
        cluster=p["cluster"],
        origin_hub=p["origin_hub"],
        compute_class=p["compute_class"],
        chip_model=p["chip_model"],
        precision=p["precision"],
        started_at=lo,
        ended_at=hi,
        outcome=outcome,
        hours=hours,
        cu_hours=p["cu_per_hour"] * hours,
        energy_kwh=p["meter_kw"] * hours,
        transfer_gb=p["input_gb"] if first and p["transfer_cost"] > 0 else 0.0,  # the data moves once, at the start
        storage_gb_hours=p["input_gb"] * hours,
        price_index=p["price_index"],
    )


def _charge(u: Usage, p: dict[str, Any], storage_yuan_per_gb_month: float) -> None:
    """Yuan per component: the quote applied to the quantities."""
    u.charges = {
        "compute": p["compute_yuan_per_hour"] * u.hours,
        "energy": u.energy_kwh * p["yuan_per_kwh"],
        "transfer": p["transfer_cost"] if u.transfer_gb > 0 else 0.0,
        "storage": u.storage_gb_hours * storage_yuan_per_gb_month / (30 * 24),
    }
