"""Alerts raised once and resolved once per key, by the worker that owns the key's scope.

The rules (`streams.rules`) say what fires; a check judged by its value clears only once the value is
back past the threshold by the rule's margin, so a value hovering at the threshold does not flap. State is
the worker's own: after a rebalance the new owner starts clean, and at worst raises an alert that was
already up once more.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

from suanwang.bus import event
from suanwang.schemas.topics import ALERT
from suanwang.streams.rules import SEVERITY, Check

if TYPE_CHECKING:
    from suanwang.streams.app import Context


class Alerts:
    """De-duplicated alert state of one worker."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.raised: dict[tuple[str, str], set[str]] = defaultdict(set)  # (kind, scope kind) -> scope keys

    def raised_keys(self, kind: str, scope_kind: str) -> set[str]:
        """The scope keys of the alerts of `kind` over `scope_kind` now raised here (read, not changed)."""
        return self.raised[(kind, scope_kind)]

    async def apply(self, check: Check) -> None:
        """Publishes the change when the check's verdict differs from what was last said for its scope."""
        key, raised = check.key, self.raised[(check.kind, check.scope_kind)]
        up = check.scope_key in raised
        firing = check.firing
        if firing is None:
            over = check.value - check.threshold if check.above else check.threshold - check.value
            firing = over > 0 if not up else over > -check.margin
        if firing == up:
            return
        if firing:
            raised.add(check.scope_key)
        else:
            raised.discard(check.scope_key)
        self.ctx.counts[f"alerts:{check.kind}"] += 1
        await self.ctx.send(
            ALERT,
            event(
                alert_key=key,
                kind=check.kind,
                severity=SEVERITY[check.kind],
                scope_kind=check.scope_kind,
                scope_key=check.scope_key,
                message=check.message if firing else f"resolved: {check.message}",
                value=check.value,
                threshold=check.threshold,
                resolved=not firing,
            ),
        )
