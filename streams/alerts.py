"""Alerts raised once and resolved once per key, by the worker that owns the key's scope.

Callers pass a threshold and a margin: an alert clears only past its threshold by the margin, so a value
hovering at the threshold does not flap. State is the worker's own: after a rebalance the new owner
starts clean, and at worst raises an alert that was already up once more.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from suanwang.bus import event
from suanwang.schemas.topics import ALERT

if TYPE_CHECKING:
    from suanwang.streams.app import Context

SEVERITY = {
    "node_offline": "CRITICAL",
    "overheating": "CRITICAL",
    "overload": "WARNING",
    "imbalance": "WARNING",
    "latency_tier": "WARNING",
    "pue": "WARNING",
    "green_share": "INFO",
}


class Alerts:
    """De-duplicated alert state of one worker."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.raised: set[str] = set()

    async def judge(
        self,
        kind: str,
        scope_kind: str,
        scope_key: str,
        value: float,
        threshold: float,
        margin: float,
        message: str,
        above: bool = True,
    ) -> None:
        """Raises when the value crosses the threshold (above or below it), resolves once it is back by `margin`."""
        key = f"{kind}:{scope_kind}:{scope_key}"
        up = key in self.raised
        over = value - threshold if above else threshold - value
        firing = over > 0 if not up else over > -margin
        await self.set(key, kind, scope_kind, scope_key, firing, value, threshold, message)

    async def set(
        self,
        key: str,
        kind: str,
        scope_kind: str,
        scope_key: str,
        firing: bool,
        value: float,
        threshold: float,
        message: str,
    ) -> None:
        """Publishes the change when `firing` differs from what was last said for this key."""
        if firing == (key in self.raised):
            return
        if firing:
            self.raised.add(key)
        else:
            self.raised.discard(key)
        await self.ctx.send(
            ALERT,
            event(
                alert_key=key,
                kind=kind,
                severity=SEVERITY[kind],
                scope_kind=scope_kind,
                scope_key=scope_key,
                message=message if firing else f"resolved: {message}",
                value=value,
                threshold=threshold,
                resolved=not firing,
            ),
        )
