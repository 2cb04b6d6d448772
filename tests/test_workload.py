"""The simulated network follows the time of day: load, prices, green power and the task mix."""

from __future__ import annotations

import random
from datetime import datetime
from statistics import mean

from suanwang.simulator.workload import (
    CST,
    IDLE,
    KINDS,
    Held,
    NodeBehaviour,
    TaskGenerator,
    grid_signal,
    usage_telemetry,
)
from suanwang.topology import load_network, scaled_nodes


def _at(hour: int) -> int:
    return int(datetime(2026, 11, 23, hour, 0, tzinfo=CST).timestamp() * 1000)


def test_eastern_cpu_load_peaks_in_the_afternoon_and_ebbs_at_night() -> None:
    net = load_network()
    east_cpu = [n for n in scaled_nodes(net, 1000) if net.hubs[n.hub].role == "east" and n.pool == "cpu-x86"]
    behaviour = NodeBehaviour(east_cpu, net, random.Random(1))

    def load(hour: int) -> float:
        samples = [behaviour.sample(n, _at(hour), 0) for n in east_cpu for _ in range(5)]
        return mean(s["cpu_util"] for s in samples if s is not None)

    assert load(14) > load(3) + 0.3


def test_power_follows_utilisation() -> None:
    net = load_network()
    nodes = scaled_nodes(net, 200)
    behaviour = NodeBehaviour(nodes, net, random.Random(2))
    samples = [s for s in (behaviour.sample(n, _at(h), 0) for n in nodes for h in (3, 14)) if s is not None]
    for s in samples:
        pool = net.pools[next(n.pool for n in nodes if n.node_id == s["node_id"])]
        load = s["accelerator_util"] if pool.accelerators else s["cpu_util"]
        assert abs(s["power_kw"] - (pool.idle_power_kw + (pool.power_kw - pool.idle_power_kw) * load)) < 1e-9


def test_power_prices_follow_time_of_use_and_western_green_power_follows_sun_and_wind() -> None:
    net = load_network()
    rng = random.Random(3)

    def signal(province: str, hub: str, hour: int) -> dict:
        return grid_signal(net, province, hub, _at(hour), rng)

    assert signal("Shanghai", "yangtze", 19)["price_yuan_kwh"] > signal("Shanghai", "yangtze", 13)["price_yuan_kwh"]
    assert signal("Shanghai", "yangtze", 13)["price_yuan_kwh"] > signal("Shanghai", "yangtze", 3)["price_yuan_kwh"]
    assert signal("Gansu", "gansu", 3)["price_yuan_kwh"] < signal("Shanghai", "yangtze", 3)["price_yuan_kwh"]
    evening = mean(signal("Gansu", "gansu", 19)["green_share"] for _ in range(50))
    for hour in (13, 2):  # solar at noon, wind at night
        assert mean(signal("Gansu", "gansu", hour)["green_share"] for _ in range(50)) > evening


def test_interactive_demand_rises_by_day_and_batch_work_by_night() -> None:
    gen = TaskGenerator(load_network(), random.Random(4))

    def share(hour: int, shiftable: bool) -> float:
        kinds = [gen.next(_at(hour))["kind"] for _ in range(3000)]
        return sum(KINDS[k].shiftable == shiftable for k in kinds) / len(kinds)

    assert share(14, shiftable=False) > share(3, shiftable=False) + 0.2
    assert share(3, shiftable=True) > share(14, shiftable=True) + 0.2


def test_most_requests_come_from_the_east() -> None:
    net = load_network()
    gen = TaskGenerator(net, random.Random(5))
    origins = [gen.next(_at(11))["origin_hub"] for _ in range(2000)]
    assert sum(net.hubs[h].role == "east" for h in origins) / len(origins) > 0.6


def test_a_replayed_node_reports_the_share_its_tasks_hold() -> None:
    reg = {
        "node_id": "n",
        "hub": "gansu",
        "cluster": "c",
        "province": "Gansu",
        "cpu_milli": 8000,
        "memory_mib": 1000,
        "accelerators": 2,
        "power_kw": 2.0,
        "idle_power_kw": 0.5,
    }
    used = IDLE + Held(2000, 250, 500) + Held(2000, 250, 1000)
    sample = usage_telemetry(reg, 2, used)
    assert (sample["cpu_util"], sample["memory_util"], sample["accelerator_util"]) == (0.5, 0.5, 0.75)
    assert sample["power_kw"] == 0.5 + 1.5 * 0.75
    assert usage_telemetry(reg, 0, used - used)["power_kw"] == 0.5
