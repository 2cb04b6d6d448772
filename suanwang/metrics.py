"""Prometheus metrics of suanwang's own services, for the operators of the platform.

Each process keeps one registry: what it counts, and the consumer lag of its group per topic and partition
(end offset minus committed offset, read every few seconds). The worker, dispatcher and simulator serve it
on `SUANWANG_METRICS_PORT` (0: not served); the API serves its own at `/metrics` on the API's port.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Gauge, start_http_server
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from suanwang.bus import Lag
from suanwang.errors import SuanwangError
from suanwang.settings import Settings

log = logging.getLogger("suanwang.metrics")
LAG_EVERY_S = 5.0
PREFIX = "suanwang"


class Tallies(Collector):
    """A service's running tallies (a Counter of `name` or `name:label` keys) as Prometheus counters, one
    family per name: `families` maps each name to its label (None: none) and its help text."""

    def __init__(self, service: str, counts: Counter[str], families: dict[str, tuple[str | None, str]]) -> None:
        self.service = service
        self.counts = counts
        self.families = families

    def collect(self) -> Iterator[Metric]:
        for name, (label, text) in self.families.items():
            family = CounterMetricFamily(f"{PREFIX}_{self.service}_{name}", text, labels=[label] if label else [])
            for key, value in list(self.counts.items()):
                base, _, value_of_label = key.partition(":")
                if base == name:
                    family.add_metric([value_of_label] if label else [], value)
            yield family


class ServiceMetrics:
    """One service's registry, with the consumer lag of its group."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = CollectorRegistry()
        self.lag = Gauge(
            f"{PREFIX}_consumer_lag_messages",
            "Messages a consumer group has not yet committed, per topic and partition.",
            ["group", "topic", "partition"],
            registry=self.registry,
        )

    def serve(self, port: int) -> None:
        """Serves the registry over HTTP on `port` (0: not served), from a daemon thread ending with the process."""
        if port == 0:
            return
        try:
            start_http_server(port, registry=self.registry)
        except OSError as exc:
            message = f"SUANWANG_METRICS_PORT={port}: cannot serve {self.service} metrics: {exc.strerror}"
            raise SuanwangError(message) from None
        log.info("%s metrics on :%d/metrics", self.service, port)

    def keep_lag(
        self, settings: Settings, group: str, topic_names: list[str], stop: asyncio.Event
    ) -> asyncio.Task[None]:
        """A task keeping the lag gauge of `group` current until `stop`, when the metrics are served (a lag
        nobody reads is not worth the broker's time)."""
        if settings.metrics_port == 0:
            return asyncio.create_task(stop.wait())  # type: ignore[arg-type]
        return asyncio.create_task(self._watch_lag(settings, group, topic_names, stop))

    async def _watch_lag(self, settings: Settings, group: str, topic_names: list[str], stop: asyncio.Event) -> None:
        """Sets the lag gauge of `group` every few seconds until `stop`. A failed reading is logged and tried
        again: measuring must never stop the service it measures."""
        try:
            async with Lag(settings) as lag:
                while not stop.is_set():
                    try:
                        for tp, behind in (await lag.by_partition(group, topic_names)).items():
                            self.lag.labels(group, tp.topic, str(tp.partition)).set(behind)
                    except Exception as exc:
                        log.warning("%s: consumer lag of %s not read: %r", self.service, group, exc)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), LAG_EVERY_S)
        except Exception as exc:
            log.warning("%s: consumer lag not measured: %r", self.service, exc)
