"""Preemption and fail-over through the dispatcher service on the real embedded broker: the victim and the
failed node's tasks are dispatched again exactly once, nothing is promised twice, and a preempted task is
billed only for what ran."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from suanwang.billing.metering import HOUR_MS, meter
from suanwang.bus import EventProducer, ensure_topics, event
from suanwang.clock import now_ms
from suanwang.dispatcher.service import DispatcherService
from suanwang.dispatcher.tiers import dispatcher_group
from suanwang.schemas.topics import ALERT, PLACEMENT, REGISTRY, REJECTION, TASK_LIFECYCLE, TASK_REQUEST
from suanwang.settings import Settings
from tests.evidence import caught_up, wait_for
from tests.fleet import read_all

WHOLE = dict(accelerators=1, accelerator_milli=1000, cpu_milli=1000, memory_mib=1024)


def gpu_node(node_id: str, province: str, hub: str, model: str, gpus: int = 1) -> dict[str, Any]:
    return event(
        node_id=node_id, hub=hub, cluster=f"{hub}-test", province=province, data_center="dc", compute_class="GPU",
        chip_arch="cuda", chip_model=model, cpu_milli=64000, memory_mib=262144, accelerators=gpus,
        accelerator_memory_mib=98304, throughput=4.0, power_kw=1.0, idle_power_kw=0.2, pue=1.3, unit_price=0.6,
        active=True,
    )  # fmt: skip


def request(task_id: str, tenant: str, **over: Any) -> dict[str, Any]:
    return event(
        task_id=task_id, tenant=tenant, industry="ai", kind="training", origin_hub="guizhou",
        origin_province="Guizhou", data_hub="guizhou", chip_archs=["cuda"], chip_models=[], precision="fp32",
        duration_s=7200.0, latency_tier_ms=None, input_gb=0.0, allowed_provinces=[], deadline=None, budget_yuan=None,
        **WHOLE,
    ) | over  # fmt: skip


class Running:
    """A dispatcher service on the test's topics, and a producer playing the users, providers and worker."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.producer = EventProducer(settings)
        self.service = DispatcherService(settings)
        self.stop = asyncio.Event()

    async def __aenter__(self) -> Running:
        await ensure_topics(self.settings)
        await self.producer.start()
        self.task = asyncio.create_task(self.service.run(self.stop))
        assert await wait_for(self.service.ready.is_set, 60)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        await self.task
        await self.producer.stop()

    async def send(self, spec: Any, record: dict[str, Any]) -> None:
        await self.producer.send(spec, record)
        await self.producer.flush()

    async def until(self, predicate: Any) -> None:
        assert await wait_for(predicate, 60)

    async def everything(self) -> list[tuple[str, dict[str, Any]]]:
        """Every decision, lifecycle event and request, once the service has committed all it read (so all it
        produced for them is out) and has nothing left to move: nothing can follow."""
        topics = [ALERT, TASK_LIFECYCLE, TASK_REQUEST]
        assert await caught_up(self.settings, *topics, group=dispatcher_group(self.service.scope))
        assert self.service.core.fail_over(now_ms(), 0) == 0 and self.service.core.outbox == []
        return await read_all(self.settings, [PLACEMENT, REJECTION, TASK_LIFECYCLE, TASK_REQUEST])

    def holds(self, task_id: str) -> bool:
        return task_id in self.service.core.reservations


