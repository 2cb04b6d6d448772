"""The Faust app of the monitoring worker: one agent per concern, topics as raw Avro bytes."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import faust
from faust.types import TP

from suanwang.bus import BULK_BATCH_BYTES, make_codec
from suanwang.clock import now_ms
from suanwang.schemas.codec import Codec, DecodeError
from suanwang.schemas.topics import (
    DEADLETTER,
    NETWORK_PROBE,
    TELEMETRY,
    TELEMETRY_FRAME,
    TELEMETRY_TOPICS,
    Topics,
    TopicSpec,
)
from suanwang.security import faust_credentials
from suanwang.settings import Settings
from suanwang.store import Store
from suanwang.streams.alerts import Alerts
from suanwang.streams.checks import probe_problem
from suanwang.streams.containment import Containment
from suanwang.streams.facts import Facts
from suanwang.streams.rules import Rules
from suanwang.topology import load_network

FRAME_SOURCES = 1 << 16  # frame partition p is telemetry source FRAME_SOURCES + p
COMMIT_INTERVAL_S = 1.0  # how often the worker commits what it acked
# what `Context.counts` tallies: its keys are a name, or `name:label`; the worker's metrics export each
TALLIES: dict[str, tuple[str | None, str]] = {
    "events": ("topic", "Events read, by contract topic."),
    "rows": ("table", "Rows stored in ClickHouse, by table."),
    "dead_letters": ("component", "Records sent to the dead-letter topic, by the component that refused them."),
    "samples_aggregated": (None, "Telemetry samples summed into pane chunks."),
    "windows_published": ("scope_kind", "Rollup windows published, by scope kind."),
    "alerts": ("kind", "Alert changes published (raised or resolved), by kind."),
    "panes_too_late": ("scope_kind", "Partial panes that came after their windows had closed."),
    "panes_superseded": ("scope_kind", "Partial panes replaced by a later delivery of their chunk."),
    "chunks_read_back": (None, "Pane chunks read back on taking up a chunk partition."),
    "store_retries": (None, "ClickHouse calls retried while it failed."),
    "failures": ("concern", "Batches or timer ticks that failed and were contained, by concern."),
    "billing_runs": (None, "Billing runs."),
    "billing_entries": (None, "Ledger entries written by billing."),
    "billing_failures": (None, "Billing runs that failed."),
}


class Context:
    """What the agents of one worker share: settings, codec, topics, store, facts, alert rules and state."""

    def __init__(self, app: faust.App, settings: Settings, store: Store) -> None:
        self.app = app
        self.settings = settings
        self.store = store
        self.codec: Codec = make_codec(settings)
        self.topics = Topics(settings.topic_prefix)
        self._telemetry = {self.topics.name(spec): spec for spec in TELEMETRY_TOPICS}
        self.facts = Facts(self.codec, self.topics)
        self.rules = Rules(settings)
        self.alerts = Alerts(self)
        self.hubs = set(load_network().hubs)
        self.counts: Counter[str] = Counter()  # what the agents did, for benches and metrics
        self.contain = Containment(self)
        self._out: dict[TopicSpec, faust.TopicT] = {}  # the topics sent to
        self.draining = False  # asked to stop: storing what is left; alerts of silence are held back

    def source(self, topic: str, partition: int) -> int | None:
        """A telemetry partition as one id over both telemetry topics (a frame partition's follows the
        samples' partitions), which the pane chunks and the silence clocks go by; None for another topic."""
        spec = self._telemetry.get(topic)  # Faust's own topics come through the rebalance signals too
        if spec is None:
            return None
        return partition + (FRAME_SOURCES if spec is TELEMETRY_FRAME else 0)

    def partition_of(self, source: int) -> TP:
        """The telemetry partition a `source` id names."""
        if source >= FRAME_SOURCES:
            return TP(self.topics.name(TELEMETRY_FRAME), source - FRAME_SOURCES)
        return TP(self.topics.name(TELEMETRY), source)

    def topic(self, *specs: TopicSpec) -> faust.TopicT:
        return self.app.topic(*(self.topics.name(s) for s in specs), value_serializer="raw", key_serializer="raw")

    async def send(self, spec: TopicSpec, record: dict[str, Any]) -> None:
        out = self._out.get(spec)
        if out is None:  # made once: making one costs 70–200 µs
            out = self._out[spec] = self.topic(spec)
        await out.send(key=spec.key_of(record), value=self.codec.encode(spec.schema, record))
        if spec is DEADLETTER:
            self.counts[f"dead_letters:{record['component']}"] += 1

    def decode(self, ev: faust.EventT) -> dict[str, Any] | None:
        """The event's record, or None when it does not decode (the sink reports it: it reads every topic)."""
        try:
            return self.codec.decode_as(self.topics.spec(ev.message.topic).schema, ev.value)
        except DecodeError:
            return None

    def problem(self, spec: TopicSpec, record: dict[str, Any]) -> str | None:
        """Why a decoded record cannot be counted (a value out of range), or None; telemetry is checked as
        columns by the intake (`checks.telemetry_problems`)."""
        if spec is NETWORK_PROBE:
            return probe_problem(record, self.hubs, now_ms(), self.settings.max_clock_skew_s)
        return None

    def valid(self, ev: faust.EventT) -> dict[str, Any] | None:
        """The event's record when it decodes and every value is sound; the sink dead-letters the rest."""
        record = self.decode(ev)
        if record is None or self.problem(self.topics.spec(ev.message.topic), record) is not None:
            return None
        return record


def worker_group(settings: Settings) -> str:
    """The workers' consumer group (Faust's app id): one per deployment, named by its topic prefix."""
    return settings.worker_group or f"{settings.topic_prefix}worker"


def faust_app(settings: Settings, app_id: str) -> faust.App:
    """A Faust app configured for this deployment's broker, with no agents yet."""
    datadir = settings.data_dir / "faust" / app_id  # not the working directory; Faust makes only the last level
    datadir.parent.mkdir(parents=True, exist_ok=True)
    return faust.App(
        app_id,
        broker=f"kafka://{settings.kafka_bootstrap}",
        broker_credentials=faust_credentials(settings),
        store="memory://",
        datadir=str(datadir),
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication,
        broker_session_timeout=settings.session_timeout_ms / 1000,
        broker_heartbeat_interval=max(0.5, settings.session_timeout_ms / 6000),
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        autodiscover=False,
        # telemetry is acked only once its pane chunk goes out, up to half a pane later: a stop or rebalance does not
        # wait for that; what is unacked is read again, and the sink and the windows take it once
        stream_wait_empty=False,
        # each second, not every 2.8 s: a chunk's telemetry counts as behind until its offsets are committed
        broker_commit_interval=COMMIT_INTERVAL_S,
        # larger fetches and buffers: telemetry arrives in bursts of thousands
        stream_buffer_maxsize=4 * settings.sink_batch_size,
        broker_max_poll_records=settings.sink_batch_size,
        consumer_max_fetch_size=8 * 1024 * 1024,
        producer_linger=settings.bulk_linger_ms / 1000,  # rollups, chunks, alerts and bills: fewer batches
        producer_max_batch_size=BULK_BATCH_BYTES,  # a 10-s pane's thousands of rollups in a few batches, not 16-kB ones
    )


def create_app(settings: Settings, store: Store) -> tuple[faust.App, Context]:
    """The worker's app with every agent registered; agents wait until the worker knows every node."""
    from suanwang.streams import billing_runs, health, latency, rollups, sink, telemetry

    app = faust_app(settings, worker_group(settings))
    logging.getLogger("faust").setLevel(logging.WARNING)
    ctx = Context(app, settings, store)

    @app.task
    @ctx.contain.timer("follow_facts")
    async def follow_facts() -> None:
        await ctx.facts.run(settings)

    telemetry.register(ctx, sink.register(ctx), rollups.register(ctx), health.register(ctx))
    latency.register(ctx)
    billing_runs.register(ctx)
    return app, ctx
