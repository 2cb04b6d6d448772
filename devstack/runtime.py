"""`suanwang up`: the embedded broker plus each service as a supervised child process, and a live panel."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer, TopicPartition
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from suanwang.billing.run import BILLING_TABLES
from suanwang.bus import Lag, consumer_kwargs, ensure_topics, make_codec
from suanwang.devstack.broker import EmbeddedBroker
from suanwang.dispatcher.tiers import dispatcher_group, parse_scope, tier_request_topics
from suanwang.errors import SuanwangError
from suanwang.lifeline import RunFile, die_with_parent
from suanwang.process import READY_MARK, check_port_free, stop_on_signals
from suanwang.schemas.frames import frame_problem, samples_of
from suanwang.schemas.topics import (
    ALERT,
    GRID_SIGNAL,
    MARKET_PRICE,
    NETWORK_PROBE,
    PLACEMENT,
    REJECTION,
    ROLLUP,
    TASK_REQUEST,
    TELEMETRY,
    TELEMETRY_FRAME,
    Topics,
    TopicSpec,
)
from suanwang.schemas.values import BATCH
from suanwang.settings import Settings
from suanwang.store import DATABASE, Store, describe_url
from suanwang.topology import load_network

READY_TIMEOUT_S = 180.0
DECIDE_BOUND_S = 60.0  # the longest a stop waits for the dispatcher to decide the requests it was sent
# the monitor's fetch wait for the topics it only counts: on the embedded broker a fetch that returns data
# costs 0.47 µs for every batch its partition holds, and the requests, rejections and alerts hold most of them
COUNT_FETCH_WAIT_MS = 1500
COUNTED = {
    TELEMETRY: "telemetry_events",
    TASK_REQUEST: "task_requests",
    PLACEMENT: "placements",
    REJECTION: "rejections",
    ALERT: "alerts",
}
HISTORY_TABLES = (
    *(
        spec.table
        for spec in (TELEMETRY, PLACEMENT, REJECTION, ALERT, ROLLUP, GRID_SIGNAL, NETWORK_PROBE, MARKET_PRICE)
    ),
    *BILLING_TABLES,
)


class Child:
    """One service process; its output goes to a log file and is watched for the ready line."""

    def __init__(self, name: str, args: list[str], log_dir: Path) -> None:
        self.name = name
        self.args = args
        self.env: dict[str, str] = {}  # this child's own settings over the shared ones
        self.log_path = log_dir / f"{name}.log"
        self.proc: asyncio.subprocess.Process | None = None
        self.ready = asyncio.Event()
        self.detail = ""
        self.tail: deque[str] = deque(maxlen=5)
        self._reader: asyncio.Task[None] | None = None

    async def start(self, env: dict[str, str]) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "suanwang",
            *self.args,
            env={**env, **self.env},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent(),  # SIGTERM when `up` ends, however it ends: the child stops in its bound
        )
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc and self.proc.stdout
        with open(self.log_path, "a", encoding="utf-8") as log:
            async for raw in self.proc.stdout:
                line = raw.decode(errors="replace").rstrip()
                log.write(line + "\n")
                log.flush()
                if line.startswith(READY_MARK):
                    what = line.removeprefix(READY_MARK).strip()
                    if what == self.name:
                        self.ready.set()
                    else:
                        self.detail = what
                elif line.strip():
                    self.tail.append(line)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def failure(self) -> SuanwangError:
        last = next((ln for ln in reversed(self.tail) if ln.strip()), "no output")
        return SuanwangError(
            f"{self.name} stopped (exit {self.proc.returncode if self.proc else '?'}): "
            f"{last.strip()} — full log: {self.log_path}"
        )

    async def wait_ready(self) -> None:
        assert self.proc
        exited = asyncio.create_task(self.proc.wait())
        ready = asyncio.create_task(self.ready.wait())
        done, _ = await asyncio.wait({exited, ready}, timeout=READY_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
        for task in (exited, ready):
            task.cancel()
        if ready not in done:
            if self._reader:
                await asyncio.wait({self._reader}, timeout=2)
            if self.alive:
                raise SuanwangError(f"{self.name} not ready after {READY_TIMEOUT_S:.0f}s; see {self.log_path}")
            raise self.failure()

    async def stop(self, timeout_s: float = 20.0) -> None:
        if self.alive:
            assert self.proc
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout_s)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._reader:
            await asyncio.wait({self._reader}, timeout=2)


class HubView:
    """Each hub as it is now, for the live panel: load, power, the hour's power price and green share, demand."""

    def __init__(self) -> None:
        self.load: dict[str, float] = {}  # moving average of max(CPU, accelerator) utilisation
        self.power: dict[str, tuple[str, float]] = {}  # node id -> (hub, kW)
        self.grid: dict[tuple[str, str], tuple[int, float, float]] = {}  # (hub, province) -> (hour, price, green)
        self.demand: Counter[str] = Counter()

    def telemetry(self, t: dict[str, Any]) -> None:
        util = max(t["cpu_util"], t["accelerator_util"])
        self.load[t["hub"]] = 0.98 * self.load.get(t["hub"], util) + 0.02 * util
        self.power[t["node_id"]] = (t["hub"], t["power_kw"])

    def grid_signal(self, g: dict[str, Any], now_ms: int) -> None:
        hour = int(g["hour_start"].timestamp() * 1000)
        if hour <= now_ms < hour + 3_600_000:
            self.grid[(g["hub"], g["province"])] = (hour, g["price_yuan_kwh"], g["green_share"])

    def table(self) -> Table:
        table = Table(title="hubs now", title_justify="left")
        for column in ("hub", "load", "power kW", "¥/kWh", "green", "requests"):
            table.add_column(column, justify="left" if column == "hub" else "right")
        kw: Counter[str] = Counter()
        for hub, power in self.power.values():
            kw[hub] += power
        for hub in sorted(set(self.load) | set(self.demand)):
            grid = [(price, green) for (h, _), (_, price, green) in self.grid.items() if h == hub]
            price = f"{np.mean([p for p, _ in grid]):.3f}" if grid else "-"
            green = f"{np.mean([g for _, g in grid]):.0%}" if grid else "-"
            table.add_row(hub, f"{self.load.get(hub, 0):.0%}", f"{kw[hub]:,.0f}", price, green, str(self.demand[hub]))
        return table


