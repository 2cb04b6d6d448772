"""Node alerts from telemetry: overheating and overload, raised once and resolved once."""

from __future__ import annotations

from typing import Any

from suanwang.bus import event
from suanwang.schemas.topics import ALERT, TELEMETRY
from suanwang.streams.app import Context


def register(ctx: Context) -> None:
    settings = ctx.settings
    # alert_key -> raised; keyed by node, so each key lives on its node's partition
    active_alerts = ctx.app.Table("active_node_alerts", default=bool, partitions=settings.topic_partitions)

    async def judge(kind: str, node: dict[str, Any], value: float, threshold: float, message: str) -> None:
        key = f"{kind}:{node['node_id']}"
        firing = value > threshold
        if firing == active_alerts[key]:
            return
        active_alerts[key] = firing
        await ctx.send(ALERT, event(
            alert_key=key, kind=kind, severity="CRITICAL" if kind == "overheating" else "WARNING",
            scope_kind="node", scope_key=node["node_id"], message=message if firing else f"resolved: {message}",
            value=value, threshold=threshold, resolved=not firing))

    @ctx.app.agent(ctx.topic(TELEMETRY), name="node_alerts")
    async def node_alerts(stream: Any) -> None:
        async for ev in stream.events():
            node = await ctx.decode(ev, "alerts")
            if node is None:
                continue
            temp = node["inlet_temp_c"]
            await judge("overheating", node, temp, settings.alert_inlet_temp_c,
                        f"{node['node_id']} inlet {temp:.1f} °C in {node['cluster']}")
            load = max(node["cpu_util"], node["accelerator_util"])
            await judge("overload", node, load, settings.alert_overload_util,
                        f"{node['node_id']} at {load:.0%} in {node['cluster']}")
