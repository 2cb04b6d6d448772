"""Metrics for the platform's operators: tallies as counters, and the dispatcher and worker serving theirs
over HTTP on the real broker, with their group's lag."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import urllib.request
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from suanwang.bus import EventProducer, ensure_topics
from suanwang.dispatcher.service import DispatcherService
from suanwang.errors import SuanwangError
from suanwang.metrics import ServiceMetrics, Tallies
from suanwang.schemas.topics import PLACEMENT, REGISTRY, REJECTION, TASK_REQUEST
from suanwang.settings import Settings
from suanwang.simulator.workload import registration
from suanwang.streams.app import TALLIES
from suanwang.streams.worker import run_worker
from suanwang.topology import load_network, scaled_nodes
from tests.evidence import caught_up, wait_for
from tests.fleet import collect
from tests.test_dispatcher_service import _request

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def scrape(port: int) -> dict[str, float]:
    """Every sample served on the port, by its name and labels as Prometheus writes them."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}"] = sample.value
    return out


def test_tallies_are_counters_one_family_per_name_labelled_by_what_follows_the_colon() -> None:
    counts = Counter({"rows:telemetry": 7, "rows:placements": 2, "samples_aggregated": 5, "unknown": 1})
    registry = CollectorRegistry()
    registry.register(Tallies("worker", counts, TALLIES))
    text = generate_latest(registry).decode()
    assert 'suanwang_worker_rows_total{table="telemetry"} 7.0' in text
    assert 'suanwang_worker_rows_total{table="placements"} 2.0' in text
    assert "suanwang_worker_samples_aggregated_total 5.0" in text
    assert "unknown" not in text
    counts["rows:telemetry"] += 1  # read when scraped, not when registered
    assert 'suanwang_worker_rows_total{table="telemetry"} 8.0' in generate_latest(registry).decode()


def test_a_port_in_use_is_one_line_naming_the_setting() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(SuanwangError, match=rf"SUANWANG_METRICS_PORT={busy.getsockname()[1]}: cannot serve"):
            ServiceMetrics("worker").serve(busy.getsockname()[1])


async def _registered(settings: Settings, nodes: int) -> EventProducer:
    """A started producer that has registered `nodes` nodes of the network model."""
    await ensure_topics(settings)
    producer = EventProducer(settings)
    await producer.start()
    network = load_network()
    for spec in scaled_nodes(network, nodes):
        await producer.send(REGISTRY, registration(spec, network))
    await producer.flush()
    return producer


def test_the_dispatcher_serves_its_decisions_decision_time_and_lag(settings: Settings) -> None:
    port = free_port()
    settings = settings.model_copy(update={"metrics_port": port})

    async def scenario() -> dict[str, float]:
        producer = await _registered(settings, 100)
        stop = asyncio.Event()
        service = asyncio.create_task(DispatcherService(settings).run(stop))
        await producer.send(TASK_REQUEST, _request("good"))
        await producer.send(TASK_REQUEST, _request("bad", chip_archs=["sparc"]))
        await producer.flush()
        await collect(settings, [PLACEMENT, REJECTION], want=2, settle_s=0.5)
        lag = 'suanwang_consumer_lag_messages{group="suanwang-dispatcher-national",partition="0"'
        assert await wait_for(lambda: any(k.startswith(lag) for k in scrape(port)), timeout_s=30)
        served = await asyncio.to_thread(scrape, port)
        stop.set()
        await service
        await producer.stop()
        return served

    served = asyncio.run(scenario())
    assert served['suanwang_dispatch_decisions_total{outcome="placed",scope="national"}'] == 1
    assert served['suanwang_dispatch_decisions_total{outcome="UNKNOWN_ARCH",scope="national"}'] == 1
    assert served['suanwang_dispatch_decision_seconds_count{path="greedy",scope="national"}'] == 1
    assert served['suanwang_dispatch_reservations{scope="national"}'] == 1


def test_the_worker_serves_what_it_read_and_stored_and_its_lag(settings: Settings) -> None:
    port = free_port()
    settings = settings.model_copy(update={"metrics_port": port})

    async def scenario() -> dict[str, float]:
        producer = await _registered(settings, 20)
        stop = asyncio.Event()
        worker = asyncio.create_task(run_worker(settings, stop))
        assert await caught_up(settings, REGISTRY)
        lag = f'suanwang_consumer_lag_messages{{group="{settings.topic_prefix}worker"'
        assert await wait_for(lambda: any(k.startswith(lag) for k in scrape(port)), timeout_s=30)
        served = await asyncio.to_thread(scrape, port)
        stop.set()
        await worker
        await producer.stop()
        return served

    served = asyncio.run(scenario())
    assert served['suanwang_worker_events_total{topic="registry.node"}'] == 20
    assert served['suanwang_worker_rows_total{table="nodes"}'] == 20


def _names(registry: CollectorRegistry) -> set[str]:
    """The sample names a registry can serve, whether or not a labelled child has been made yet."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    return {f.name + end for f in registry.collect() for end in suffixes.get(f.type, ("",))}


def test_the_platform_health_dashboard_reads_only_metrics_the_services_serve() -> None:
    """Every metric the Grafana dashboard queries is one that a service's registry holds."""
    from suanwang.api.server import REGISTRY as API_REGISTRY
    from suanwang.dispatcher.service import DispatchMetrics
    from suanwang.simulator.simulate import Simulator

    worker = ServiceMetrics("worker")
    worker.registry.register(Tallies("worker", Counter({f"{name}:x": 1 for name in TALLIES}), TALLIES))
    worker.lag.labels("g", "t", "0").set(0)
    idle = SimpleNamespace(scope="national", core=SimpleNamespace(reservations={}), _window={}, _waiting=[])
    dispatch = DispatchMetrics(idle)  # type: ignore[arg-type]
    dispatch.decided(PLACEMENT, {"decided_by": "greedy", "decision_us": 80.0})
    simulator = Simulator(Settings(sim_nodes=10))
    served = set().union(*(_names(r) for r in (worker.registry, dispatch.service.registry, API_REGISTRY)))
    served |= _names(simulator.metrics.registry)
    dashboard = json.loads((ROOT / "dashboards/grafana/platform-health.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {m for e in exprs for m in re.findall(r"suanwang_[a-z_]+", e)}
    assert len(exprs) >= 6 and used and used <= served, used - served
