"""Values a record may not carry even though it decodes: each reason names the field and the value."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime
from typing import Any

import numpy as np

from suanwang.schemas.frames import PLACE
from suanwang.streams.facts import Facts
from suanwang.streams.readings import Readings

UTILISATIONS = ("cpu_util", "memory_util", "accelerator_util")


def telemetry_problems(r: Readings, facts: Facts, now_ms: int, max_skew_s: float) -> dict[int, str]:
    """Why each sample that cannot be counted cannot (the first rule it breaks), by its index in `r`."""
    regs = [facts.nodes.get(node) for node in r.node_ids]
    problems: dict[int, str] = {}

    def note(bad: np.ndarray | list[bool], why: Callable[[int], str]) -> None:
        for i in np.flatnonzero(bad).tolist():
            if i not in problems:
                problems[i] = why(i)

    note([g is None for g in regs], lambda i: f"node_id: {r.node_ids[i]!r} is not a registered node")
    for name in UTILISATIONS:
        v = r.figures[name]
        note(~((v >= 0.0) & (v <= 1.0)), lambda i, name=name, v=v: f"{name}: {v[i].item()!r} is outside 0-1")
    power, temp = r.figures["power_kw"], r.figures["inlet_temp_c"]
    note(
        ~((power >= 0) & np.isfinite(power)),
        lambda i: f"power_kw: {power[i].item()!r} is not a power (negative or not finite)",
    )
    note(~np.isfinite(temp), lambda i: f"inlet_temp_c: {temp[i].item()!r} is not finite")
    for scope in PLACE:
        at = r.places[scope]
        note(
            [g is not None and g[scope] != x for g, x in zip(regs, at, strict=True)],
            lambda i, scope=scope, at=at: f"{scope}: {at[i]!r} but {r.node_ids[i]} is registered in {regs[i][scope]!r}",
        )
    ahead_s = r.event_ms / 1000 - now_ms / 1000
    note(ahead_s > max_skew_s, lambda i: _future(r.event_time(i), now_ms, max_skew_s) or "")
    return problems


def probe_problem(p: dict[str, Any], hubs: set[str], now_ms: int, max_skew_s: float) -> str | None:
    """Why a network probe cannot be counted, or None when it can."""
    for name in ("from_hub", "to_hub"):
        if p[name] not in hubs:
            return f"{name}: {p[name]!r} is not a hub"
    for name in ("rtt_ms", "bandwidth_gbps"):
        if not (p[name] >= 0 and math.isfinite(p[name])):
            return f"{name}: {p[name]!r} is negative or not finite"
    return _future(p["event_time"], now_ms, max_skew_s)


def _future(event_time: datetime, now_ms: int, max_skew_s: float) -> str | None:
    ahead_s = event_time.timestamp() - now_ms / 1000
    if ahead_s > max_skew_s:
        return f"event_time: {event_time.isoformat()} is {ahead_s:.0f} s in the future (more than {max_skew_s:g} s)"
    return None
