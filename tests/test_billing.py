"""Metering rules, double-entry postings, vouchers and settlement, on the real chdb store.

Each test uses task ids, voucher ids and a billing month of its own, so the shared store's other rows
never enter its figures.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from datetime import date
from typing import Any

import pytest

from suanwang.billing.book import Book, Tenant, Voucher, load_book, period_bounds, period_of
from suanwang.billing.ledger import fen, target, transaction
from suanwang.billing.metering import HOUR_MS, meter
from suanwang.billing.run import BillingRun
from suanwang.billing.statements import balanced, statements
from suanwang.clock import now_ms
from suanwang.dispatcher.core import Dispatcher
from suanwang.errors import SuanwangError
from suanwang.settings import Settings
from suanwang.simulator.workload import TaskGenerator, registration
from suanwang.store import DATABASE, Store
from suanwang.topology import load_network, scaled_nodes

NETWORK = load_network()
STORAGE = NETWORK.billing.storage_yuan_per_gb_month
_months = itertools.count(1)
_ids = itertools.count()
DAY = 24 * HOUR_MS


def fresh_month() -> tuple[str, int]:
    """A billing month no other test uses (in 2031-2040), and its first instant in ms."""
    k = next(_months)
    period = f"{2030 + (k - 1) // 12 + 1}-{(k - 1) % 12 + 1:02d}"
    return period, period_bounds(period)[0]


def placed(start: int, tenant: str = "acme", task_id: str | None = None, **ask: Any) -> dict[str, Any]:
    """A real placement by the dispatcher (its quote included) of a generated request, starting at `start`."""
    d = Dispatcher(NETWORK)
    for spec in scaled_nodes(NETWORK, 60):
        d.nodes.register(registration(spec, NETWORK))
    gen = TaskGenerator(NETWORK, random.Random(next(_ids)))
    while True:
        req = {**gen.next(start), "deadline": None, "budget_yuan": None, "allowed_provinces": [], **ask}
        req["tenant"], req["task_id"] = tenant, task_id or f"bill-{next(_ids)}"
        spec, record = d.decide(req, start)
        if "node_id" in record:
            return {**record, "start_at": start}


def ev(task: dict[str, Any], state: str, at: int, event_id: str | None = None) -> dict[str, Any]:
    return {
        "event_id": event_id or f"{task['task_id']}-{state}-{at}",
        "event_time": at,
        "node_id": task["node_id"],
        "state": state,
    }


# ---- metering rules, alone


def test_a_finished_task_is_metered_from_its_quote() -> None:
    _, t0 = fresh_month()
    p = placed(t0 + HOUR_MS)
    events = [ev(p, "STARTED", t0 + HOUR_MS), ev(p, "FINISHED", t0 + 3 * HOUR_MS)]
    m = meter(p["task_id"], p, events, now=t0 + 4 * HOUR_MS, grace_ms=60_000, storage_yuan_per_gb_month=STORAGE)
    assert m.anomalies == [] and m.recheck_at is None
    (u,) = m.usages
    assert u.hours == pytest.approx(2.0) and u.outcome == "FINISHED"
    assert u.cu_hours == pytest.approx(2 * p["cu_per_hour"])
    assert u.charges["compute"] == pytest.approx(2 * p["compute_yuan_per_hour"])
    assert u.charges["energy"] == pytest.approx(2 * p["meter_kw"] * p["yuan_per_kwh"])
    assert u.charges["transfer"] == pytest.approx(p["transfer_cost"])


def test_arrival_order_and_repeated_events_do_not_change_the_usage() -> None:
    _, t0 = fresh_month()
    p = placed(t0)
    events = [ev(p, "STARTED", t0 + 60_000), ev(p, "FINISHED", t0 + 2 * HOUR_MS)]
    base = meter(p["task_id"], p, events, t0 + 3 * HOUR_MS, 0, STORAGE)
    shuffled = meter(p["task_id"], p, [events[1], events[0], events[1], events[0]], t0 + 3 * HOUR_MS, 0, STORAGE)
    assert [u.charges for u in shuffled.usages] == [u.charges for u in base.usages]
    assert [a.rule for a in shuffled.anomalies] == ["duplicate_event"]


@pytest.mark.parametrize(
    ("states", "rule", "hours"),
    [
        ([("FINISHED", 2)], "missing_start", 2.0),  # from the planned start (t0)
        ([("STARTED", 1), ("STARTED", 2), ("FINISHED", 3)], "duplicate_start", 2.0),
        ([("STARTED", 1), ("FINISHED", 3), ("FAILED", 4)], "duplicate_end", 2.0),
        ([("FINISHED", 1), ("STARTED", 2)], "end_before_start", 0.0),
    ],
)
def test_each_broken_lifecycle_has_its_rule(states: list[tuple[str, int]], rule: str, hours: float) -> None:
    _, t0 = fresh_month()
    p = placed(t0)
    events = [ev(p, state, t0 + h * HOUR_MS) for state, h in states]
    m = meter(p["task_id"], p, events, t0 + 10 * HOUR_MS, 0, STORAGE)
    assert rule in [a.rule for a in m.anomalies]
    assert sum(u.hours for u in m.usages) == pytest.approx(hours)


def test_cancelled_before_start_costs_nothing_and_an_unplaced_task_waits() -> None:
    _, t0 = fresh_month()
    p = placed(t0)
    assert meter(p["task_id"], p, [ev(p, "CANCELLED", t0 + 5)], t0 + HOUR_MS, 0, STORAGE).usages == []
    waiting = meter("ghost", None, [ev(p, "FINISHED", t0 + 5)], t0 + HOUR_MS, 0, STORAGE)
    assert waiting.usages == [] and [a.rule for a in waiting.anomalies] == ["no_placement"]


def test_a_late_end_waits_out_the_grace_and_a_running_task_is_billed_per_closed_month() -> None:
    period, t0 = fresh_month()
    p = placed(t0)
    end = t0 + 2 * HOUR_MS
    events = [ev(p, "STARTED", t0), ev(p, "FINISHED", end)]
    early = meter(p["task_id"], p, events, end + 1000, 60_000, STORAGE)
    assert early.usages == [] and early.recheck_at == end + 60_000
    month_end = period_bounds(period)[1]
    running = meter(p["task_id"], p, [ev(p, "STARTED", month_end - 5 * HOUR_MS)], month_end + 2 * HOUR_MS, 0, STORAGE)
    (u,) = running.usages
    assert (u.period, u.outcome, u.hours) == (period, "RUNNING", pytest.approx(5.0))
    assert running.recheck_at == period_bounds(period_of(month_end))[1]
    later = [ev(p, "STARTED", month_end - 5 * HOUR_MS), ev(p, "FINISHED", month_end + 3 * HOUR_MS)]
    split = meter(p["task_id"], p, later, month_end + 4 * HOUR_MS, 0, STORAGE)
    assert [(u.period, round(u.hours, 6)) for u in split.usages] == [(period, 5.0), (period_of(month_end), 3.0)]
    assert [u.transfer_gb > 0 for u in split.usages] == [p["transfer_cost"] > 0, False]  # the data moves once


# ---- postings, alone


def test_fen_rounds_half_away_from_zero_on_the_decimal_written() -> None:
    assert [fen(0.145), fen(0.144999), fen(2.675), fen(-0.005), fen(0.0)] == [15, 14, 268, -1, 0]


def book_with(*vouchers: Voucher, tenant: str = "acme") -> Book:
    return Book(tenants={tenant: Tenant(name=tenant)}, vouchers=list(vouchers))


def voucher(kind: str = "compute", budget: float = 10.0, **extra: Any) -> Voucher:
    base = dict(id=f"v{next(_ids)}", tenant="acme", kind=kind, budget_yuan=budget, valid_from=date(2030, 1, 1)) | dict(
        valid_to=date(2040, 12, 31)
    )
    return Voucher(**{**base, **extra})


def test_postings_balance_and_vouchers_cover_only_what_they_may() -> None:
    _, t0 = fresh_month()
    p = placed(t0, kind="training", input_gb=200.0, origin_hub="yangtze", data_hub="yangtze")
    (u,) = meter(
        p["task_id"], p, [ev(p, "STARTED", t0), ev(p, "FINISHED", t0 + 5 * HOUR_MS)], t0 + 6 * HOUR_MS, 0, STORAGE
    ).usages
    compute_v, network_v = voucher("compute", 1.0), voucher("network", 1000.0, hubs=["nowhere"])
    found: list[Any] = []
    wanted = target(u, book_with(compute_v, network_v), NETWORK.billing.network_operators, {}, {}, found)
    assert sum(wanted.values()) == 0
    for component in ("compute", "energy", "transfer", "storage"):
        assert sum(v for (c, _), v in wanted.items() if c == component) == 0
    assert wanted[("compute", compute_v.account)] == 100  # the whole budget, no more
    assert ("energy", compute_v.account) not in wanted  # used up on compute
    assert not any(a.startswith("voucher:" + network_v.id) for _, a in wanted)  # out of its hubs
    assert "voucher_exhausted" in [a.rule for a in found]
    assert wanted[("compute", "tenant:acme")] == fen(u.charges["compute"]) - 100


def test_expired_vouchers_are_not_drawn_and_unknown_tenants_go_to_suspense() -> None:
    _, t0 = fresh_month()
    p = placed(t0, tenant="stranger")
    (u,) = meter(
        p["task_id"], p, [ev(p, "STARTED", t0), ev(p, "FINISHED", t0 + HOUR_MS)], t0 + 2 * HOUR_MS, 0, STORAGE
    ).usages
    found: list[Any] = []
    wanted = target(u, book_with(), NETWORK.billing.network_operators, {}, {}, found)
    assert {a for _, a in wanted} >= {"suspense:stranger", f"provider:{p['cluster']}"}
    assert [a.rule for a in found] == ["unknown_tenant"]
    u.tenant = "acme"
    old = voucher("compute", 100.0, valid_from=date(2020, 1, 1), valid_to=date(2020, 12, 31))
    found = []
    wanted = target(u, book_with(old), NETWORK.billing.network_operators, {}, {}, found)
    assert not any(a == old.account for _, a in wanted) and "voucher_expired" in [a.rule for a in found]


def test_a_revision_posts_only_the_difference() -> None:
    _, t0 = fresh_month()
    p = placed(t0)
    (u,) = meter(
        p["task_id"], p, [ev(p, "STARTED", t0), ev(p, "FINISHED", t0 + HOUR_MS)], t0 + 2 * HOUR_MS, 0, STORAGE
    ).usages
    book = book_with()
    first = target(u, book, NETWORK.billing.network_operators, {}, {}, [])
    assert transaction(u, first, first, 2, "again") == []
    u.charges = {k: 2 * v for k, v in u.charges.items()}
    second = target(u, book, NETWORK.billing.network_operators, {}, {}, [])
    entries = transaction(u, second, first, 2, "revised")
    assert sum(e.amount_fen for e in entries) == 0 and {e.txn_id for e in entries} == {f"{u.usage_id}#2"}
    assert {(e.component, e.account): e.amount_fen for e in entries} == {k: second[k] - first.get(k, 0) for k in second}


def test_the_shipped_book_loads_and_a_bad_one_is_named(tmp_path) -> None:
    book = load_book()
    assert len(book.tenants) == 40 and {v.kind for v in book.vouchers} == {"compute", "network"}
    bad = tmp_path / "tenants.yaml"
    bad.write_text(
        "tenants: {a: {name: A}}\nvouchers:\n"
        "  - {id: v, tenant: b, kind: compute, budget_yuan: 1, valid_from: 2026-01-01, valid_to: 2026-02-01}\n"
    )
    with pytest.raises(SuanwangError, match=r"tenants.yaml is invalid: .*unknown tenant 'b'"):
        load_book(bad)
    with pytest.raises(SuanwangError, match="cannot read the tenants file"):
        load_book(tmp_path / "missing.yaml")
    with pytest.raises(SuanwangError, match="not a month written YYYY-MM"):
        period_bounds("2026-13")


# ---- the run and settlement, on chdb


def store_history(store: Store, placements: list[dict[str, Any]], events: list[dict[str, Any]]) -> None:
    store.insert_records("placements", placements)
    store.insert_records("task_events", [{**e, "task_id": e["task_id"], "detail": "", "cause": ""} for e in events])


def lifecycle(p: dict[str, Any], start: int, hours: float, state: str = "FINISHED") -> list[dict[str, Any]]:
    return [
        {**ev(p, "STARTED", start), "task_id": p["task_id"]},
        {**ev(p, state, start + int(hours * HOUR_MS)), "task_id": p["task_id"]},
    ]


def test_a_bad_lifecycle_stream_bills_each_task_once_and_the_ledger_balances(store: Store) -> None:
    """Shuffled, duplicated, missing and late events over many tasks, some of unknown tenants, with a
    small voucher: rerunning posts nothing, a late event posts only its difference, statements reconcile."""
    period, t0 = fresh_month()
    rng = random.Random(7)
    tight = voucher("compute", 30.0)
    book = book_with(tight)
    tasks = [placed(t0 + k * 60_000, tenant="acme" if k % 4 else "nobody") for k in range(24)]
    events: list[dict[str, Any]] = []
    for k, p in enumerate(tasks):
        good = lifecycle(p, t0 + k * 60_000 + 1000, rng.uniform(0.5, 6))
        if k % 5 == 1:
            good = good[1:]  # finish without start
        if k % 5 == 2:
            good = good + good  # every event twice (a producer's retry)
        if k % 5 == 3:
            good = good + [{**good[1], "event_id": good[1]["event_id"] + "x", "state": "FAILED"}]  # a second end
        events += good
    rng.shuffle(events)
    late_task = tasks[0]
    late_start = next(e for e in events if e["task_id"] == late_task["task_id"] and e["state"] == "STARTED")
    events.remove(late_start)  # arrives after the first bill
    store_history(store, tasks, events)
    run = BillingRun(store, NETWORK, book, grace_s=0)
    ids = [p["task_id"] for p in tasks]
    now = t0 + 10 * 24 * HOUR_MS
    first = run.bill(ids, now)
    assert first.anomalies["missing_start"] >= 5 and first.anomalies["unknown_tenant"] == 6
    assert first.anomalies["duplicate_event"] >= 4 and first.anomalies["duplicate_end"] >= 5
    assert run.bill(ids, now).entries == 0  # nothing twice
    store_history(store, [], [{**late_start, "event_time": late_start["event_time"] - 2 * HOUR_MS}])
    revised = run.bill(ids, now + 1)
    assert revised.transactions == 1  # the late start lengthens one usage record: one revision

    report = statements(store, book, period)
    assert balanced(report), report["checks"]
    _, rows = store.query(
        f"SELECT usage_id, sum(amount_fen), countIf(amount_fen > 0) FROM {DATABASE}.ledger "
        "WHERE period = {p:String} GROUP BY usage_id",
        {"p": period},
    )
    assert len(rows) == 24 and all(r[1] == 0 for r in rows)
    drawn = next(v for v in report["vouchers"] if v["voucher"] == tight.id)["drawn_fen"]
    assert drawn == tight.budget_fen  # the voucher is used up exactly, never beyond
    assert [t["account"] for t in report["tenants"]] == ["suspense:nobody", "tenant:acme"]
    acme = report["tenants"][1]
    assert acme["payable_fen"] == acme["charges_fen"] - tight.budget_fen == acme["ledger_fen"]
    providers = sum(s["earned_fen"] for s in report["providers"]) + sum(
        s["earned_fen"] for s in report["network_operators"]
    )
    assert providers == sum(t["charges_fen"] for t in report["tenants"])


def test_a_crash_between_ledger_and_usage_rows_is_made_good_by_the_next_run(store: Store) -> None:
    period, t0 = fresh_month()
    p = placed(t0)
    store_history(store, [p], lifecycle(p, t0, 3.0))
    run = BillingRun(store, NETWORK, book_with(), grace_s=0)
    original = store.insert_records

    def fail_on_usage(table: str, records: list[dict[str, Any]], sources: Any = None) -> int:
        if table == "usage":
            raise SuanwangError("insert into usage failed: simulated crash")
        return original(table, records, sources)

    store.insert_records = fail_on_usage  # type: ignore[method-assign]
    try:
        with pytest.raises(SuanwangError):
            run.bill([p["task_id"]], t0 + 5 * HOUR_MS)
    finally:
        del store.insert_records
    again = run.bill([p["task_id"]], t0 + 5 * HOUR_MS)
    assert again.entries == 0 and again.usages == 1
    assert balanced(statements(store, book_with(), period))


def test_the_run_finds_changed_tasks_by_itself(store: Store) -> None:
    """`cycle` picks up what was stored since the last run; a task whose end is in its grace is billed later."""
    period, t0 = fresh_month()
    run = BillingRun(store, NETWORK, book_with(), grace_s=60)
    now = t0 + 20 * HOUR_MS
    run.read_upto = now_ms() - 1000  # as if the run had been going: only rows stored from now on
    p = placed(t0)
    store_history(store, [p], lifecycle(p, now - 2 * HOUR_MS, 2 - 10 / 3600))  # ended 10 s before `now`
    run.cycle(now)
    assert p["task_id"] in run.recheck and posted_for(store, p["task_id"]) == []
    run.cycle(now + 61_000)
    assert p["task_id"] not in run.recheck
    assert run.cycle(now + 62_000).tasks == 0  # nothing new: the rows read again in the overlap are not re-billed
    postings = posted_for(store, p["task_id"])
    assert postings and sum(amount for _, amount in postings) == 0


def posted_for(store: Store, task_id: str) -> list[tuple[str, int]]:
    _, rows = store.query(
        f"SELECT account, amount_fen FROM {DATABASE}.ledger WHERE task_id = {{t:String}}", {"t": task_id}
    )
    return [(a, int(x)) for a, x in rows]


# ---- the API


def test_statements_and_prices_through_the_api_keep_to_each_callers_view(store: Store, settings: Settings) -> None:
    from tests.test_access import ask, tokens_yaml

    secured = Settings(**(settings.model_dump() | {"api_tokens": tokens_yaml()}))
    period, t0 = fresh_month()
    mine = [placed(t0, tenant="tenant-07", origin_hub=hub) for hub in ("gansu", "gba", "yangtze")]
    theirs = placed(t0, tenant="tenant-08")
    store_history(store, [*mine, theirs], [e for p in (*mine, theirs) for e in lifecycle(p, t0, 1.5)])
    BillingRun(store, NETWORK, load_book(), grace_s=0).bill([p["task_id"] for p in (*mine, theirs)], t0 + DAY)

    status, everything = ask(store, secured, "nation", "GET", f"/api/statements?period={period}")
    assert status == 200 and everything["balanced"] is True
    assert [t["account"] for t in everything["tenants"]] == ["tenant:tenant-07", "tenant:tenant-08"]
    status, own = ask(store, secured, "tenant-07", "GET", f"/api/statements?period={period}")
    assert status == 200 and [t["account"] for t in own["tenants"]] == ["tenant:tenant-07"]
    assert own["providers"] == [] and {v["tenant"] for v in own["vouchers"]} == {"tenant-07"}
    status, gansu = ask(store, secured, "gansu-desk", "GET", f"/api/statements?period={period}")
    assert status == 200 and gansu["tenants"] == []
    assert {p["account"] for p in gansu["providers"]} <= {"provider:qingyang"}
    status, body = ask(store, secured, "nation", "GET", "/api/statements?period=2026-13")
    assert status == 422 and "YYYY-MM" in body["error"]

    store.insert_records(
        "market_prices",
        [
            {
                "event_id": f"price-{hub}-{period}",
                "event_time": 1_000_000_000_000,  # long ago: never the price in force for another test
                "price_key": f"{hub}/GPU",
                "hub": hub,
                "compute_class": "GPU",
                "price_index": 1.25,
                "yuan_per_cu_hour": 0.7,
                "utilisation": 0.9,
                "pressure": 0.1,
                "nodes": 4,
                "scope": "national",
            }
            for hub in ("gansu", "gba")
        ],
    )
    status, prices = ask(store, secured, "gansu-desk", "GET", "/api/prices")
    assert status == 200 and {p["hub"] for p in prices} == {"gansu"}
    assert ask(store, secured, None, "GET", "/api/prices")[0] == 401


# ---- through Kafka and the worker


def test_the_worker_bills_a_broken_lifecycle_stream_once_and_balanced(settings: Settings, store: Store) -> None:
    """Placements and a shuffled, duplicated, incomplete lifecycle stream (plus garbage) go through Kafka;
    the worker stores them, dead-letters the garbage, and its billing run posts each task once; a second
    worker run (a restart: it meters everything again) posts nothing more."""
    import asyncio

    from suanwang.bus import EventProducer, ensure_topics
    from suanwang.schemas.topics import PLACEMENT, TASK_LIFECYCLE, Topics
    from suanwang.streams.app import create_app
    from tests.evidence import wait_for
    from tests.fleet import send_raw

    fast = settings.model_copy(update={"billing_interval_s": 0.5, "billing_grace_s": 0.0})
    now = now_ms()
    tasks = [placed(now - 3 * HOUR_MS, tenant="tenant-03" if k % 3 else "walk-in") for k in range(9)]
    events = []
    for k, p in enumerate(tasks):
        started, ended = lifecycle(p, now - 3 * HOUR_MS + k * 1000, 1.0 + k / 10)
        events += [ended] if k % 3 == 1 else [ended, started, started] if k % 3 == 2 else [started, ended]
    ids = [p["task_id"] for p in tasks]

    async def scenario() -> tuple[bool, int]:
        await ensure_topics(fast)
        producer = EventProducer(fast)
        await producer.start()
        try:
            for p in tasks:
                await producer.send(PLACEMENT, p)
            for e in events:
                await producer.send(TASK_LIFECYCLE, {**e, "detail": ""})
            await producer.flush()
        finally:
            await producer.stop()
        await send_raw(fast, Topics(fast.topic_prefix).name(TASK_LIFECYCLE), [b"\x00garbage"], "bad")
        for _ in range(2):  # the second run starts afresh, as after a restart
            app, ctx = create_app(fast, store)
            await app.start()
            try:
                billed = await wait_for(lambda: len(billed_tasks(store, ids)) == len(ids), 90)
                more = ctx.counts["billing_runs"] + 3  # runs that find everything posted already

                def ran(counts: Counter[str] = ctx.counts, more: int = more) -> bool:
                    return counts["billing_runs"] >= more

                assert await wait_for(ran, 30), ctx.counts
            finally:
                await app.stop()
            if not billed:
                return False, 0
        return True, len(posted_entries(store, ids))

    billed, entries = asyncio.run(scenario())
    assert billed, billed_tasks(store, ids)
    _, rows = store.query(
        f"SELECT txn_id, sum(amount_fen) FROM {DATABASE}.ledger WHERE task_id IN {{ids:Array(String)}} GROUP BY txn_id",
        {"ids": ids},
    )
    assert len(rows) == len(ids) and all(total == 0 for _, total in rows)  # one balanced transaction per task
    assert entries == len(posted_entries(store, ids))
    suspense = [a for a, _ in posted_entries(store, ids) if a.startswith("suspense:")]
    assert set(suspense) == {"suspense:walk-in"}
    _, dead = store.query(
        f"SELECT count() FROM {DATABASE}.dead_letters FINAL WHERE source_topic = {{t:String}}",
        {"t": Topics(fast.topic_prefix).name(TASK_LIFECYCLE)},
    )
    assert dead[0][0] == 1


def billed_tasks(store: Store, ids: list[str]) -> set[str]:
    _, rows = store.query(
        f"SELECT DISTINCT task_id FROM {DATABASE}.usage WHERE task_id IN {{ids:Array(String)}}", {"ids": ids}
    )
    return {r[0] for r in rows}


def posted_entries(store: Store, ids: list[str]) -> list[tuple[str, int]]:
    _, rows = store.query(
        f"SELECT account, amount_fen FROM {DATABASE}.ledger WHERE task_id IN {{ids:Array(String)}}", {"ids": ids}
    )
    return [(a, int(x)) for a, x in rows]
