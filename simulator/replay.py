"""Offline replay of a recorded cluster through the dispatcher core (`suanwang replay`)."""

from __future__ import annotations

import csv
import heapq
import time
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import track

from suanwang.dispatcher.core import Dispatcher, warm_up
from suanwang.errors import SuanwangError
from suanwang.schemas.topics import PLACEMENT
from suanwang.simulator.trace import node_registration, read_nodes, read_tasks, report, task_request
from suanwang.topology import load_network


def replay(nodes_csv: Path, tasks_csv: Path, out_csv: Path, console: Console) -> dict[str, Any]:
    """Places the trace's tasks in arrival order; a task frees its node when its duration has passed.

    A task that cannot be placed is rejected and not retried. `out_csv` gets one row per placement.
    """
    network = load_network()
    hubs = network.hub_ids
    nodes, tasks = read_nodes(nodes_csv, hubs, hubs[0]), read_tasks(tasks_csv)
    for line in report(nodes) + report(tasks):
        console.print(line, highlight=False, markup=False)
    if not nodes.rows:
        raise SuanwangError(f"{nodes_csv} has no usable node row")
    warm_up(network)
    dispatcher = Dispatcher(network)
    for node in nodes.rows:
        dispatcher.nodes.register(node_registration(node, network))
    archs = sorted({node.arch for node in nodes.rows})
    running: list[tuple[float, str]] = []  # (end in trace seconds, task id)
    reasons: Counter[str] = Counter()
    deciding = 0.0
    try:
        handle = out_csv.open("w", newline="", encoding="utf-8")
    except OSError as exc:
        raise SuanwangError(f"cannot write {out_csv}: {exc.strerror}") from None
    with handle:
        writer = csv.writer(handle)
        writer.writerow(["task_id", "node_id", "gpu_indices"])
        steps = track(
            tasks.rows, description="replaying", console=console, transient=True, disable=not console.is_terminal
        )
        for task in steps:
            while running and running[0][0] <= task.arrival_s:
                dispatcher.release(heapq.heappop(running)[1])
            request = task_request(task, archs, hubs[0], network)
            started = time.perf_counter()
            spec, record = dispatcher.decide(request)
            deciding += time.perf_counter() - started
            if spec is not PLACEMENT:
                reasons[record["reason_code"]] += 1
                continue
            writer.writerow([task.task_id, record["node_id"], "|".join(map(str, record["accelerator_indices"]))])
            if task.duration_s is not None:
                heapq.heappush(running, (task.arrival_s + task.duration_s, task.task_id))
    decided = len(tasks.rows)
    return {
        "tasks": decided,
        "placed": decided - sum(reasons.values()),
        "rejected": sum(reasons.values()),
        "rejections": dict(reasons),
        "skipped_rows": len(nodes.errors) + len(tasks.errors),
        "decisions_per_s": decided / deciding if deciding else 0.0,
    }
