"""The dispatcher as a Kafka service: requests in, placements and rejections out."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import Counter, Gauge, Histogram

from suanwang.billing.book import load_book
from suanwang.bus import EventProducer, consumer_kwargs, ensure_topics, event, follow, read_to_end
from suanwang.clock import epoch_ms, now_ms
from suanwang.dispatcher import batch
from suanwang.dispatcher.core import ESCALATED, NO_FEASIBLE_NODE, NODE_FAULT, UNKNOWN_ARCH, Dispatcher, warm_up
from suanwang.dispatcher.market import PriceSetter
from suanwang.dispatcher.priority import Priorities, TenantClass
from suanwang.dispatcher.tiers import Tiers, dispatcher_group, parse_scope, tier_request_topics
from suanwang.metrics import ServiceMetrics
from suanwang.process import announce_ready, consume
from suanwang.schemas.topics import (
    ALERT,
    GRID_SIGNAL,
    MARKET_PRICE,
    PLACEMENT,
    REGISTRY,
    REJECTION,
    TASK_LIFECYCLE,
    TASK_REQUEST,
    Topics,
    TopicSpec,
)
from suanwang.schemas.values import COLLECTOR_SILENT, NODE_OFFLINE, STARTED, TASK_ENDS
from suanwang.settings import Settings
from suanwang.topology import load_network

STATE_TOPICS = (REGISTRY, GRID_SIGNAL, MARKET_PRICE)  # read whole at start, then followed
NODE_DEPENDENT = {ESCALATED, NO_FEASIBLE_NODE, UNKNOWN_ARCH}  # rejections a registration not yet read could undo
CATCH_UP_S = 5.0  # the longest a rejection waits for the registry to be read to its end
DECISION_BUCKETS_S = (50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 0.1, 0.5, 2.5)
TIMERS_EVERY_S = 1.0  # lapsed placements, fail-overs and retries whose back-off ended are looked at this often


class DispatchMetrics:
    """What the dispatcher's operators watch: decision time by path, decisions by outcome, what it holds and
    what waits, and its group's lag (`suanwang.metrics`)."""

    def __init__(self, service: DispatcherService) -> None:
        self.service = ServiceMetrics("dispatcher")
        registry, scope = self.service.registry, str(service.scope)
        self.decision_seconds = Histogram(
            "suanwang_dispatch_decision_seconds",
            "Time to decide a placement, by the path that decided it (a batched one: its share of the window).",
            ["scope", "path"],
            buckets=DECISION_BUCKETS_S,
            registry=registry,
        )
        self.decisions = Counter(
            "suanwang_dispatch_decisions_total",
            "Decisions sent, by outcome: placed, or the rejection's reason code.",
            ["scope", "outcome"],
            registry=registry,
        )
        Gauge("suanwang_dispatch_reservations", "Placements holding capacity.", ["scope"], registry=registry).labels(
            scope
        ).set_function(lambda: len(service.core.reservations))
        Gauge(
            "suanwang_dispatch_waiting_requests",
            "Requests read and not yet decided: gathered in a batch window, or backing off before a retry.",
            ["scope"],
            registry=registry,
        ).labels(scope).set_function(lambda: len(service._window) + len(service._waiting))
        self.scope = scope

    def decided(self, out_spec: TopicSpec, out: dict[str, Any]) -> None:
        if out_spec is PLACEMENT:
            self.decisions.labels(self.scope, "placed").inc()
            self.decision_seconds.labels(self.scope, out["decided_by"]).observe(out["decision_us"] / 1e6)
        else:
            self.decisions.labels(self.scope, out["reason_code"]).inc()


