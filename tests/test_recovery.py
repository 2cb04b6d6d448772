"""Priorities, preemption and the re-dispatch of work whose node failed, on the dispatcher core alone."""

from __future__ import annotations

import numpy as np
import pytest

from suanwang.clock import now_ms
from suanwang.dispatcher import stages
from suanwang.dispatcher.core import RETRIES_EXHAUSTED, Dispatcher
from suanwang.dispatcher.priority import BEST_EFFORT, EMERGENCY, PRODUCTION, Priorities, TenantClass, may_preempt
from suanwang.schemas.topics import PLACEMENT, REJECTION, TASK_LIFECYCLE, TASK_REQUEST
from suanwang.schemas.values import PRIORITY_CLASSES
from suanwang.topology import load_network

W = stages.WHOLE
BOOK = {
    "red": TenantClass(PRODUCTION, emergency=True),
    "lab": TenantClass(BEST_EFFORT),
    "shop": TenantClass(PRODUCTION),
}


def node(node_id: str, gpus: int = 1, province: str = "Guizhou", hub: str = "guizhou") -> dict:
    return dict(
        node_id=node_id, hub=hub, cluster=f"{hub}-c", province=province, compute_class="GPU", chip_arch="cuda",
        chip_model="H20", cpu_milli=64000, memory_mib=262144, accelerators=gpus, throughput=100.0, power_kw=2.0,
        pue=1.2, unit_price=1.0,
    )  # fmt: skip


def request(task_id: str, tenant: str, **over) -> dict:
    base = dict(
        task_id=task_id, tenant=tenant, kind="training", event_time=now_ms(), origin_hub="guizhou",
        origin_province="Guizhou", data_hub="guizhou", chip_archs=["cuda"], chip_models=[], cpu_milli=1000,
        memory_mib=1024, accelerators=1, accelerator_milli=W, duration_s=3600.0, latency_tier_ms=None, input_gb=0.0,
        allowed_provinces=[], deadline=None, budget_yuan=None,
    )  # fmt: skip
    return {**base, **over}


@pytest.fixture(scope="module")
def network():
    return load_network()


def dispatcher(network, *nodes: dict, **options) -> Dispatcher:
    d = Dispatcher(network, priorities=Priorities(BOOK), **options)
    for n in nodes:
        d.nodes.register(n)
    return d


