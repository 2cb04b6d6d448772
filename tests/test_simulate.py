"""The simulator on the real broker: a replayed trace drives the dispatcher, and `simulate` reports bad rows."""

from __future__ import annotations

import asyncio
from pathlib import Path

from suanwang.bus import contract_consumer
from suanwang.dispatcher.service import DispatcherService
from suanwang.schemas.codec import Codec
from suanwang.schemas.topics import PLACEMENT, REGISTRY, REJECTION, TASK_LIFECYCLE, TASK_REQUEST, Topics
from suanwang.settings import Settings
from suanwang.simulator.simulate import Replay, Simulator
from suanwang.simulator.trace import read_nodes, read_tasks
from suanwang.topology import load_network
from tests.conftest import run_cli

NODES = """node_id,hub,cpu_milli,memory_mib,gpu,gpu_model
g1,,32000,131072,2,T4
g2,,32000,131072,2,V100
c1,gansu,16000,65536,0,
"""
TASKS = """task_id,arrival_s,duration_s,cpu_milli,memory_mib,gpu,gpu_milli,gpu_models
a,0,30,4000,4096,1,500,T4
b,10,30,4000,4096,1,500,T4
c,20,,8000,8192,0,0,
d,30,30,4000,4096,2,1000,V100
e,40,30,4000,4096,1,1000,A100
"""


def _trace(tmp_path: Path) -> tuple[Path, Path]:
    nodes, tasks = tmp_path / "nodes.csv", tmp_path / "tasks.csv"
    nodes.write_text(NODES + "bad,,x,1,0,\n", encoding="utf-8")
    tasks.write_text(TASKS + "f,later,1,1,1,0,0,\n", encoding="utf-8")
    return nodes, tasks


async def _records(settings: Settings, specs: list, want: int, timeout_s: float = 60) -> dict[str, list[dict]]:
    consumer = contract_consumer(settings, specs, None)
    await consumer.start()
    codec, topics = Codec(), Topics(settings.topic_prefix)
    out: dict[str, list[dict]] = {spec.name: [] for spec in specs}
    try:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while sum(map(len, out.values())) < want and asyncio.get_running_loop().time() < deadline:
            for tp, msgs in (await consumer.getmany(timeout_ms=200)).items():
                for m in msgs:
                    spec = topics.spec(tp.topic)
                    out[spec.name].append(codec.decode_as(spec.schema, m.value))
    finally:
        await consumer.stop()
    return out


def test_a_replayed_trace_is_dispatched_onto_its_own_nodes(tmp_path: Path, settings: Settings) -> None:
    nodes_csv, tasks_csv = _trace(tmp_path)
    hubs = load_network().hub_ids
    replay = Replay(read_nodes(nodes_csv, hubs, hubs[0]).rows, read_tasks(tasks_csv).rows, hubs[0])
    fast = settings.model_copy(update={"sim_time_scale": 20.0, "telemetry_interval_s": 1.0})

    async def scenario() -> dict[str, list[dict]]:
        stop = asyncio.Event()
        service = DispatcherService(fast)
        dispatcher = asyncio.create_task(service.run(stop))
        await asyncio.wait_for(service.ready.wait(), 60)  # it has read the (empty) registry first
        simulator = asyncio.create_task(Simulator(fast, replay).run(stop))
        got = await _records(fast, [PLACEMENT, REJECTION, TASK_LIFECYCLE], want=4 + 1 + 4 + 3)  # a, b and d also finish
        stop.set()
        await asyncio.gather(dispatcher, simulator)
        return got

    got = asyncio.run(scenario())
    placed = {p["task_id"]: p for p in got[PLACEMENT.name]}
    assert sorted(placed) == ["a", "b", "c", "d"]
    assert placed["a"]["node_id"] == placed["b"]["node_id"] == "g1"  # two halves of one T4 share a card
    assert placed["a"]["accelerator_indices"] == placed["b"]["accelerator_indices"]
    assert placed["d"]["node_id"] == "g2" and placed["d"]["accelerator_indices"] == [0, 1]
    assert [r["task_id"] for r in got[REJECTION.name]] == ["e"]  # no A100 in this trace
    started = [e["task_id"] for e in got[TASK_LIFECYCLE.name] if e["state"] == "STARTED"]
    ended = [e["task_id"] for e in got[TASK_LIFECYCLE.name] if e["state"] != "STARTED"]
    assert sorted(started) == ["a", "b", "c", "d"]
    assert sorted(ended) == ["a", "b", "d"]  # c has no duration: it runs until the trace ends


def test_simulate_reports_skipped_rows_and_sends_the_rest(tmp_path: Path, settings: Settings) -> None:
    nodes_csv, tasks_csv = _trace(tmp_path)
    env = {"SUANWANG_KAFKA_BOOTSTRAP": settings.kafka_bootstrap, "SUANWANG_TOPIC_PREFIX": settings.topic_prefix}
    result = run_cli(
        "simulate",
        "--duration",
        "8",
        "--time-scale",
        "100",
        "--replay-nodes",
        str(nodes_csv),
        "--replay-tasks",
        str(tasks_csv),
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "simulator: " in result.stderr and "5/5 tasks" in result.stderr, result.stderr
    assert "skipped nodes.csv:5: cpu_milli: 'x' is not a whole number" in result.stderr
    assert "skipped tasks.csv:7: arrival_s: 'later' is not a number of seconds" in result.stderr
    assert "replaying 3 nodes and 5 tasks" in result.stderr
    got = asyncio.run(_records(settings, [REGISTRY, TASK_REQUEST], want=11, timeout_s=20))
    registered: dict[str, list[bool]] = {}
    for r in got[REGISTRY.name]:  # a node's registrations share a partition: they arrive in order
        registered.setdefault(r["node_id"], []).append(r["paused"])
    assert registered == {"c1": [False, True], "g1": [False, True], "g2": [False, True]}  # paused once it ended
    assert sorted(r["task_id"] for r in got[TASK_REQUEST.name]) == ["a", "b", "c", "d", "e"]


def test_replay_files_go_together() -> None:
    result = run_cli("simulate", "--replay-nodes", "nodes.csv", env={"SUANWANG_KAFKA_BOOTSTRAP": "127.0.0.1:9"})
    assert result.returncode == 2
    assert "--replay-nodes and --replay-tasks go together" in result.stderr


def test_bulk_streams_linger_to_fill_batches_and_task_requests_go_at_once() -> None:
    settings = Settings(bulk_linger_ms=80, sim_nodes=10)
    simulator = Simulator(settings)
    assert simulator.producer._linger_ms == 80 and simulator.requests._linger_ms == 0
    assert simulator.requests.codec is simulator.producer.codec  # one codec: schemas registered once
