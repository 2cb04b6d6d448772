"""`suanwang replay`: a trace through the core, resources freed at task ends, never overcommitted."""

from __future__ import annotations

import csv
import heapq
import json
import random
from pathlib import Path

from tests.conftest import run_cli

HEADER_NODES = "node_id,hub,cpu_milli,memory_mib,gpu,gpu_model\n"
HEADER_TASKS = "task_id,arrival_s,duration_s,cpu_milli,memory_mib,gpu,gpu_milli,gpu_models\n"


def _replay(tmp_path: Path, nodes: str, tasks: str) -> tuple[dict, list[dict], str]:
    (tmp_path / "nodes.csv").write_text(HEADER_NODES + nodes, encoding="utf-8")
    (tmp_path / "tasks.csv").write_text(HEADER_TASKS + tasks, encoding="utf-8")
    out = tmp_path / "placements.csv"
    result = run_cli(
        "replay",
        "--nodes",
        str(tmp_path / "nodes.csv"),
        "--tasks",
        str(tmp_path / "tasks.csv"),
        "--out",
        str(out),
        "--json",
    )
    assert result.returncode == 0, result.stderr
    with out.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return json.loads(result.stdout.strip().splitlines()[-1]), rows, result.stderr


def test_finished_tasks_free_their_accelerators_and_the_unplaceable_are_rejected(tmp_path: Path) -> None:
    summary, rows, stderr = _replay(
        tmp_path,
        "g1,,8000,16384,1,T4\nbroken,,8000,16384,1,\n",
        "a,0,10,1000,1024,1,1000,\nb,5,10,1000,1024,1,1000,\nc,10,,1000,1024,1,600,T4\nd,11,,1000,1024,1,400,\n"
        "e,12,,1000,1024,1,100,V100\nf,x,1,1,1,0,0,\n",
    )
    assert "skipped nodes.csv:3: gpu_model: is empty for a node with gpu=1" in stderr
    assert "skipped tasks.csv:7: arrival_s: 'x' is not a number of seconds" in stderr
    assert [(r["task_id"], r["node_id"], r["gpu_indices"]) for r in rows] == [
        ("a", "g1", "0"),  # b arrives while a holds the only T4: rejected, not retried
        ("c", "g1", "0"),  # a has finished at 10
        ("d", "g1", "0"),  # 600 + 400 thousandths share the card
    ]
    assert summary["tasks"] == 5 and summary["placed"] == 3 and summary["rejected"] == 2
    assert summary["rejections"] == {"NO_FEASIBLE_NODE": 2} and summary["skipped_rows"] == 2
    assert summary["decisions_per_s"] > 0


def test_a_random_trace_never_holds_more_than_a_node_has(tmp_path: Path) -> None:
    rng = random.Random(5)
    nodes = {
        f"n{i}": (rng.choice([16000, 32000]), 65536, rng.choice([0, 2, 4, 8]), rng.choice(["T4", "V100"]))
        for i in range(60)
    }
    node_rows = "".join(f"{k},,{c},{m},{g},{mod if g else ''}\n" for k, (c, m, g, mod) in nodes.items())
    tasks = {}
    for j in range(1500):
        gpu = rng.choice([0, 0, 1, 1, 1, 2, 4])
        milli = rng.choice([250, 500, 1000]) if gpu == 1 else 1000
        tasks[f"t{j}"] = (j * 0.25, rng.choice([5.0, 30.0, 120.0]), rng.choice([1000, 4000, 8000]), 4096, gpu, milli)
    task_rows = "".join(f"{k},{a},{d},{c},{m},{g},{mi},\n" for k, (a, d, c, m, g, mi) in tasks.items())
    summary, rows, _ = _replay(tmp_path, node_rows, task_rows)
    assert summary["placed"] == len(rows) and 0 < summary["rejected"] < 1500
    held: dict[str, list[int]] = {k: [0, 0] for k in nodes}  # cpu, memory
    cards: dict[tuple[str, int], int] = {}
    ends: list[tuple[float, str]] = []
    placed = {r["task_id"]: r for r in rows}
    for task_id, (arrival, duration, cpu, mem, gpu, milli) in tasks.items():
        while ends and ends[0][0] <= arrival:
            _, done = heapq.heappop(ends)
            node = placed[done]["node_id"]
            held[node][0] -= tasks[done][2]
            held[node][1] -= tasks[done][3]
            for idx in placed[done]["gpu_indices"].split("|") if placed[done]["gpu_indices"] else []:
                cards[(node, int(idx))] -= tasks[done][5]
        if task_id not in placed:
            continue
        node, indices = placed[task_id]["node_id"], placed[task_id]["gpu_indices"]
        held[node][0] += cpu
        held[node][1] += mem
        assert held[node][0] <= nodes[node][0] and held[node][1] <= nodes[node][1]
        got = [int(i) for i in indices.split("|")] if indices else []
        assert len(got) == gpu and len(set(got)) == gpu
        for idx in got:
            assert idx < nodes[node][2]
            cards[(node, idx)] = cards.get((node, idx), 0) + milli
            assert cards[(node, idx)] <= 1000
        heapq.heappush(ends, (arrival + duration, task_id))
