"""The batch path in the dispatcher service on the real broker: work that can wait is gathered for its window
and placed together, while urgent work sent after it is decided at once."""

from __future__ import annotations

import asyncio

from suanwang.clock import now_ms
from suanwang.schemas.topics import PLACEMENT, REGISTRY, TASK_REQUEST
from suanwang.settings import Settings
from tests.test_recovery_service import Running, gpu_node, request


def test_a_window_of_work_that_can_wait_is_placed_together_and_urgent_work_does_not_wait(settings: Settings) -> None:
    settings = settings.model_copy(update={"dispatch_batch_window_s": 0.5, "dispatch_batch_windows": "rendering=30"})
    waiting = [f"render-{k}" for k in range(4)]

    async def scenario() -> tuple[list, dict, int, int]:
        async with Running(settings) as run:
            for k in range(3):
                await run.send(REGISTRY, gpu_node(f"n{k}", "Guizhou", "guizhou", "H20", gpus=2))
            await run.until(lambda: run.service.core.nodes.size == 3)
            for task_id in waiting:  # rendering waits 30 s for others
                await run.send(TASK_REQUEST, request(task_id, "tenant-01", kind="rendering"))
            await run.until(lambda: len(run.service._window) == len(waiting))
            await run.send(TASK_REQUEST, request("drive", "tenant-01", kind="inference", latency_tier_ms=20))
            await run.until(lambda: run.holds("drive"))
            pending = {t: run.service.core.has_decided(t) for t in waiting}  # still waiting for their window
            await run.send(TASK_REQUEST, request("train", "tenant-01"))  # training's window, 0.5 s, ends first
            await run.until(lambda: all(run.holds(t) for t in [*waiting, "train"]))
            got = [r for r in await run.everything() if r[0] == PLACEMENT.name]
            return got, pending, run.service.batches, run.service.batched_tasks

    got, pending, batches, batched = asyncio.run(scenario())
    assert pending == dict.fromkeys(waiting, False)
    assert sorted(r["task_id"] for _, r in got) == sorted([*waiting, "drive", "train"])  # each placed once
    assert (batches, batched) == (1, len(waiting) + 1)  # one window: the shorter closed it for all
    assert all(now_ms() - int(r["request_time"].timestamp() * 1000) < 120_000 for _, r in got)
