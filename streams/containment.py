"""No record can stop the worker: what escapes an agent's step or a timer is logged with the record, counted, and
the record dead-lettered with the reason, while the rest of the stream keeps flowing."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from suanwang.bus import dead_letter
from suanwang.schemas.topics import DEADLETTER

if TYPE_CHECKING:
    from suanwang.streams.app import Context

log = logging.getLogger("suanwang.worker")
Step = Callable[[list[Any]], Awaitable[Any]]
Timer = TypeVar("Timer", bound=Callable[[], Awaitable[None]])


def _where(ev: Any) -> str:
    msg = ev.message
    return f"{msg.topic}@{msg.partition}:{msg.offset}"


class Containment:
    """Runs agents' steps and timers so that one failure costs one record, never the app."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def batch(
        self, concern: str, events: list[Any], step: Step, ack: Callable[[Any], Awaitable[Any]] | None = None
    ) -> None:
        """`step(events)`; if it raises, each event again alone: the one at fault is dead-lettered (and acked,
        through `ack`, for a stream that acks by hand), the others go through."""
        try:
            await step(events)
            return
        except Exception as exc:
            if len(events) == 1:
                await self._dead_letter(concern, events[0], exc, ack)
                return
            self._count(concern)
            log.warning("%s: a batch of %d failed (%r); taking its events one by one", concern, len(events), exc)
        for ev in events:
            try:
                await step([ev])
            except Exception as exc:
                await self._dead_letter(concern, ev, exc, ack)

    def timer(self, concern: str) -> Callable[[Timer], Timer]:
        """A timer body whose failure is logged and counted; the next tick runs as usual."""

        def wrap(body: Timer) -> Timer:
            @functools.wraps(body)
            async def contained() -> None:
                try:
                    await body()
                except Exception:
                    self._count(concern)
                    log.exception("%s failed; it runs again at its next tick", concern)

            return contained  # type: ignore[return-value]

        return wrap

    async def _dead_letter(
        self, concern: str, ev: Any, exc: Exception, ack: Callable[[Any], Awaitable[Any]] | None
    ) -> None:
        self._count(concern)
        log.warning("%s: %s failed (%r); dead-lettered", concern, _where(ev), exc)
        await self.ctx.send(DEADLETTER, dead_letter(concern, ev.message, f"{concern} failed: {exc!r}"))
        if ack is not None:
            await ack(ev)

    def _count(self, concern: str) -> None:
        self.ctx.counts[f"failures:{concern}"] += 1