def test_a_preempted_task_is_dispatched_again_and_billed_only_for_what_ran(settings: Settings) -> None:
    """tenant-30 (best effort by default in the tenants book) runs `low` on an H20; its production `high`,
    which needs an H20, finds both taken (the other by tenant-01's work, which it may not preempt) and
    preempts `low`, which goes on to the A800 freed meanwhile."""

    async def scenario() -> tuple[list[tuple[str, dict]], int, int, DispatcherService]:
        async with Running(settings) as run:
            for reg in (gpu_node("h1", "Guizhou", "guizhou", "H20"), gpu_node("h2", "Guizhou", "guizhou", "H20")):
                await run.send(REGISTRY, reg)
            await run.send(REGISTRY, gpu_node("far", "Gansu", "gansu", "A800"))
            await run.until(lambda: run.service.core.nodes.size == 3)
            await run.send(TASK_REQUEST, request("filler", "tenant-01", chip_models=["A800"]))
            await run.send(TASK_REQUEST, request("other", "tenant-01", chip_models=["H20"]))
            await run.until(lambda: run.holds("filler") and run.holds("other"))
            await run.send(TASK_REQUEST, request("low", "tenant-30"))
            await run.until(lambda: run.holds("low"))
            started = now_ms() - 30 * 60_000  # it has run half an hour
            await run.send(TASK_LIFECYCLE, event(task_id="low", node_id="x", state="STARTED") | {"event_time": started})
            await run.until(lambda: run.service.core.reservations["low"].started_ms == started)
            await run.send(TASK_LIFECYCLE, event(task_id="filler", node_id="far", state="FINISHED"))
            await run.until(lambda: not run.holds("filler"))
            await run.send(TASK_REQUEST, request("high", "tenant-30", priority="production", chip_models=["H20"]))
            await run.until(lambda: run.holds("high") and run.holds("low~1"))
            got = await run.everything()
            return got, started, now_ms(), run.service

    got, started, ended_by, service = asyncio.run(scenario())
    placed = {r["task_id"]: r for t, r in got if t == PLACEMENT.name}
    assert Counter(r["task_id"] for t, r in got if t == PLACEMENT.name) == Counter(
        {"filler": 1, "other": 1, "low": 1, "high": 1, "low~1": 1}
    )
    assert placed["high"]["node_id"] == placed["low"]["node_id"] != placed["other"]["node_id"]
    assert placed["low~1"]["node_id"] == "far" and placed["low~1"]["retry_of"] == "low"
    assert placed["low"]["priority"] == "best_effort" and placed["high"]["priority"] == "production"
    [failed] = [r for t, r in got if t == TASK_LIFECYCLE.name and r["state"] == "FAILED"]
    assert (failed["task_id"], failed["cause"], failed["preempted_by"], failed["retry_task_id"]) == (
        "low",
        "preempted",
        "high",
        "low~1",
    )
    [retry] = [r for t, r in got if t == TASK_REQUEST.name and r["task_id"] == "low~1"]
    assert (retry["attempt"], retry["retry_of"]) == (1, "low")
    assert not [r for t, r in got if t == REJECTION.name]
    assert set(service.core.reservations) == {"other", "high", "low~1"}  # each GPU promised once
    assert int(service.core.nodes.acc_free.sum()) == 0
    # billing meters `low` from its start to its preemption, at the price it was placed at
    events = [r for t, r in got if t == TASK_LIFECYCLE.name and r["task_id"] == "low"]
    metered = meter("low", placed["low"], events, now=ended_by + 1, grace_ms=0, storage_yuan_per_gb_month=0.0)
    [usage] = metered.usages
    ran_ms = int(failed["event_time"].timestamp() * 1000) - started
    assert usage.outcome == "FAILED" and 30 * 60_000 <= ran_ms < 30 * 60_000 + (ended_by - started)
    assert usage.hours == pytest.approx(ran_ms / HOUR_MS)
    assert usage.charges["compute"] == pytest.approx(placed["low"]["compute_yuan_per_hour"] * ran_ms / HOUR_MS)


def test_the_tasks_of_a_node_killed_mid_run_are_placed_elsewhere_exactly_once(settings: Settings) -> None:
    """Four 4-GPU nodes and ten running tasks; one node goes offline (the worker's alert, sent twice): after
    the grace, each of its tasks gets one FAILED event and one placement on another node, and no node holds
    more than it has."""
    settings = settings.model_copy(update={"dispatch_failover_grace_s": 0.5})
    nodes = [gpu_node(f"n{k}", "Guizhou", "guizhou", "H20", gpus=4) for k in range(4)]
    tasks = [f"job-{k}" for k in range(10)]

    async def scenario() -> tuple[list[tuple[str, dict]], str, list[str], DispatcherService]:
        async with Running(settings) as run:
            for reg in nodes:
                await run.send(REGISTRY, reg)
            await run.until(lambda: run.service.core.nodes.size == 4)
            for task_id in tasks:
                await run.send(TASK_REQUEST, request(task_id, f"tenant-{len(task_id):02d}"))
            await run.until(lambda: all(run.holds(t) for t in tasks))
            core = run.service.core
            on = Counter(core.nodes.node_ids[r.row] for r in core.reservations.values())
            killed = on.most_common(1)[0][0]
            victims = sorted(t for t, r in core.reservations.items() if core.nodes.node_ids[r.row] == killed)
            for task_id in tasks:
                node_id = core.nodes.node_ids[core.reservations[task_id].row]
                await run.send(TASK_LIFECYCLE, event(task_id=task_id, node_id=node_id, state="STARTED"))
            offline = event(
                alert_key=f"node_offline:node:{killed}", kind="node_offline", severity="CRITICAL", scope_kind="node",
                scope_key=killed, message=f"{killed} silent for 15 s", value=15.0, threshold=15.0, resolved=False,
            )  # fmt: skip
            await run.send(ALERT, offline)
            await run.until(lambda: all(run.holds(f"{t}~1") for t in victims))
            await run.send(ALERT, event(**{**offline, "value": 30.0}))  # the alert again: nothing moves twice
            got = await run.everything()
            return got, killed, victims, run.service

    got, killed, victims, service = asyncio.run(scenario())
    placements = [r for t, r in got if t == PLACEMENT.name]
    assert Counter(p["task_id"] for p in placements) == Counter(tasks + [f"{t}~1" for t in victims])
    moved = {p["task_id"]: p for p in placements if p["retry_of"]}
    assert all(p["node_id"] != killed for p in moved.values())
    failed = [r for t, r in got if t == TASK_LIFECYCLE.name and r["state"] == "FAILED"]
    assert sorted(r["task_id"] for r in failed) == victims
    assert {(r["cause"], r["node_id"]) for r in failed} == {("node_offline", killed)}
    assert sorted(r["task_id"] for t, r in got if t == TASK_REQUEST.name and r["attempt"]) == [
        f"{t}~1" for t in victims
    ]
    held = Counter(service.core.nodes.node_ids[r.row] for r in service.core.reservations.values())
    assert held[killed] == 0 and all(n <= 4 for n in held.values()) and sum(held.values()) == len(tasks)
