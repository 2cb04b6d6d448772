"""Values a record may not carry even though it decodes: each reason names the field and the value."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from suanwang.streams.facts import Facts

UTILISATIONS = ("cpu_util", "memory_util", "accelerator_util")


def telemetry_problem(t: dict[str, Any], facts: Facts, now_ms: int, max_skew_s: float) -> str | None:
    """Why a telemetry sample cannot be counted, or None when it can."""
    node = facts.nodes.get(t["node_id"])
    if node is None:
        return f"node_id: {t['node_id']!r} is not a registered node"
    for name in UTILISATIONS:
        if not 0.0 <= t[name] <= 1.0:
            return f"{name}: {t[name]!r} is outside 0-1"
    if not (t["power_kw"] >= 0 and math.isfinite(t["power_kw"])):
        return f"power_kw: {t['power_kw']!r} is not a power (negative or not finite)"
    if not math.isfinite(t["inlet_temp_c"]):
        return f"inlet_temp_c: {t['inlet_temp_c']!r} is not finite"
    for scope in ("hub", "cluster", "province"):
        if t[scope] != node[scope]:
            return f"{scope}: {t[scope]!r} but {t['node_id']} is registered in {node[scope]!r}"
    return _future(t["event_time"], now_ms, max_skew_s)


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