class Monitor:
    """Counts this run's events and measures dispatch latency, request produced -> placement consumed."""

    def __init__(self, settings: Settings, watch_hubs: bool) -> None:
        self.settings = settings
        self.watch_hubs = watch_hubs  # decoding all telemetry costs CPU the services could use: only when shown
        self.topics = Topics(settings.topic_prefix)
        self.codec = make_codec(settings)
        self.counts: Counter[str] = Counter()
        self.latency_ms: list[float] = []  # request to placement, decided alone (greedy, or after a preemption)
        self.batched_ms: list[float] = []  # request to placement, for work that waited for its batch window
        self.decision_us: list[float] = []  # the dispatcher's own time per decision, from each placement
        self.hubs = HubView()
        self.placements: AIOKafkaConsumer  # on the dispatch path, for the latency
        self.consumer: AIOKafkaConsumer  # the frames (their samples are counted) and what the hub view shows
        self.counted: AIOKafkaConsumer  # the topics only counted, fetched seldom
        self._waits: dict[AIOKafkaConsumer, int] = {}  # each consumer's fetch wait, ms

    async def start(self) -> None:
        shown = (TELEMETRY, TASK_REQUEST, GRID_SIGNAL) if self.watch_hubs else ()
        counted = [s for s in COUNTED if s is not PLACEMENT and s not in shown]
        self.counted = await self._following(counted, COUNT_FETCH_WAIT_MS)
        self.consumer = await self._following([TELEMETRY_FRAME, *shown], self.settings.fetch_max_wait_ms)
        self.placements = await self._following([PLACEMENT], self.settings.dispatch_fetch_max_wait_ms)

    async def _following(self, specs: list[TopicSpec], fetch_max_wait_ms: int) -> AIOKafkaConsumer:
        """A consumer of the topics from their end (only this run's events). Only the placements are read on
        the dispatch path's short fetch wait: on the embedded broker, each fetch that returns data costs more
        the more batches the log holds."""
        consumer = AIOKafkaConsumer(**{**consumer_kwargs(self.settings, None), "fetch_max_wait_ms": fetch_max_wait_ms})
        self._waits[consumer] = fetch_max_wait_ms
        await consumer.start()
        await consumer.topics()
        names = [self.topics.name(spec) for spec in specs]
        parts = [TopicPartition(t, p) for t in names for p in consumer.partitions_for_topic(t) or ()]
        consumer.assign(parts)
        await consumer.seek_to_end(*parts)
        for tp in parts:
            await consumer.position(tp)
        return consumer

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await asyncio.gather(*(self._read(consumer, wait_ms, stop) for consumer, wait_ms in self._waits.items()))
        finally:
            for consumer in self._waits:
                await consumer.stop()

    async def _read(self, consumer: AIOKafkaConsumer, wait_ms: int, stop: asyncio.Event) -> None:
        """Until the stop; then what the stopped services sent last, until two fetch waits bring nothing."""
        while not stop.is_set():
            self._take(consumer, await consumer.getmany(timeout_ms=100))
        while last := await consumer.getmany(timeout_ms=2 * wait_ms + 500):
            self._take(consumer, last)

    def _take(self, consumer: AIOKafkaConsumer, batch: dict[TopicPartition, list[Any]]) -> None:
        for tp, messages in batch.items():
            now = time.time() * 1000
            spec = self.topics.spec(tp.topic)
            if spec in COUNTED:
                self.counts[COUNTED[spec]] += len(messages)
            if consumer is not self.counted:  # what the others read is observed
                for msg in messages:
                    with contextlib.suppress(ValueError):
                        self._observe(spec, self.codec.decode_as(spec.schema, msg.value), now)

    def _observe(self, spec: TopicSpec, record: dict[str, Any], now: float) -> None:
        if spec is PLACEMENT:
            waited = now - record["request_time"].timestamp() * 1000
            (self.batched_ms if record["decided_by"] == BATCH else self.latency_ms).append(waited)
            self.decision_us.append(record["decision_us"])
        elif spec is TELEMETRY_FRAME:  # its samples count as telemetry events, and show like them
            if frame_problem(record) is None:  # the worker reports a bad one
                self.counts[COUNTED[TELEMETRY]] += len(record["node_ids"])
                for sample in samples_of(record) if self.watch_hubs else ():  # made only to be shown
                    self.hubs.telemetry(sample)
        elif spec is TELEMETRY:
            self.hubs.telemetry(record)
        elif spec is TASK_REQUEST:
            self.hubs.demand[record["origin_hub"]] += 1
        else:
            self.hubs.grid_signal(record, int(now))

    def percentile(self, q: float, of: str = "latency_ms") -> float | None:
        values = getattr(self, of)
        return round(float(np.percentile(values, q)), 3) if values else None