def free_gpus(d: Dispatcher) -> int:
    return int(d.nodes.acc_free.sum() // W)


def test_the_classes_come_from_the_contract_highest_first() -> None:
    assert PRIORITY_CLASSES == (EMERGENCY, PRODUCTION, BEST_EFFORT) == ("emergency", "production", "best_effort")


def test_who_may_preempt_whom() -> None:
    assert may_preempt(PRODUCTION, "a", BEST_EFFORT, "a")
    assert not may_preempt(PRODUCTION, "a", BEST_EFFORT, "b")  # only its own tenant's work
    assert may_preempt(EMERGENCY, "a", PRODUCTION, "b")  # emergency work: any tenant's
    assert not may_preempt(EMERGENCY, "a", EMERGENCY, "a")  # nothing preempts emergency work
    assert not may_preempt(BEST_EFFORT, "a", BEST_EFFORT, "a")


@pytest.mark.parametrize(
    ("tenant", "priority", "code", "names"),
    [
        ("shop", "urgent", "UNKNOWN_PRIORITY", "priority 'urgent'"),
        ("shop", EMERGENCY, "PRIORITY_NOT_ALLOWED", "tenant 'shop'"),
        ("nobody", EMERGENCY, "PRIORITY_NOT_ALLOWED", "tenant 'nobody'"),  # not in the book: no emergency
    ],
)
def test_a_class_that_does_not_exist_or_is_not_allowed_is_rejected_naming_it(network, tenant, priority, code, names):
    d = dispatcher(network, node("n1"))
    spec, out = d.decide(request("t", tenant, priority=priority))
    assert spec is REJECTION and out["reason_code"] == code and names in out["reason"]
    assert free_gpus(d) == 1


def test_the_tenants_default_class_applies_when_a_request_names_none(network) -> None:
    d = dispatcher(network, node("n1", gpus=2))
    assert d.decide(request("a", "lab"))[1]["priority"] == BEST_EFFORT
    assert d.decide(request("b", "lab", priority=PRODUCTION))[1]["priority"] == PRODUCTION


def test_production_work_preempts_its_tenants_best_effort_work_which_is_dispatched_again(network) -> None:
    d = dispatcher(network, node("n1"))
    _, low = d.decide(request("low", "lab"))
    d.started("low", now_ms() - 60_000)
    spec, high = d.decide(request("high", "lab", priority=PRODUCTION))
    assert spec is PLACEMENT and high["node_id"] == low["node_id"] == "n1"
    assert (low["decided_by"], high["decided_by"]) == ("greedy", "preemption")
    (lifecycle_spec, failed), (retry_spec, retry) = d.take_outbox()
    assert lifecycle_spec is TASK_LIFECYCLE and retry_spec is TASK_REQUEST
    assert failed["task_id"] == "low" and failed["state"] == "FAILED" and failed["cause"] == "preempted"
    assert failed["preempted_by"] == "high" and failed["retry_task_id"] == retry["task_id"] == "low~1"
    assert "preempted by production task high of lab" in failed["detail"]
    assert (retry["attempt"], retry["retry_of"], retry["not_before"]) == (1, "low", None)
    assert set(d.reservations) == {"high"} and free_gpus(d) == 0  # the GPU is promised once
    spec, again = d.decide(retry)
    assert spec is REJECTION and again["reason_code"] == "NO_FEASIBLE_NODE"  # best effort preempts nothing
    assert d.take_outbox() == []


def test_production_work_does_not_preempt_another_tenants_work_but_emergency_work_does(network) -> None:
    d = dispatcher(network, node("n1"))
    d.decide(request("low", "lab"))
    spec, out = d.decide(request("shop-1", "shop"))
    assert spec is REJECTION and d.take_outbox() == []
    spec, out = d.decide(request("fire", "red", priority=EMERGENCY))
    assert spec is PLACEMENT and [e["task_id"] for _, e in d.take_outbox()] == ["low", "low~1"]
    spec, out = d.decide(request("fire-2", "red", priority=EMERGENCY))  # nothing preempts emergency work
    assert spec is REJECTION and out["reason_code"] == "NO_FEASIBLE_NODE" and set(d.reservations) == {"fire"}


def test_the_victims_that_cost_least_are_chosen(network) -> None:
    """n1 holds two best-effort halves, n2 one best-effort whole GPU, n3 production work: n2 loses least."""
    d = dispatcher(network, node("n1"), node("n2"), node("n3"))
    for task_id, tenant, milli, prio in [
        ("half-1", "lab", 500, None), ("half-2", "lab", 500, None), ("whole", "lab", W, None),
        ("prod", "lab", W, PRODUCTION),
    ]:  # fmt: skip
        assert d.decide(request(task_id, tenant, accelerator_milli=milli, priority=prio))[0] is PLACEMENT
    node_of = {t: d.nodes.node_ids[r.row] for t, r in d.reservations.items()}
    assert len({node_of["half-1"], node_of["whole"], node_of["prod"]}) == 3 and node_of["half-2"] == node_of["half-1"]
    spec, out = d.decide(request("fire", "red", priority=EMERGENCY))
    assert spec is PLACEMENT and out["node_id"] == node_of["whole"]
    assert [e["task_id"] for s, e in d.take_outbox() if s is TASK_LIFECYCLE] == ["whole"]


def test_of_equal_victims_the_one_that_has_run_least_is_chosen(network) -> None:
    d = dispatcher(network, node("n1"), node("n2"))
    d.decide(request("old", "lab"))
    d.decide(request("new", "lab"))
    now = now_ms()
    d.started("old", now - 3_600_000)
    d.started("new", now - 60_000)
    d.decide(request("high", "lab", priority=PRODUCTION))
    assert [e["task_id"] for s, e in d.take_outbox() if s is TASK_LIFECYCLE] == ["new"]


def test_a_victim_not_needed_is_spared(network) -> None:
    """Freed in order, `fresh` (a half beside production work) does not make room and `old` does: `fresh` is
    spared again (kube-scheduler's reprieve)."""
    d = dispatcher(network, node("n1", gpus=2))
    d.decide(request("prod", "lab", priority=PRODUCTION, accelerator_milli=500))
    d.decide(request("fresh", "lab", accelerator_milli=500))  # beside prod, on the same GPU
    d.decide(request("old", "lab"))
    now = now_ms()
    d.started("old", now - 3_600_000)
    d.started("fresh", now - 1_000)
    spec, out = d.decide(request("fire", "red", priority=EMERGENCY))
    victims = [e["task_id"] for s, e in d.take_outbox() if s is TASK_LIFECYCLE]
    assert spec is PLACEMENT and victims == ["old"]
    assert set(d.reservations) == {"prod", "fresh", "fire"} and free_gpus(d) == 0


def test_the_tasks_of_a_node_offline_past_the_grace_are_dispatched_again_once(network) -> None:
    d = dispatcher(network, node("n1", gpus=4), node("n2", gpus=4))
    for k in range(6):
        d.decide(request(f"t{k}", "shop"))
    on_n1 = sorted(t for t, r in d.reservations.items() if d.nodes.node_ids[r.row] == "n1")
    assert on_n1
    t0 = now_ms()
    d.set_health("n1", False, t0)
    assert d.fail_over(t0 + 9_999, grace_ms=10_000) == 0 and d.take_outbox() == []
    assert d.fail_over(t0 + 10_000, grace_ms=10_000) == len(on_n1)
    out = d.take_outbox()
    failed = [e for s, e in out if s is TASK_LIFECYCLE]
    retries = [e for s, e in out if s is TASK_REQUEST]
    assert [e["task_id"] for e in failed] == on_n1 and {e["cause"] for e in failed} == {"node_offline"}
    assert [e["task_id"] for e in retries] == [f"{t}~1" for t in on_n1]
    assert d.fail_over(t0 + 20_000, grace_ms=10_000) == 0  # once per failure
    placed = [d.decide(r) for r in retries]
    assert all(s is PLACEMENT and p["node_id"] == "n2" and p["retry_of"] for s, p in placed[: 4 - (6 - len(on_n1))])
    assert int(d.nodes.acc_free[d.nodes.row["n1"]].sum()) == 4 * W  # nothing held on the failed node


def test_a_cluster_whose_collector_is_silent_takes_no_new_work_and_keeps_its_tasks(network) -> None:
    """While guizhou-c's collector is silent its nodes take nothing and nothing moves, however long; once it
    reports, they take work again, except a node declared offline meanwhile."""
    d = dispatcher(network, node("n1", gpus=4), node("n2", gpus=4), node("far", gpus=4, hub="gansu", province="Gansu"))
    here = {"allowed_provinces": ["Guizhou"]}
    held_on = d.decide(request("held", "shop", **here))[1]["node_id"]
    t0 = now_ms()
    d.set_collector("guizhou-c", reporting=False)
    assert d.fail_over(t0 + 3_600_000, grace_ms=10_000) == 0 and d.take_outbox() == []
    assert set(d.reservations) == {"held"} and d.nodes.node_ids[d.reservations["held"].row] == held_on
    assert d.decide(request("anywhere", "shop"))[1]["node_id"] == "far"
    assert d.decide(request("refused", "shop", **here))[0] is REJECTION
    d.set_health(held_on, False, t0)
    d.set_collector("guizhou-c", reporting=True)
    other = ({"n1", "n2"} - {held_on}).pop()
    assert [d.decide(request(f"back{k}", "shop", **here))[1]["node_id"] for k in range(4)] == [other] * 4
    assert d.decide(request("full", "shop", **here))[0] is REJECTION  # the offline node stays out


def test_a_registration_sent_again_does_not_clear_an_alert_nor_an_alert_resolved_a_pause(network) -> None:
    """Collectors send registrations again (a restart, a capacity change): a node declared offline, or in a
    silent cluster, stays out until its alert resolves; a node paused by its registration stays paused."""
    d = Dispatcher(network, priorities=Priorities(BOOK))
    for n in (node("n1"), node("n2", hub="gansu", province="Gansu")):
        d.register(n)
    here = {"allowed_provinces": ["Guizhou"]}
    d.set_health("n1", False, now_ms())
    d.register(node("n1", gpus=2))  # sent again, with more capacity
    assert d.decide(request("while-offline", "shop", **here))[0] is REJECTION
    d.set_health("n1", True, now_ms())
    d.set_collector("guizhou-c", reporting=False)
    d.register(node("n1", gpus=2))
    assert d.decide(request("while-silent", "shop", **here))[0] is REJECTION
    d.set_collector("guizhou-c", reporting=True)
    d.register({**node("n1", gpus=2), "paused": True})
    d.set_health("n1", False, now_ms())
    d.set_health("n1", True, now_ms())  # back, but still paused
    assert d.decide(request("while-paused", "shop", **here))[0] is REJECTION
    d.register(node("n1", gpus=2))
    assert d.decide(request("at-last", "shop", **here))[1]["node_id"] == "n1"


def test_a_retry_is_kept_off_every_node_that_failed_it_even_once_that_node_is_back(network) -> None:
    d = dispatcher(network, node("n1"), node("n2"), node("n3"))
    spec, first = d.decide(request("job", "shop"))
    retry = d.evict("job", "node_fault", "GPU 0 lost", now_ms())[-1][1]
    assert retry["avoid_nodes"] == [first["node_id"]]
    spec, second = d.decide(retry)
    assert spec is PLACEMENT and second["node_id"] != first["node_id"]
    d.set_health(second["node_id"], False, now_ms())
    assert d.fail_over(now_ms() + 10_000, grace_ms=10_000) == 1
    retry = [e for s, e in d.take_outbox() if s is TASK_REQUEST][0]
    d.set_health(second["node_id"], True, now_ms())  # back, and as free as the third node
    assert retry["avoid_nodes"] == [first["node_id"], second["node_id"]]
    spec, third = d.decide(retry)
    assert spec is PLACEMENT and third["node_id"] not in retry["avoid_nodes"]
    retry = d.evict(retry["task_id"], "node_fault", "GPU 0 lost", now_ms())[-1][1]
    spec, none_left = d.decide(retry)
    assert spec is REJECTION and none_left["reason_code"] == "NO_FEASIBLE_NODE"


def test_a_preempted_task_may_go_back_to_its_node(network) -> None:
    d = dispatcher(network, node("n1"))
    d.decide(request("low", "lab"))
    d.decide(request("high", "lab", priority=PRODUCTION))
    retry = [e for s, e in d.take_outbox() if s is TASK_REQUEST][0]
    assert retry["avoid_nodes"] == []
    d.release("high")
    assert d.decide(retry)[1]["node_id"] == "n1"


def test_a_batch_keeps_a_retry_off_the_nodes_that_failed_it(network) -> None:
    d = dispatcher(network, node("n1"), node("n2"))
    spec, first = d.decide(request("job", "shop"))
    retry = d.evict("job", "node_fault", "GPU 0 lost", now_ms())[-1][1]
    decisions = d.decide_batch([retry, request("other", "shop")])
    by_task = {out["task_id"]: out for _spec, out in decisions}
    assert by_task["job~1"]["node_id"] != first["node_id"]


def test_a_node_back_before_the_grace_keeps_its_tasks(network) -> None:
    d = dispatcher(network, node("n1"))
    d.decide(request("t", "shop"))
    t0 = now_ms()
    d.set_health("n1", False, t0)
    d.set_health("n1", True, t0 + 1_000)
    assert d.fail_over(t0 + 60_000, grace_ms=10_000) == 0 and "t" in d.reservations


def test_repeated_failures_back_off_then_end_in_a_rejection_naming_why(network) -> None:
    d = dispatcher(network, node("n1"), node("n2"), node("n3"), max_attempts=3, retry_backoff_s=2.0)
    d.decide(request("job", "shop"))
    now = now_ms()
    first = d.evict("job", "node_fault", "GPU 0 lost", now)
    assert [r["not_before"] for s, r in first if s is TASK_REQUEST] == [None]  # the first at once
    assert d.decide(first[-1][1])[0] is PLACEMENT
    second = d.evict("job~1", "node_fault", "GPU 0 lost", now)
    assert second[-1][1]["task_id"] == "job~2" and second[-1][1]["not_before"] == now + 2_000
    assert d.decide(second[-1][1])[0] is PLACEMENT
    third = d.evict("job~2", "node_fault", "GPU 0 lost", now)
    spec, rejection = third[-1]
    assert spec is REJECTION and rejection["task_id"] == "job~3" and rejection["reason_code"] == RETRIES_EXHAUSTED
    assert "job ended 3 times, the last node_fault: GPU 0 lost" in rejection["reason"]
    assert third[0][1]["retry_task_id"] == "job~3" and d.reservations == {}
    assert d.evict("job~2", "node_fault", "again", now) == []  # nothing happens twice


def test_a_preemption_search_leaves_the_table_as_it_was_when_nothing_fits(network) -> None:
    d = dispatcher(network, node("n1", gpus=2))
    d.decide(request("a", "lab", accelerator_milli=300))
    d.decide(request("b", "shop"))
    ints, acc = d.nodes.ints.copy(), d.nodes.acc_free.copy()
    spec, _ = d.decide(request("big", "lab", priority=PRODUCTION, accelerators=2))  # b is another tenant's
    assert spec is REJECTION and d.take_outbox() == []
    assert np.array_equal(d.nodes.ints, ints) and np.array_equal(d.nodes.acc_free, acc)


@pytest.mark.parametrize(
    ("entry", "names"),
    [
        ("{name: A, priority: urgent}", "priority='urgent' is not one of emergency, production, best_effort"),
        ("{name: A, priority: emergency}", "priority='emergency' needs emergency: true"),
    ],
)
def test_a_tenants_book_with_a_bad_class_is_refused_at_start_naming_it(tmp_path, entry: str, names: str) -> None:
    from suanwang.billing.book import load_book
    from suanwang.errors import SuanwangError

    book = tmp_path / "tenants.yaml"
    book.write_text(f"tenants:\n  a: {entry}\n", encoding="utf-8")
    with pytest.raises(SuanwangError, match="tenants.yaml is invalid") as refused:
        load_book(book)
    assert names in str(refused.value) and "tenants.a" in str(refused.value)


def test_a_preemption_search_looks_only_at_nodes_holding_lower_class_work(network) -> None:
    """The index by class follows every placement and release, so a rejection does not scan every busy node."""
    d = dispatcher(network, node("n1"), node("n2"), node("n3"))

    def by_class() -> dict[str, dict[int, int]]:
        out: dict[str, dict[int, int]] = {}
        for res in d.reservations.values():
            rows = out.setdefault(res.priority, {})
            rows[res.row] = rows.get(res.row, 0) + 1
        return out

    d.decide(request("prod", "shop"))
    d.decide(request("low", "lab"))
    assert {name: rows for name, rows in d.rows_by_class.items() if rows} == by_class()
    d.release("low")
    assert d.rows_by_class[BEST_EFFORT] == {} and {n: r for n, r in d.rows_by_class.items() if r} == by_class()
    for task in ("second", "third"):
        assert d.decide(request(task, "shop"))[0] is PLACEMENT
    assert d._rows_below(PRODUCTION) == []  # production work on every node: a search has nothing to look at
    assert sorted(d._rows_below(EMERGENCY)) == [0, 1, 2]
    assert d.decide(request("fourth", "shop"))[0] is REJECTION
