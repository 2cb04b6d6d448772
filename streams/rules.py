"""The alert rules in one place: what each kind judges, its threshold and the margin it must come back by
before it clears (both settings), and how severe it is. Agents hand the rules their figures; `Alerts`
publishes each change once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from suanwang.schemas.values import COLLECTOR_SILENT, NODE_OFFLINE
from suanwang.settings import Settings
from suanwang.streams.windows import PANE_MS

OVERHEATING = "overheating"
SEVERITY = {
    NODE_OFFLINE: "CRITICAL",
    COLLECTOR_SILENT: "CRITICAL",
    OVERHEATING: "CRITICAL",
    "overload": "WARNING",
    "imbalance": "WARNING",
    "latency_tier": "WARNING",
    "pue": "WARNING",
    "green_share": "INFO",
}
SCOPE_WINDOW_S = 300  # overload, PUE and green share are judged on the 5-min window of their scope
OVERLOAD_COVERAGE = 0.8  # a node's window must hold samples for this share of its panes to judge overload
IMBALANCE_WINDOW_S = 60  # hubs (and provinces) are compared minute by minute


@dataclass(frozen=True)
class Check:
    """One rule's judgement of one scope: firing as said, or (`firing` None) while `value` is past
    `threshold` (above it, or under it), clearing only once it is back by `margin`."""

    kind: str
    scope_kind: str
    scope_key: str
    value: float
    threshold: float
    message: str
    margin: float = 0.0
    above: bool = True
    firing: bool | None = None

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.scope_kind}:{self.scope_key}"


class Rules:
    """Every alert rule of the monitoring, with its numbers from the settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def on_window(self, r: dict[str, Any], panes: int, overloaded: bool) -> list[Check]:
        """A scope's closed window (a rollup record over `panes` panes): a node's sustained overload (`overloaded`:
        already raised), a cluster's PUE and green share."""
        s = self.settings
        kind, key = r["scope_kind"], r["scope_key"]
        if r["window_s"] != SCOPE_WINDOW_S:
            return []
        if kind == "node" and panes >= OVERLOAD_COVERAGE * SCOPE_WINDOW_S * 1000 / PANE_MS:
            load = max(r["cpu_util_mean"], r["accelerator_util_mean"])
            # fires only when every sample of the window was over; clears once the mean is back under by the margin
            return [
                Check(
                    "overload", kind, key, load if overloaded else r["load_min"], s.alert_overload_util,
                    f"{key} above {s.alert_overload_util:.0%} for 5 min (mean {load:.0%})", s.alert_overload_margin,
                )
            ]  # fmt: skip
        if kind == "cluster" and r["power_kw_mean"] > 0:
            return [
                Check(
                    "pue", kind, key, r["pue"], s.alert_pue_max,
                    f"{key} PUE {r['pue']:.2f} above the policy {s.alert_pue_max:.2f}", s.alert_pue_margin,
                ),
                Check(
                    "green_share", kind, key, r["green_share"], s.alert_green_share_min,
                    f"{key} green share {r['green_share']:.0%} under {s.alert_green_share_min:.0%}",
                    s.alert_green_share_margin, above=False,
                ),
            ]  # fmt: skip
        return []

    def imbalance(self, kind: str, windows: list[dict[str, Any]]) -> list[Check]:
        """Hubs (or provinces) idle while another is saturated, from their windows ending together."""
        s = self.settings
        if not windows or windows[0]["window_s"] != IMBALANCE_WINDOW_S:
            return []
        loads = {r["scope_key"]: max(r["cpu_util_mean"], r["accelerator_util_mean"]) for r in windows}
        busiest = max(loads, key=loads.__getitem__)
        saturated = loads[busiest] > s.alert_saturated_util
        return [
            Check(
                "imbalance", kind, key, load, s.alert_idle_util,
                f"{key} idle at {load:.0%} while {busiest} is at {loads[busiest]:.0%}: dispatch should move work",
                firing=saturated and key != busiest and load < s.alert_idle_util,
            )
            for key, load in loads.items()
        ]  # fmt: skip

    def inlet(self, node: str, cluster: str, temp: float) -> Check:
        """A node's inlet temperature, sample by sample."""
        s, message = self.settings, f"{node} inlet {temp:.1f} °C in {cluster}"
        return Check(OVERHEATING, "node", node, temp, s.alert_inlet_temp_c, message, s.alert_inlet_temp_margin_c)

    def silence(self, node: str, offline: bool, silent_ms: int) -> Check:
        """A node silent past `silence_ms` is offline until it reports again."""
        return Check(
            NODE_OFFLINE, "node", node, silent_ms / 1000, self.silence_ms / 1000,
            f"{node} silent for {silent_ms / 1000:.0f} s", firing=offline,
        )  # fmt: skip

    def collector(self, cluster: str, quiet: bool, silent_ms: int) -> Check:
        """A cluster whose whole stream went quiet past `silence_ms`: one alert for its collector, not one per
        node, until its samples come again."""
        return Check(
            COLLECTOR_SILENT, "cluster", cluster, silent_ms / 1000, self.silence_ms / 1000,
            f"every node of {cluster} silent for {silent_ms / 1000:.0f} s: its collector or its link", firing=quiet,
        )  # fmt: skip

    @property
    def silence_ms(self) -> int:
        """How long a node may be silent: a few telemetry intervals."""
        return int(self.settings.offline_after_intervals * self.settings.telemetry_interval_s * 1000)

    def latency(self, pair: str, p99_ms: float, tier_ms: float) -> Check:
        """A hub pair's minute of probes against the tier it is meant to meet."""
        a, b = pair.split(">")
        message = f"{a}→{b} p99 RTT {p99_ms:.1f} ms above its {tier_ms} ms tier"
        margin = self.settings.alert_latency_margin * tier_ms
        return Check("latency_tier", "hub_pair", pair, p99_ms, tier_ms, message, margin)