Tick = Callable[["Platform", Monitor], Awaitable[None]]


class Platform:
    """Starts, supervises and stops the whole platform."""

    def __init__(self, settings: Settings, live: bool, on_tick: Tick | None = None) -> None:
        self.settings = settings.model_copy(update={"data_dir": settings.data_dir.resolve()})
        self.live = live
        self.on_tick = on_tick  # called about twice a second while the platform runs
        self.console = Console(stderr=True)
        self.log_dir = self.settings.data_dir / "logs"
        self.children: list[Child] = []
        self.broker: EmbeddedBroker | None = None
        self.started = 0.0
        self.stopping = asyncio.Event()  # set by a signal, the duration's end, or an on_tick that is done

    def run(self, duration: float | None) -> dict[str, Any]:
        try:
            return asyncio.run(self._main(duration))
        finally:
            if self.broker:
                self.broker.stop()

    async def _main(self, duration: float | None) -> dict[str, Any]:
        s = self.settings
        self.log_dir.mkdir(parents=True, exist_ok=True)
        run_file = RunFile(s.data_dir)
        earlier = run_file.still_running()
        if earlier:
            pids = " ".join(map(str, earlier))
            raise SuanwangError(
                f"an earlier `suanwang up` of {s.data_dir} is still running (pids {pids}); "
                f"stop it with `kill {pids}`, or choose another --data-dir"
            )
        if s.web_port:
            check_port_free(s.web_port, "web API", "--web-port / SUANWANG_WEB_PORT")
        if not s.kafka_bootstrap:
            self.broker = EmbeddedBroker(s.broker_port, self.log_dir / "broker.log")
            self.broker.start()
            s = self.settings = s.model_copy(update={"kafka_bootstrap": self.broker.bootstrap})
        await ensure_topics(s, tier_request_topics(s))
        stop = self.stopping
        stop_on_signals(stop)
        env = {**os.environ, **s.to_env(), "PYTHONUNBUFFERED": "1"}
        worker = Child("worker", ["worker", "--api"], self.log_dir)
        dispatcher = Child("dispatcher", ["dispatcher"], self.log_dir)
        simulator = Child("simulator", ["simulate"], self.log_dir)
        if s.metrics_port:  # one machine: each service a port of its own, from the one given on
            for offset, child in enumerate((worker, dispatcher, simulator)):
                check_port_free(s.metrics_port + offset, f"{child.name} metrics", "SUANWANG_METRICS_PORT")
                child.env = {"SUANWANG_METRICS_PORT": str(s.metrics_port + offset)}
        self.children = [worker, dispatcher, simulator]
        monitor = Monitor(s, watch_hubs=self.live)
        monitor_task = None
        try:
            self._say("starting worker and dispatcher …")
            for child in (worker, dispatcher):
                await child.start(env)
            run_file.write(self._pids())
            for child in (worker, dispatcher):
                await child.wait_ready()
            await monitor.start()
            monitor_stop = asyncio.Event()
            monitor_task = asyncio.create_task(monitor.run(monitor_stop))
            await simulator.start(env)
            run_file.write(self._pids())
            await simulator.wait_ready()
            self.started = time.monotonic()
            if duration:
                asyncio.get_running_loop().call_later(duration, stop.set)
            await self._supervise(stop, monitor)
        finally:
            await simulator.stop()
            if dispatcher.alive and simulator.proc:
                await self._decided(s)
            await dispatcher.stop()
            await worker.stop(timeout_s=s.worker_drain_s + 15)  # it drains first: every row stored
            if monitor_task:
                monitor_stop.set()
                await monitor_task
            run_file.remove()
        return self._summary(monitor)

    async def _decided(self, s: Settings) -> None:
        """Waits until the dispatcher has committed every request sent (within DECIDE_BOUND_S), so a stop leaves
        none undecided however far a busy machine put it behind."""
        scope = parse_scope(s.dispatcher_scope, load_network())
        group, requests = dispatcher_group(scope), [Topics(s.topic_prefix).requests(scope.topic_suffix)]
        async with Lag(s) as lag:
            if not await lag.caught_up(group, requests, DECIDE_BOUND_S):
                self._say(f"the dispatcher stops with {await lag.behind(group, requests)} requests not yet decided")

    def _pids(self) -> list[int]:
        """This process, the broker and every child started: what holds the data directory while it runs."""
        broker = [self.broker.pid] if self.broker and self.broker.pid else []
        return [os.getpid(), *broker, *(c.proc.pid for c in self.children if c.proc)]

    async def _supervise(self, stop: asyncio.Event, monitor: Monitor) -> None:
        with (
            Live(self._panel(monitor), console=self.console, refresh_per_second=2, transient=False)
            if self.live
            else contextlib.nullcontext() as live
        ):
            last_line = 0.0
            while not stop.is_set():
                for child in self.children:
                    if not child.alive:
                        raise child.failure()
                if self.on_tick:
                    await self.on_tick(self, monitor)
                if live:
                    live.update(self._panel(monitor))
                elif not self.live and time.monotonic() - last_line > 10:
                    last_line = time.monotonic()
                    self._say(" ".join(f"{k}={v}" for k, v in sorted(monitor.counts.items())))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.5)

    def _say(self, text: str) -> None:
        if not self.live:
            self.console.print(f"[dim]suanwang up:[/] {text}", highlight=False)

    def _panel(self, monitor: Monitor) -> Group:
        s = self.settings
        comps = Table(title="算网 suanwang — components", title_justify="left")
        comps.add_column("component")
        comps.add_column("state")
        comps.add_column("where")
        broker = f"embedded tansu {s.kafka_bootstrap}" if self.broker else s.kafka_bootstrap
        comps.add_row("broker", "running" if not self.broker or self.broker.alive() else "stopped", broker)
        comps.add_row("clickhouse", "running" if self.children[0].alive else "stopped", describe_url(s))
        for child in self.children:
            state = "running" if child.alive else "stopped"
            comps.add_row(child.name, state, child.detail or str(child.log_path))
        flow = Table(title=f"events (last {time.monotonic() - self.started:.0f}s)", title_justify="left")
        flow.add_column("stream")
        flow.add_column("count", justify="right")
        for name in COUNTED.values():
            flow.add_row(name, str(monitor.counts[name]))
        flow.add_row("dispatch p50 / p99 ms", f"{monitor.percentile(50)} / {monitor.percentile(99)}")
        return Group(comps, flow, monitor.hubs.table())

    def _summary(self, monitor: Monitor) -> dict[str, Any]:
        summary: dict[str, Any] = {name: monitor.counts[name] for name in COUNTED.values()}
        summary["dispatch_p50_ms"] = monitor.percentile(50)
        summary["dispatch_p99_ms"] = monitor.percentile(99)
        summary["batched_p50_ms"] = monitor.percentile(50, "batched_ms")
        summary["batched_p99_ms"] = monitor.percentile(99, "batched_ms")
        summary["decision_p50_us"] = monitor.percentile(50, "decision_us")
        summary["decision_p99_us"] = monitor.percentile(99, "decision_us")
        summary["seconds"] = round(time.monotonic() - self.started, 1)
        store = Store(self.settings)
        try:
            summary["clickhouse_rows"] = {
                t: store.query(f"SELECT count() FROM {DATABASE}.{t}")[1][0][0] for t in HISTORY_TABLES
            }
        finally:
            store.close()
        summary["clickhouse"] = describe_url(self.settings)
        return summary
