"""The trace replay format: good rows parse, each bad row is reported with file, line and field, and skipped."""

from __future__ import annotations

from pathlib import Path

import pytest

from suanwang.errors import SuanwangError
from suanwang.simulator.trace import (
    CPU_ARCH,
    GPU_ARCH,
    node_registration,
    read_nodes,
    read_tasks,
    report,
    task_request,
)
from suanwang.topology import load_network

HUBS = load_network().hub_ids

NODES = """node_id,hub,cpu_milli,memory_mib,gpu,gpu_model
n1,,96000,786432,8,V100M32
n2,gansu,64000,262144,0,
n3,atlantis,64000,262144,0,
n4,gba,lots,262144,0,
n5,gba,64000,262144,2,
n1,gba,64000,262144,0,
n6,gba,64000
n7,gba,32000,131072,17,T4
n8,gba,32000,131072,2,T4
"""

TASKS = """task_id,arrival_s,duration_s,cpu_milli,memory_mib,gpu,gpu_milli,gpu_models
t2,20,100,4000,8192,1,500,V100M32|T4
t1,10,,8000,16384,0,0,
t3,-5,10,1000,1024,0,0,
t4,30,0,1000,1024,0,0,
t5,30,10,1000,1024,1,0,T4
t6,30,10,1000,1024,1,1200,
t7,40,10,-1,1024,0,0,
t8,50,10,1000,1024,2,1000,  T4 | |A100
t8,60,10,1000,1024,0,0,
t9,soon,10,1000,1024,0,0,
"""


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_good_node_rows_parse_and_an_empty_hub_is_the_default(tmp_path: Path) -> None:
    parsed = read_nodes(_write(tmp_path, "nodes.csv", NODES), HUBS, "jingjinji")
    assert [n.node_id for n in parsed.rows] == ["n1", "n2", "n8"]
    n1 = parsed.rows[0]
    assert (n1.hub, n1.cpu_milli, n1.memory_mib, n1.gpu, n1.gpu_model, n1.arch) == (
        "jingjinji",
        96000,
        786432,
        8,
        "V100M32",
        GPU_ARCH,
    )
    assert parsed.rows[1].arch == CPU_ARCH and parsed.rows[1].gpu_model == ""


def test_each_bad_node_row_names_file_line_and_field(tmp_path: Path) -> None:
    parsed = read_nodes(_write(tmp_path, "nodes.csv", NODES), HUBS, "jingjinji")
    assert [str(e) for e in parsed.errors] == [
        "nodes.csv:4: hub: 'atlantis' is not a hub (" + ", ".join(HUBS) + ")",
        "nodes.csv:5: cpu_milli: 'lots' is not a whole number",
        "nodes.csv:6: gpu_model: is empty for a node with gpu=2",
        "nodes.csv:7: node_id: 'n1' appears twice",
        "nodes.csv:8: row: has a different number of fields than the header",
        "nodes.csv:9: gpu: 17 is not in 0..16",
    ]


def test_tasks_come_in_arrival_order_with_their_requirements(tmp_path: Path) -> None:
    parsed = read_tasks(_write(tmp_path, "tasks.csv", TASKS))
    assert [t.task_id for t in parsed.rows] == ["t1", "t2", "t8"]
    t1, t2, t8 = parsed.rows
    assert (t1.arrival_s, t1.duration_s, t1.gpu, t1.gpu_milli, t1.gpu_models) == (10.0, None, 0, 1000, ())
    assert (t2.gpu, t2.gpu_milli, t2.gpu_models) == (1, 500, ("V100M32", "T4"))
    assert (t8.gpu, t8.gpu_milli, t8.gpu_models) == (2, 1000, ("T4", "A100"))


def test_each_bad_task_row_names_file_line_and_field(tmp_path: Path) -> None:
    parsed = read_tasks(_write(tmp_path, "tasks.csv", TASKS))
    assert [str(e) for e in parsed.errors] == [
        "tasks.csv:4: arrival_s: -5 is not a non-negative number of seconds",
        "tasks.csv:5: duration_s: 0 is not a positive number of seconds",
        "tasks.csv:6: gpu_milli: is 0 for a task with gpu=1; give its share of the accelerator, 1..1000",
        "tasks.csv:7: gpu_milli: 1200 is not in 0..1000",
        "tasks.csv:8: cpu_milli: -1 is not in 0..1000000000",
        "tasks.csv:10: task_id: 't8' appears twice",
        "tasks.csv:11: arrival_s: 'soon' is not a number of seconds",
    ]
    lines = report(parsed, limit=2)
    assert lines == [
        "skipped " + str(parsed.errors[0]),
        "skipped " + str(parsed.errors[1]),
        "... and 5 more rows skipped",
    ]


def test_a_missing_column_or_file_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SuanwangError, match="header lacks gpu_models; expected task_id,arrival_s"):
        read_tasks(_write(tmp_path, "tasks.csv", "task_id,arrival_s,duration_s,cpu_milli,memory_mib,gpu,gpu_milli\n"))
    with pytest.raises(SuanwangError, match="cannot read .*absent.csv"):
        read_nodes(tmp_path / "absent.csv", HUBS, "jingjinji")


def test_trace_rows_become_contract_records(tmp_path: Path) -> None:
    from suanwang.schemas.codec import Codec

    net = load_network()
    nodes = read_nodes(_write(tmp_path, "nodes.csv", NODES), HUBS, "jingjinji").rows
    tasks = read_tasks(_write(tmp_path, "tasks.csv", TASKS)).rows
    codec = Codec()
    reg = node_registration(nodes[0], net)
    assert codec.decode_as("NodeRegistration", codec.encode("NodeRegistration", reg))["chip_model"] == "V100M32"
    assert reg["cluster"] in net.hubs["jingjinji"].clusters and reg["accelerators"] == 8
    archs = sorted({node.arch for node in nodes})
    cpu_task, gpu_task = (task_request(t, archs, "jingjinji", net) for t in tasks[:2])
    assert cpu_task["chip_archs"] == [CPU_ARCH, GPU_ARCH] and cpu_task["duration_s"] is None
    assert gpu_task["chip_archs"] == [GPU_ARCH] and gpu_task["chip_models"] == ["V100M32", "T4"]
    assert gpu_task["accelerator_milli"] == 500 and gpu_task["latency_tier_ms"] is None
    codec.encode("TaskRequest", gpu_task)