class DispatcherService:
    """Keeps the node table current from the registry, grid and health; decides each request once."""

    def __init__(self, settings: Settings) -> None:
        network = load_network()
        self.settings = settings
        self.topics = Topics(settings.topic_prefix)
        self.scope = parse_scope(settings.dispatcher_scope, network)
        self.tiers = Tiers(settings.dispatch_tiers, network)
        self.tiers.check_runs(self.scope)
        book = load_book(settings.tenants_file)
        self.core = Dispatcher(
            network,
            scope=str(self.scope),
            carbon_price=settings.carbon_price_yuan_per_kg,
            hold_price=settings.dispatch_hold_yuan_per_kwh,
            start_timeout_s=settings.dispatch_start_timeout_s,
            remembered_decisions=settings.dispatch_remembered_decisions,
            priorities=Priorities({name: TenantClass(t.priority, t.emergency) for name, t in book.tenants.items()}),
            max_attempts=settings.dispatch_max_attempts,
            retry_backoff_s=settings.dispatch_retry_backoff_s,
        )
        self.producer = EventProducer(settings)
        # the national dispatcher sets the market's prices; every tier applies them from `market.price`
        self.prices = PriceSetter(network.market, self.core.nodes) if self.scope.kind == "national" else None
        self.ready = asyncio.Event()  # set once the state topics are read to their end and decisions rebuilt
        self.state: AIOKafkaConsumer  # registry, grid and prices, no group: made in `run`, on its loop
        # asks the registry's end offsets and fetches nothing: on `state`'s connection the question waited
        # behind its fetch, the whole fetch wait, holding every request behind a rejection (p99 72 ms in `up`)
        self.ends: AIOKafkaConsumer
        self._applied: dict[TopicPartition, int] = {}  # the next offset of each state partition not yet applied
        self._state_moved = asyncio.Event()
        self._waiting: list[tuple[int, str, dict[str, Any]]] = []  # (not before ms, task id, request): back-offs
        self._window: dict[str, dict[str, Any]] = {}  # task id -> request: work gathered to be placed together
        self._window_due: float | None = None  # loop time at which the gathered window is solved
        self._window_opened = asyncio.Event()
        self.batches = 0  # windows solved, and the tasks they held
        self.batched_tasks = 0
        self.metrics = DispatchMetrics(self)

    async def _rebuild(self) -> None:
        """Restores earlier decisions and the capacity still held, from the dispatch and lifecycle topics.

        Decisions are read whole before any release, so a task that finished keeps nothing whatever the
        order in which the two topics are read."""
        ended: set[str] = set()
        started: dict[str, int] = {}  # task id -> when it started
        decided: list[tuple[TopicSpec, dict[str, Any]]] = []
        requests: dict[str, dict[str, Any]] = {}

        async def collect(topic: str, msg: Any) -> None:
            spec = self.topics.spec(topic)
            try:
                record = self.producer.codec.decode_as(spec.schema, msg.value)
            except ValueError:
                return  # reported when it was first consumed
            if spec is TASK_LIFECYCLE:
                if record["state"] in TASK_ENDS:
                    ended.add(record["task_id"])
                elif record["state"] == STARTED:
                    started.setdefault(record["task_id"], epoch_ms(record["event_time"]))
            elif spec is TASK_REQUEST:
                requests[record["task_id"]] = record
            elif record["scope"] == str(self.scope):
                decided.append((spec, record))

        history = AIOKafkaConsumer(**consumer_kwargs(self.settings, None))
        await history.start()
        try:
            names = [self.topics.name(s) for s in (PLACEMENT, REJECTION, TASK_LIFECYCLE)]
            await read_to_end(history, [*names, self._request_topic], collect)
        finally:
            await history.stop()
        for spec, record in decided:
            task_id = record["task_id"]
            holds = task_id not in ended
            request = requests.pop(task_id, None)  # what is left in `requests` is undecided
            self.core.restore(spec, record, holds, started.get(task_id), request if holds else None)
        # requests read but never decided (gathered in a window, or backing off, when the process ended): their
        # offsets may be committed already, so they are decided now rather than lost
        for task_id, record in requests.items():
            heapq.heappush(self._waiting, (epoch_ms(record["not_before"]) or 0, task_id, record))

    @property
    def _request_topic(self) -> str:
        return self.topics.requests(self.scope.topic_suffix)

    async def _apply_state(self, topic: str, msg: Any) -> None:
        await self._on_state(topic, msg)
        self._applied[TopicPartition(topic, msg.partition)] = msg.offset + 1
        self._state_moved.set()

    async def _catch_up(self) -> bool:
        """Waits until the registry is applied up to its current end; whether any record was applied.

        Requests and registrations come on different consumers, so a request sent just after its nodes'
        registrations can arrive first: a rejection that names the nodes is only final once the table is current.
        Only the registry can make a node fit; waiting for grid signals and prices too would hold every request
        behind this one for a fetch of theirs."""
        applied_before = sum(self._applied.values())
        registry = self.topics.name(REGISTRY)
        ends = await self.ends.end_offsets([tp for tp in self.state.assignment() if tp.topic == registry])
        deadline = asyncio.get_running_loop().time() + CATCH_UP_S
        while any(self._applied.get(tp, 0) < end for tp, end in ends.items()):
            self._state_moved.clear()
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._state_moved.wait(), left)
        return sum(self._applied.values()) != applied_before

    async def _on_state(self, topic: str, msg: Any) -> None:
        try:
            schema, record = self.producer.codec.decode(msg.value)
        except ValueError:
            return  # the worker's sink reports it, once; these topics are read again from the start at each restart
        if schema == "NodeRegistration" and self.tiers.owner(record) == self.scope:
            self.core.register(record)  # only this tier's nodes: no other dispatcher may promise them
        elif schema == "GridSignal":
            self.core.grid_signal(record)
        elif schema == "MarketPrice":
            self.core.nodes.set_price(record["hub"], record["compute_class"], record["price_index"])

    async def _on_event(self, topic: str, record: dict[str, Any]) -> None:
        spec = self.topics.spec(topic)
        if spec is TASK_REQUEST:
            not_before = epoch_ms(record.get("not_before"))
            if not_before is not None and not_before > now_ms() and not self.core.has_decided(record["task_id"]):
                heapq.heappush(self._waiting, (not_before, record["task_id"], record))  # a re-dispatch backing off
            elif not self.core.has_decided(record["task_id"]) and (window := self._window_for(record)) > 0:
                self._gather(record, window)
            else:
                await self._decide(record)
        elif spec is TASK_LIFECYCLE and record["state"] == "FAILED" and record.get("cause") == NODE_FAULT:
            detail = record["detail"] or f"node {record['node_id']} failed"
            await self._send_all(self.core.evict(record["task_id"], NODE_FAULT, detail, now_ms(), report=False))
        elif spec is TASK_LIFECYCLE and record["state"] in TASK_ENDS:
            self.core.release(record["task_id"])
        elif spec is TASK_LIFECYCLE and record["state"] == STARTED:
            self.core.started(record["task_id"], epoch_ms(record["event_time"]))
        elif spec is ALERT and record["kind"] == NODE_OFFLINE:
            self.core.set_health(record["scope_key"], healthy=record["resolved"], now=now_ms())
        elif spec is ALERT and record["kind"] == COLLECTOR_SILENT:
            self.core.set_collector(record["scope_key"], reporting=record["resolved"])

    def _window_for(self, record: dict[str, Any]) -> float:
        """Seconds this request may wait to be placed with others (0: decided at once): work with no latency
        tier, by its kind's window, unless its deadline leaves no time to wait."""
        if not batch.deferrable(record):
            return 0.0
        window = self.settings.batch_windows.get(record["kind"], self.settings.dispatch_batch_window_s)
        deadline, duration_s = epoch_ms(record["deadline"]), record["duration_s"] or 0.0
        if deadline is not None and deadline - now_ms() < (window + duration_s) * 1000:
            return 0.0
        return window

    def _gather(self, record: dict[str, Any], window: float) -> None:
        due = asyncio.get_running_loop().time() + window
        self._window.setdefault(record["task_id"], record)  # a redelivered one is there already
        self._window_due = due if self._window_due is None else min(self._window_due, due)
        self._window_opened.set()

    async def _windows(self, stop: asyncio.Event) -> None:
        """Places each window of gathered work together once it is due: the solve runs on a thread, so urgent
        work goes on being decided meanwhile, and both reserve through the one table when binding."""
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            if self._window_due is None or loop.time() < self._window_due:
                left = TIMERS_EVERY_S if self._window_due is None else self._window_due - loop.time()
                self._window_opened.clear()  # set again by a request that opens or shortens the window
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._window_opened.wait(), min(left, TIMERS_EVERY_S))
                continue
            gathered, self._window, self._window_due = list(self._window.values()), {}, None
            plan = self.core.prepare_batch(gathered, now_ms())
            solution = await asyncio.to_thread(batch.solve, plan.problem, self.settings.dispatch_batch_time_limit_s)
            self.batches += 1
            self.batched_tasks += len(gathered)
            for record, (out_spec, out) in self.core.bind_batch(plan, solution):
                await self._publish(record, out_spec, out)
        for record in self._window.values():  # a stop: what was gathered is decided now, not lost
            await self._decide(record)

    async def _decide(self, record: dict[str, Any]) -> None:
        """Decides a request once and sends the decision, then what it caused (preempted tasks and their
        re-dispatches), and passes on to the national dispatcher what this tier could not place."""
        if self.core.has_decided(record["task_id"]):
            return  # redelivered: its decision is on the dispatch topic already (sent, or read back at start)
        await self._publish(record, *self.core.decide(record))

    async def _publish(self, record: dict[str, Any], out_spec: TopicSpec, out: dict[str, Any]) -> None:
        """Sends a decision (decided again first if it is a rejection the state topics' tail could undo) and
        what it caused."""
        if out_spec is REJECTION and out["reason_code"] in NODE_DEPENDENT and await self._catch_up():
            self.core.forget(record["task_id"])
            out_spec, out = self.core.decide(record)
        await self.producer.send(out_spec, out)
        self.metrics.decided(out_spec, out)
        await self._send_all(self.core.take_outbox())
        if self.prices is not None:
            self.prices.observe(record, out)
        if out_spec is REJECTION and out["reason_code"] == ESCALATED:
            escalated = {**record, "escalated_from": str(self.scope), "escalation_reason": out["reason"]}
            await self.producer.send(TASK_REQUEST, escalated)  # the national request topic

    async def _send_all(self, events: list[tuple[TopicSpec, dict[str, Any]]]) -> None:
        """Sends lifecycle events, rejections and re-dispatches; a re-dispatch goes to this tier's own requests."""
        for spec, record in events:
            await self.producer.send(spec, record, topic=self._request_topic if spec is TASK_REQUEST else None)

    async def run(self, stop: asyncio.Event) -> None:
        warm_up(load_network())
        await ensure_topics(self.settings, tier_request_topics(self.settings))
        await self.producer.start()
        self.state = state = AIOKafkaConsumer(**consumer_kwargs(self.settings, None))
        self.ends = AIOKafkaConsumer(**consumer_kwargs(self.settings, None))
        group = dispatcher_group(self.scope)
        names = [self._request_topic, *(self.topics.name(s) for s in (TASK_LIFECYCLE, ALERT))]
        events = AIOKafkaConsumer(
            *names, **consumer_kwargs(self.settings, group, auto_commit=False, dispatch_path=True)
        )
        self.metrics.service.serve(self.settings.metrics_port)
        lag = self.metrics.service.keep_lag(self.settings, group, names, stop)
        try:
            await state.start()
            await self.ends.start()
            await read_to_end(state, [self.topics.name(s) for s in STATE_TOPICS], self._apply_state)
            await self._rebuild()
            await events.start()
            self.ready.set()
            announce_ready("dispatcher")
            await asyncio.gather(
                follow(state, self._apply_state, stop),
                self._timers(stop),
                self._windows(stop),
                self._set_prices(stop),
                consume(events, self.topics, self.producer, "dispatcher", self._on_event, stop),
            )
        finally:
            lag.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await lag
            await events.stop()
            await self.ends.stop()
            await state.stop()
            await self.producer.stop()

    async def _timers(self, stop: asyncio.Event) -> None:
        """Once a second: frees placements whose task never started, moves the tasks of nodes offline past
        the grace period, and decides re-dispatches whose back-off has ended."""
        grace_ms = int(self.settings.dispatch_failover_grace_s * 1000)
        while not stop.is_set():
            now = now_ms()
            for task_id, node_id in self.core.lapse(now):
                detail = f"not started within {self.settings.dispatch_start_timeout_s:g} s of its start time"
                await self.producer.send(
                    TASK_LIFECYCLE, event(task_id=task_id, node_id=node_id, state="CANCELLED", detail=detail)
                )
            self.core.fail_over(now, grace_ms)
            await self._send_all(self.core.take_outbox())
            while self._waiting and self._waiting[0][0] <= now:
                await self._decide(heapq.heappop(self._waiting)[2])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), TIMERS_EVERY_S)

    async def _set_prices(self, stop: asyncio.Event) -> None:
        """Every market interval, the national dispatcher publishes each hub and class's new price."""
        while self.prices is not None and not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.market_interval_s)
            if not stop.is_set():
                for price in self.prices.step():
                    await self.producer.send(MARKET_PRICE, price)
