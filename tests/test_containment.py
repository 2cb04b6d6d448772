"""No record can crash a service: billing records what it cannot bill, and what escapes an agent's step or a
timer costs the worker one record (dead-lettered with the reason), never the app."""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from suanwang.billing.run import BillingRun
from suanwang.bus import EventProducer, ensure_topics
from suanwang.clock import now_ms
from suanwang.schemas.topics import DEADLETTER
from suanwang.settings import Settings
from suanwang.store import DATABASE, Store
from suanwang.streams.app import create_app
from suanwang.streams.containment import Containment
from tests.evidence import wait_for
from tests.test_billing import HOUR_MS, NETWORK, book_with, fresh_month, lifecycle, placed, store_history


def exceptions_of(store: Store, task_ids: list[str]) -> dict[str, list[tuple[str, str]]]:
    _, rows = store.query(
        f"SELECT task_id, rule, detail FROM {DATABASE}.billing_exceptions FINAL WHERE task_id IN {{ids:Array(String)}}",
        {"ids": task_ids},
    )
    found: dict[str, list[tuple[str, str]]] = {}
    for task_id, rule, detail in rows:
        found.setdefault(task_id, []).append((rule, detail))
    return found


def balanced_per_transaction(store: Store, task_ids: list[str]) -> bool:
    _, rows = store.query(
        f"SELECT txn_id, sum(amount_fen) FROM {DATABASE}.ledger WHERE task_id IN {{ids:Array(String)}} GROUP BY txn_id",
        {"ids": task_ids},
    )
    return all(total == 0 for _, total in rows)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"origin_hub": "s"}, "origin_hub='s'"),  # the row that crashed the worker
        ({"compute_yuan_per_hour": 1e300}, "beyond the ledger's range"),  # once failed the whole batch's insert
    ],
)
def test_a_task_billing_cannot_price_is_recorded_and_the_others_are_billed(
    store: Store, change: dict[str, Any], why: str
) -> None:
    _, t0 = fresh_month()
    good, bad = placed(t0), {**placed(t0), **change}
    store_history(store, [good, bad], lifecycle(good, t0, 2.0) + lifecycle(bad, t0, 2.0))
    report = BillingRun(store, NETWORK, book_with(), grace_s=0).bill(
        [bad["task_id"], good["task_id"]], t0 + 9 * HOUR_MS
    )
    assert report.anomalies["unbillable"] == 1 and report.transactions == 1
    (rule, detail), *_ = exceptions_of(store, [bad["task_id"]])[bad["task_id"]]
    assert rule == "unbillable" and why in detail
    assert exceptions_of(store, [good["task_id"]]) == {} and balanced_per_transaction(store, [good["task_id"]])


FIELDS = {
    "origin_hub": st.sampled_from(["s", "", "京津冀", "gansu"]) | st.text(max_size=5),
    "cluster": st.text(max_size=8),
    "tenant": st.sampled_from(["acme", "nobody", ""]),
    "compute_yuan_per_hour": st.floats(allow_nan=True, allow_infinity=True),
    "meter_kw": st.floats(min_value=-1e6, max_value=1e9),
    "transfer_cost": st.floats(allow_nan=True, allow_infinity=True),
    "cu_per_hour": st.floats(min_value=-10, max_value=1e12),
    "start_at": st.integers(min_value=0, max_value=4_000_000_000_000),
}
STATES = st.sampled_from(["STARTED", "FINISHED", "FAILED", "CANCELLED", "PREEMPTED", "PENDING"])


