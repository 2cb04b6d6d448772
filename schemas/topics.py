"""Every Kafka topic of the platform: its name, Avro schema, key field and ClickHouse table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TopicSpec:
    """One topic of the contract; `name` is without the deployment's prefix."""

    name: str
    schema: str
    key: str | None
    table: str | None
    compacted: bool = False
    one_per_batch: bool = False  # the dispatch path: each record sent at once, so each its own batch

    def key_of(self, record: dict[str, Any]) -> bytes | None:
        """The Kafka message key of a record on this topic."""
        return str(record[self.key]).encode() if self.key else None


REGISTRY = TopicSpec("registry.node", "NodeRegistration", "node_id", "nodes", compacted=True)
TELEMETRY = TopicSpec("telemetry.node", "NodeTelemetry", "node_id", "telemetry")
TELEMETRY_FRAME = TopicSpec("telemetry.frame", "TelemetryFrame", "cluster", "telemetry")  # samples: telemetry rows
TELEMETRY_TOPICS = (TELEMETRY, TELEMETRY_FRAME)  # node samples, one a record or a cluster's a frame
TASK_REQUEST = TopicSpec("tasks.request", "TaskRequest", "task_id", "task_requests", one_per_batch=True)
TASK_LIFECYCLE = TopicSpec("tasks.lifecycle", "TaskLifecycle", "task_id", "task_events")
PLACEMENT = TopicSpec("dispatch.placement", "Placement", "task_id", "placements", one_per_batch=True)
REJECTION = TopicSpec("dispatch.rejection", "Rejection", "task_id", "rejections", one_per_batch=True)
ROLLUP = TopicSpec("monitor.rollup", "Rollup", "scope_key", "rollups")
ALERT = TopicSpec("monitor.alert", "Alert", "alert_key", "alerts")
PANE_CHUNK = TopicSpec("monitor.pane-chunk", "PaneChunk", "bucket", None)
LATENCY = TopicSpec("monitor.latency", "LatencyRollup", "scope_key", "latency_rollups")
GRID_SIGNAL = TopicSpec("grid.signal", "GridSignal", "province", "grid_signals")
MARKET_PRICE = TopicSpec("market.price", "MarketPrice", "price_key", "market_prices", compacted=True)
NETWORK_PROBE = TopicSpec("network.probe", "NetworkProbe", "from_hub", "hub_latency")
DEADLETTER = TopicSpec("deadletter", "DeadLetter", None, "dead_letters")

ALL_TOPICS: tuple[TopicSpec, ...] = (
    REGISTRY,
    TELEMETRY,
    TELEMETRY_FRAME,
    TASK_REQUEST,
    TASK_LIFECYCLE,
    PLACEMENT,
    REJECTION,
    ROLLUP,
    ALERT,
    PANE_CHUNK,
    LATENCY,
    GRID_SIGNAL,
    NETWORK_PROBE,
    MARKET_PRICE,
    DEADLETTER,
)


class Topics:
    """Resolves contract topics to the deployment's full names (prefix + name)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._by_full = {prefix + spec.name: spec for spec in ALL_TOPICS}

    def name(self, spec: TopicSpec) -> str:
        return self.prefix + spec.name

    def spec(self, full_name: str) -> TopicSpec:
        """The contract topic behind a full topic name (a tier's request topic is `tasks.request`); KeyError
        for a foreign topic."""
        spec = self._by_full.get(full_name)
        if spec is None and full_name.startswith(self.name(TASK_REQUEST) + "."):
            return TASK_REQUEST
        if spec is None:
            raise KeyError(full_name)
        return spec

    def requests(self, topic_suffix: str) -> str:
        """The request topic of a dispatch tier: `tasks.request` plus the tier's suffix."""
        return self.name(TASK_REQUEST) + topic_suffix
