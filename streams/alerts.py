"""Node alerts from telemetry: overheating and overload, raised once and resolved once.

An alert clears only below its threshold minus a margin, so a value hovering at the threshold does
not flap.
"""

from __future__ import annotations

from typing import Any

from suanwang.bus import event
from suanwang.schemas.topics import ALERT, TELEMETRY
from suanwang.streams.app import Context

TEMP_MARGIN_C = 3.0
UTIL_MARGIN = 0.1


def register(ctx: Context) -> None:
    settings = ctx.settings
    # alert_key -> raised; keyed by node, so each key lives on its node's partition
    active_alerts = ctx.app.Table("active_node_alerts", default=bool, partitions=settings.topic_partitions)

    async def judge(
        kind: str, node: dict[str, Any], value: float, threshold: float, margin: float, message: str
    ) -> None:
        key = f"{kind}:{node['node_id']}"
        raised = active_alerts[key]
        firing = value > threshold if not raised else value >= threshold - margin
        if firing == raised:
            return
        active_alerts[key] = firing
        await ctx.send(
            ALERT,
            event(
                alert_key=key,
                kind=kind,
                severity="CRITICAL" if kind == "overheating" else "WARNING",
                scope_kind="node",
                scope_key=node["node_id"],
                message=message if firing else f"resolved: {message}",
                value=value,
                threshold=threshold,
                resolved=not firing,
            ),
        )

    @ctx.app.agent(ctx.topic(TELEMETRY), name="node_alerts")
    async def node_alerts(stream: Any) -> None:
        async for ev in stream.events():
            node = ctx.decode(ev)
            if node is None:
                continue
            temp = node["inlet_temp_c"]
            await judge(
                "overheating",
                node,
                temp,
                settings.alert_inlet_temp_c,
                TEMP_MARGIN_C,
                f"{node['node_id']} inlet {temp:.1f} °C in {node['cluster']}",
            )
            load = max(node["cpu_util"], node["accelerator_util"])
            await judge(
                "overload",
                node,
                load,
                settings.alert_overload_util,
                UTIL_MARGIN,
                f"{node['node_id']} at {load:.0%} in {node['cluster']}",
            )