@hypothesis_settings(max_examples=20, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(
    changes=st.lists(st.fixed_dictionaries({}, optional=FIELDS), min_size=1, max_size=4),
    lives=st.lists(st.lists(st.tuples(STATES, st.integers(-10 * HOUR_MS, 2000 * HOUR_MS)), max_size=4), max_size=4),
)
def test_fuzzed_rows_through_billing_never_stop_it(
    store: Store, changes: list[dict[str, Any]], lives: list[list[tuple[str, int]]]
) -> None:
    """Whatever the rows hold, a run ends, every posting balances, and each task it could not bill says why."""
    _, t0 = fresh_month()
    tasks = [{**placed(t0), **{k: v for k, v in change.items() if not (isinstance(v, float) and math.isnan(v))}}
             for change in changes]  # fmt: skip
    events = [
        {"event_id": f"{p['task_id']}-{k}", "event_time": max(0, t0 + at), "node_id": p["node_id"], "state": state,
         "task_id": p["task_id"]}
        for p, life in zip(tasks, lives, strict=False) for k, (state, at) in enumerate(life)
    ]  # fmt: skip
    store_history(store, tasks, events)
    ids = [p["task_id"] for p in tasks]
    run = BillingRun(store, NETWORK, book_with(), grace_s=0)
    report = run.bill(ids, t0 + 3000 * HOUR_MS)
    assert report.tasks == len(ids) and balanced_per_transaction(store, ids)
    unknown = [p["task_id"] for p in tasks if p["origin_hub"] not in NETWORK.billing.network_operators]
    recorded = exceptions_of(store, ids)
    billed = {
        r[0]
        for r in store.query(
            f"SELECT DISTINCT task_id FROM {DATABASE}.usage WHERE task_id IN {{i:Array(String)}}", {"i": ids}
        )[1]
    }  # noqa: E501
    for task_id in unknown:  # metered (it ran) means posted or refused with the reason, never half
        assert task_id not in billed or task_id in recorded


class FakeContext:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.sent: list[tuple[Any, dict[str, Any]]] = []

    async def send(self, spec: Any, record: dict[str, Any]) -> None:
        self.sent.append((spec, record))


class Msg:
    def __init__(self, offset: int) -> None:
        self.topic, self.partition, self.offset, self.key, self.value = "t", 0, offset, None, b"x"


class Ev:
    def __init__(self, offset: int) -> None:
        self.message = Msg(offset)


def test_containment_dead_letters_only_the_record_at_fault_and_keeps_timers_ticking() -> None:
    ctx = FakeContext()
    contain = Containment(ctx)  # type: ignore[arg-type]
    done: list[int] = []
    acked: list[int] = []

    async def step(events: list[Ev]) -> None:
        if any(e.message.offset == 3 for e in events):
            raise KeyError("s")
        done.extend(e.message.offset for e in events)

    async def ack(ev: Ev) -> None:
        acked.append(ev.message.offset)

    ticks = 0

    @contain.timer("billing")
    async def failing_timer() -> None:
        nonlocal ticks
        ticks += 1
        raise KeyError("s")

    async def run() -> None:
        await contain.batch("telemetry_intake", [Ev(k) for k in range(6)], step, ack=ack)
        await failing_timer()
        await failing_timer()

    asyncio.run(run())
    assert done == [0, 1, 2, 4, 5] and acked == [3] and ticks == 2
    ((spec, letter),) = ctx.sent
    assert spec is DEADLETTER and letter["offset"] == 3 and "KeyError('s')" in letter["error"]
    assert ctx.counts["failures:telemetry_intake"] == 2 and ctx.counts["failures:billing"] == 2


def test_the_worker_bills_past_a_row_it_cannot_bill(settings: Settings, store: Store) -> None:
    """The fresh-clone failure: the billing timer met a usage of hub 's' and Faust stopped the whole worker."""
    t0 = now_ms() - 3 * HOUR_MS  # the worker's first run reads the tasks with events since last month began
    bad = {**placed(t0), "origin_hub": "s"}
    store_history(store, [bad], lifecycle(bad, t0, 1.0))

    async def run() -> tuple[bool, Any]:
        await ensure_topics(settings)
        producer = EventProducer(settings)
        await producer.start()
        await producer.stop()
        app, ctx = create_app(settings.model_copy(update={"billing_interval_s": 0.5}), store)
        await app.start()
        try:
            seen = await wait_for(lambda: bad["task_id"] in exceptions_of(store, [bad["task_id"]]), 120)
            runs = ctx.counts["billing_runs"]
            more = await wait_for(lambda: ctx.counts["billing_runs"] > runs, 60)  # still ticking afterwards
            return seen and more and not app.should_stop, ctx.counts
        finally:
            await app.stop()

    ok, counts = asyncio.run(run())
    assert ok, counts
