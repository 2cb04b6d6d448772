"""`suanwang bench packing`: the field's openb experiment, every placement checked by the bench's own copy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from suanwang.benches.packing import POLICIES, WHOLE, Free, Variant, read_openb, run_policy, sample
from suanwang.errors import SuanwangError
from tests.conftest import run_cli

# the shared trace beside the checkout, or where this machine keeps it
OPENB = next(
    (p for p in (Path(__file__).parents[2] / "shared", Path("/work/shared")) if (p / "traces" / "openb").is_dir()),
    Path("/work/shared"),
) / "traces" / "openb"  # fmt: skip
NODES = "sn,cpu_milli,memory_mib,gpu,model\na,32000,65536,2,T4\nb,64000,131072,8,G2\nc,8000,16384,0,\n"
PODS = (
    "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos\n"
    "half,4000,8192,1,500,,LS\nwhole,8000,16384,1,1000,,LS\nfour,16000,32768,4,1000,,LS\n"
    "cpu,2000,4096,0,0,,BE\nt4only,4000,8192,1,300,T4,LS\n"
)


def _trace(tmp_path: Path, nodes: str = NODES, pods: str = PODS) -> Path:
    (tmp_path / "openb_node_list_gpu_node.csv").write_text(nodes)
    (tmp_path / "openb_pod_list_default.csv").write_text(pods)
    return tmp_path


def test_the_sample_reaches_the_inflated_capacity_and_no_more_than_one_pod_past_it(tmp_path: Path) -> None:
    cluster, pods = read_openb(_trace(tmp_path))
    order = sample(pods, int(cluster.gpus.sum()), 1.3, np.random.default_rng(3))
    asked = np.cumsum(pods.count[order] * pods.milli[order] / WHOLE)
    assert asked[-1] >= 1.3 * 10 > asked[-2]


def test_the_check_refuses_what_breaks_a_rule(tmp_path: Path) -> None:
    cluster, pods = read_openb(_trace(tmp_path))
    free = Free(cluster)
    half, four, t4only = pods.names.index("half"), pods.names.index("four"), pods.names.index("t4only")
    assert free.violation(pods, half, 0, [0]) is None
    free.place(pods, half, 0, [0])
    free.place(pods, half, 0, [0])
    assert free.violation(pods, half, 0, [0]) == "gpu capacity"  # the card is full
    assert free.violation(pods, four, 0, [0, 1, 1, 1]) == "gpu count"
    assert free.violation(pods, t4only, 1, [0]) == "model"  # a G2 for a T4-only pod
    assert free.violation(pods, half, 2, []) == "gpu count"  # no GPU there


@pytest.mark.parametrize("policy", POLICIES)
def test_every_policy_places_within_the_rules(tmp_path: Path, policy: str) -> None:
    cluster, pods = read_openb(_trace(tmp_path))
    order = sample(pods, int(cluster.gpus.sum()), 1.3, np.random.default_rng(1))
    result = run_policy(policy, cluster, pods, order, [len(order)], seed=1)
    assert result["violations"] == 0 and result["placed"] > 0
    assert result["refused_though_it_fit"] == 0  # the pod without a GPU included
    assert 0 < result["allocated"][0] <= 1


def test_a_variant_binds_gpu_pods_to_models_and_sets_the_share_of_multi_gpu_pods(tmp_path: Path) -> None:
    cluster, pods = read_openb(_trace(tmp_path, pods=PODS.replace("t4only,4000,8192,1,300,T4", "t4,4000,8192,1,300,")))
    rng = np.random.default_rng(5)
    bound = Variant(gpu_spec=1.0).pods(pods, cluster, rng)
    gpu = [k for k in range(len(pods.names)) if pods.count[k] > 0]
    assert all(len(bound.models[k]) == 1 and bound.models[k][0] in ("T4", "G2") for k in gpu)
    assert bound.models[pods.names.index("cpu")] == ()  # a pod without a GPU is bound to nothing
    assert Variant(gpu_spec=0.0).pods(pods, cluster, rng) is pods
    weights = Variant(multi_gpu=0.5).weights(pods)
    order = sample(pods, 10_000, 1.0, rng, weights)
    drawn = pods.count[order]
    assert abs((drawn > 1).sum() / (drawn > 0).sum() - 0.5) < 0.05
    assert Variant().weights(pods) is None
    no_multi = PODS.replace("four,16000,32768,4,1000", "four,16000,32768,1,1000")
    with pytest.raises(SuanwangError, match="multi_gpu=0.3"):
        Variant(multi_gpu=0.3).weights(read_openb(_trace(tmp_path, pods=no_multi))[1])


def test_bound_pods_land_only_on_their_model_under_every_policy(tmp_path: Path) -> None:
    cluster, pods = read_openb(_trace(tmp_path))
    pods = Variant(gpu_spec=1.0).pods(pods, cluster, np.random.default_rng(2))
    order = sample(pods, int(cluster.gpus.sum()), 1.3, np.random.default_rng(2))
    for policy in POLICIES:
        assert run_policy(policy, cluster, pods, order, [len(order)], seed=2)["violations"] == 0, policy


@pytest.mark.slow  # the field's experiment on the whole trace: tens of seconds
def test_on_openb_our_policy_allocates_more_than_every_baseline() -> None:
    done = run_cli("bench", "packing", "--trace-dir", str(OPENB), "--seeds", "1", "--json", timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    policies = figures["policies"]
    assert figures["gpus"] == 6212 and set(policies) == set(POLICIES)
    ours = policies.pop("suanwang")["at_130_median"]
    assert all(ours > p["at_130_median"] for p in policies.values()), (ours, policies)
    assert all(p["violations"] == 0 and p["refused_though_it_fit"] == 0 for p in figures["policies"].values())


@pytest.mark.parametrize(
    ("nodes", "pods", "message"),
    [
        ("sn,cpu_milli,memory_mib,gpu\na,1,1,1\n", PODS, "no column model"),
        (
            "sn,cpu_milli,memory_mib,gpu,model\na,lots,1,1,T4\n",
            PODS,
            "node_list_gpu_node.csv:2: cpu_milli='lots'",
        ),
        (NODES, "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec\np,1,1,1,0,\n", "gpu_milli=0 for num_gpu=1"),
        (NODES, "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec\np,1,1,99,0,\n", "num_gpu=99 is outside 0..16"),
    ],
)
def test_a_bad_trace_is_one_line_naming_the_field(tmp_path: Path, nodes: str, pods: str, message: str) -> None:
    with pytest.raises(SuanwangError, match=message):
        read_openb(_trace(tmp_path, nodes, pods))
    done = run_cli("bench", "packing", "--trace-dir", str(tmp_path), "--seeds", "1")
    assert done.returncode != 0 and message.split("'")[0] in done.stderr and "Traceback" not in done.stderr
