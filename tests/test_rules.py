"""The alert rules alone: each judges its figures against its setting, and clears only past its margin."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from suanwang.schemas.topics import ALERT
from suanwang.settings import Settings
from suanwang.streams.alerts import Alerts
from suanwang.streams.rules import SEVERITY, Check, Rules

RULES = Rules(Settings(alert_overload_util=0.9, alert_overload_margin=0.1, alert_pue_max=1.25))


def _window(**over: Any) -> dict[str, Any]:
    base = dict(scope_kind="node", scope_key="n1", window_s=300, cpu_util_mean=0.95, accelerator_util_mean=0.5,
                load_min=0.92, power_kw_mean=10.0, pue=1.3, green_share=0.5)  # fmt: skip
    return {**base, **over}


def test_a_node_is_judged_on_its_whole_5_min_window_and_a_cluster_on_pue_and_green_share() -> None:
    (overload,) = RULES.on_window(_window(), panes=30, overloaded=False)
    assert (overload.kind, overload.value, overload.threshold, overload.margin) == ("overload", 0.92, 0.9, 0.1)
    (raised,) = RULES.on_window(_window(), panes=30, overloaded=True)
    assert raised.value == 0.95  # once raised, the mean decides when it clears
    assert RULES.on_window(_window(), panes=10, overloaded=False) == []  # too few panes to judge
    assert RULES.on_window(_window(window_s=60), panes=6, overloaded=False) == []
    pue, green = RULES.on_window(_window(scope_kind="cluster"), panes=30, overloaded=False)
    assert (pue.kind, pue.value, pue.threshold, pue.above) == ("pue", 1.3, 1.25, True)
    assert (green.kind, green.above) == ("green_share", False)
    assert all(kind in SEVERITY for kind in ("overload", "pue", "green_share", "imbalance", "node_offline"))


def test_imbalance_fires_for_the_idle_while_one_is_saturated() -> None:
    loads = {"east": 0.95, "west": 0.1, "north": 0.5}
    group = [
        _window(scope_kind="hub", scope_key=k, window_s=60, cpu_util_mean=v, accelerator_util_mean=0)
        for k, v in loads.items()
    ]
    firing = {c.scope_key: c.firing for c in RULES.imbalance("hub", group)}
    assert firing == {"east": False, "west": True, "north": False}
    assert RULES.imbalance("hub", [{**w, "window_s": 300} for w in group]) == []


class _Sent:
    """The worker context as `Alerts` sees it: what it sends."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.counts: Counter[str] = Counter()

    async def send(self, spec: Any, record: dict[str, Any]) -> None:
        assert spec is ALERT
        self.sent.append(record)


def test_an_alert_is_said_once_and_clears_only_past_its_margin() -> None:
    ctx = _Sent()
    alerts = Alerts(ctx)  # type: ignore[arg-type]

    def judged(value: float) -> Check:
        return Check("pue", "cluster", "c1", value, 1.25, "PUE", margin=0.02)

    async def run() -> None:
        for value in (1.2, 1.3, 1.31, 1.24, 1.22):  # up at 1.3; 1.24 is within the margin; 1.22 clears
            await alerts.apply(judged(value))
        await alerts.apply(RULES.silence("n1", True, 20_000))
        await alerts.apply(RULES.silence("n1", True, 25_000))

    asyncio.run(run())
    assert [(r["kind"], r["value"], r["resolved"]) for r in ctx.sent] == [
        ("pue", 1.3, False),
        ("pue", 1.22, True),
        ("node_offline", 20.0, False),
    ]
    assert ctx.sent[0]["severity"] == "WARNING" and ctx.sent[1]["message"].startswith("resolved: ")
    assert ctx.counts == {"alerts:pue": 2, "alerts:node_offline": 1}  # the worker's metrics count each change
