"""Alerts raised once and resolved once per key, by the worker that owns the key's scope.

The rules (`streams.rules`) say what fires; a check judged by its value clears only once the value is
back past the threshold by the rule's margin, so a value hovering at the threshold does not flap. State is
the worker's own: after a rebalance the new owner starts clean, and at worst raises an alert that was
already up once more.
"""

from __future__ import annotations

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
        self.raised: set[str] = set()

    def raised_keys(self, kind: str, scope_kind: str) -> set[str]:
        """The scope keys of the alerts of `kind` over `scope_kind` now raised here."""
        prefix = Check.prefix(kind, scope_kind)
        return {key.removeprefix(prefix) for key in self.raised if key.startswith(prefix)}

    async def apply(self, check: Check) -> None:
        """Publishes the change when the check's verdict differs from what was last said for its scope."""
        key = check.key
        firing = check.firing
        if firing is None:
            over = check.value - check.threshold if check.above else check.threshold - check.value
            firing = over > 0 if key not in self.raised else over > -check.margin
        if firing == (key in self.raised):
            return
        if firing:
            self.raised.add(key)
        else:
            self.raised.discard(key)
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
