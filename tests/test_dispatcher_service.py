"""The dispatcher service on the real embedded broker: decisions out, bad records to the dead letters."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaProducer

from suanwang.bus import EventProducer, ensure_topics, event
from suanwang.clock import now_ms
from suanwang.dispatcher.service import DispatcherService
from suanwang.schemas.topics import DEADLETTER, PLACEMENT, REGISTRY, REJECTION, TASK_REQUEST, Topics
from suanwang.settings import Settings
from suanwang.simulator.workload import registration
from suanwang.topology import load_network, scaled_nodes
from tests.evidence import wait_for
from tests.fleet import collect, fleet, register


def _request(task_id: str, **over) -> dict:
    return (
        event(
            task_id=task_id,
            tenant="x",
            industry="ai",
            kind="inference",
            origin_hub="gba",
            origin_province="Guangdong",
            data_hub="gba",
            chip_archs=["cuda"],
            chip_models=[],
            cpu_milli=1000,
            memory_mib=1024,
            accelerators=1,
            accelerator_milli=500,
            duration_s=60.0,
            latency_tier_ms=5,
            input_gb=0.1,
            allowed_provinces=[],
            deadline=None,
            budget_yuan=None,
        )
        | over
    )


def test_service_decides_and_dead_letters_garbage(settings: Settings) -> None:
    async def scenario() -> list[tuple[str, dict]]:
        await ensure_topics(settings)
        producer = EventProducer(settings)
        await producer.start()
        network = load_network()
        for spec in scaled_nodes(network, 100):  # registered before the service starts: rebuilt on start
            await producer.send(REGISTRY, registration(spec, network))
        await producer.flush()
        stop = asyncio.Event()
        service = asyncio.create_task(DispatcherService(settings).run(stop))
        raw = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
        await raw.start()
        await raw.send_and_wait(Topics(settings.topic_prefix).name(TASK_REQUEST), b"not avro at all", key=b"junk")
        await raw.stop()
        await producer.send(TASK_REQUEST, _request("good"))
        await producer.send(TASK_REQUEST, _request("bad", chip_archs=["sparc"]))
        await producer.send(TASK_REQUEST, _request("good"))  # redelivered: decided, sent and reserved once
        await producer.flush()
        got = await collect(settings, [PLACEMENT, REJECTION, DEADLETTER], want=3, settle_s=1.5)
        stop.set()
        await service
        await producer.stop()
        return got

    got = asyncio.run(scenario())
    placements = [r for t, r in got if t == PLACEMENT.name]
    rejections = [r for t, r in got if t == REJECTION.name]
    dead = [r for t, r in got if t == DEADLETTER.name]
    assert [p["task_id"] for p in placements] == ["good"]
    assert placements[0]["hub"] == "gba" and placements[0]["accelerator_milli"] == 500
    assert [(r["task_id"], r["reason_code"]) for r in rejections] == [("bad", "UNKNOWN_ARCH")]
    assert len(dead) == 1
    assert dead[0]["payload"] == b"not avro at all" and dead[0]["key"] == b"junk"
    assert dead[0]["source_topic"].endswith("tasks.request") and dead[0]["offset"] >= 0
    assert "magic byte" in dead[0]["error"] and dead[0]["component"] == "dispatcher"
    assert now_ms() - int(placements[0]["request_time"].timestamp() * 1000) < 120_000


def test_a_restarted_dispatcher_keeps_its_decisions_and_the_capacity_still_held(settings: Settings) -> None:
    """One node with one accelerator: what `a` holds across a restart is not promised again until `a` ends."""
    from suanwang.schemas.topics import TASK_LIFECYCLE

    node = dict(
        node_id="solo",
        hub="gba",
        cluster="gba-shaoguan",
        province="Guangdong",
        data_center="dc",
        compute_class="GPU",
        chip_arch="cuda",
        chip_model="H20",
        cpu_milli=64000,
        memory_mib=65536,
        accelerators=1,
        accelerator_memory_mib=98304,
        throughput=4.0,
        power_kw=1.0,
        idle_power_kw=0.2,
        pue=1.3,
        unit_price=0.6,
        active=True,
    )
    whole = dict(accelerators=1, accelerator_milli=1000, cpu_milli=1000, memory_mib=1024)

    async def run_service(requests: list[dict], lifecycle: list[dict], want: int) -> list[tuple[str, dict]]:
        producer = EventProducer(settings)
        await producer.start()
        stop = asyncio.Event()
        service = asyncio.create_task(DispatcherService(settings).run(stop))
        for record in lifecycle:
            await producer.send(TASK_LIFECYCLE, event(**record))
        for req in requests:
            await producer.send(TASK_REQUEST, req)
        await producer.flush()
        got = await collect(settings, [PLACEMENT, REJECTION], want=want, settle_s=1.5)
        stop.set()
        await service
        await producer.stop()
        return got

    async def scenario() -> tuple[list, list, list]:
        await ensure_topics(settings)
        producer = EventProducer(settings)
        await producer.start()
        await producer.send(REGISTRY, event(**node))
        await producer.flush()
        await producer.stop()
        first = await run_service([_request("a", **whole)], [], want=1)
        # restarted: `a` is redelivered (not answered twice) and `b` finds the accelerator taken
        second = await run_service([_request("a", **whole), _request("b", **whole)], [], want=2)
        # restarted again after `a` finished: `c` gets the accelerator
        third = await run_service(
            [_request("c", **whole)], [dict(task_id="a", node_id="solo", state="FINISHED")], want=3
        )
        return first, second, third

    first, second, third = asyncio.run(scenario())
    [(_, a)] = first
    assert [r["event_id"] for t, r in second if r["task_id"] == "a"] == [a["event_id"]]  # one decision, once
    decided = {(r["task_id"], t): r for t, r in second}
    assert decided[("b", REJECTION.name)]["filtered"] == {"capacity": 1}
    c = next(r for t, r in third if r["task_id"] == "c")
    assert c["node_id"] == "solo" and c["accelerator_indices"] == [0]


def test_the_national_dispatcher_publishes_prices_and_every_dispatcher_applies_them(settings: Settings) -> None:
    """Prices on `market.price` each interval for every hub and class; a dispatcher started later applies the
    newest price of each from the compacted topic, and a running one each new price as it comes."""
    from suanwang.dispatcher.stages import Float, Int
    from suanwang.schemas.topics import MARKET_PRICE

    network = load_network()
    regs = [registration(spec, network) for spec in scaled_nodes(network, 60)]
    pairs = {(r["hub"], r["compute_class"]) for r in regs}

    def price(index: float) -> dict:
        return event(
            price_key="gansu/GPU",
            hub="gansu",
            compute_class="GPU",
            price_index=index,
            yuan_per_cu_hour=0.55 * index,
            utilisation=0.95,
            pressure=0.3,
            nodes=3,
            scope="test",
        )

    def gansu_gpu(service: DispatcherService) -> float:
        t = service.core.nodes
        rows = (t.column(Int.HUB) == t.hubs.ids["gansu"]) & (t.column(Int.CLASS) == t.classes.ids["GPU"])
        return float(t.floats[rows, Float.PRICE_INDEX][0])

    async def scenario() -> tuple[list[dict], float, float]:
        await ensure_topics(settings)
        producer = EventProducer(settings)
        await producer.start()
        await register(producer, regs)
        stop = asyncio.Event()
        setter = asyncio.create_task(
            DispatcherService(settings.model_copy(update={"market_interval_s": 0.5})).run(stop)
        )
        prices = await collect(settings, [MARKET_PRICE], want=len(pairs))
        stop.set()
        await setter
        await producer.send(MARKET_PRICE, price(1.5))
        await producer.flush()
        quiet = settings.model_copy(update={"market_interval_s": 3600.0})  # sets no price during the test
        later, stop = DispatcherService(quiet), asyncio.Event()
        running = asyncio.create_task(later.run(stop))
        await asyncio.wait_for(later.ready.wait(), 60)  # the state topics read to their end
        after_start = gansu_gpu(later)
        await producer.send(MARKET_PRICE, price(1.2))
        await producer.flush()
        await wait_for(lambda: gansu_gpu(later) == 1.2, 30)  # a new price is followed as it comes
        stop.set()
        await running
        await producer.stop()
        return [r for _, r in prices], after_start, gansu_gpu(later)

    prices, after_start, after_update = asyncio.run(scenario())
    assert {(p["hub"], p["compute_class"]) for p in prices} == pairs
    assert all(p["scope"] == "national" and 1.0 <= p["price_index"] <= network.market.max_index for p in prices)
    assert (after_start, after_update) == (1.5, 1.2)


def test_a_request_just_after_its_nodes_registration_is_placed_once_the_registry_is_read(
    settings: Settings,
) -> None:
    """Registrations and requests come on two consumers: with what the registry's consumer reads held back,
    the request finds no node; the rejection waits for the registry to be applied to its end, decides again."""
    regs = [r for r in fleet(40) if r["hub"] == "gba" and r["chip_arch"] == "cuda"][:1]

    known_at_first_decision: list[int] = []

    async def scenario() -> list[tuple[str, dict]]:
        await ensure_topics(settings)
        stop = asyncio.Event()
        service = DispatcherService(settings)
        running = asyncio.create_task(service.run(stop))
        await asyncio.wait_for(service.ready.wait(), 60)
        assert not service.ends.assignment()  # it only asks end offsets: no fetch of its own to wait behind
        gate, apply, catch_up = asyncio.Event(), service._on_state, service._catch_up

        async def held_apply(topic: str, msg) -> None:  # the registry's consumer holds what it reads
            await gate.wait()
            await apply(topic, msg)

        async def open_then_catch_up() -> bool:
            known_at_first_decision.append(service.core.nodes.size)
            gate.set()
            return await catch_up()

        service._on_state, service._catch_up = held_apply, open_then_catch_up
        producer = EventProducer(settings)
        await producer.start()
        await register(producer, regs)
        await producer.send(TASK_REQUEST, _request("fresh", chip_models=[regs[0]["chip_model"]]))
        await producer.flush()
        got = await collect(settings, [PLACEMENT, REJECTION], want=1, settle_s=1.0)
        gate.set()  # lets the service stop whatever it decided
        stop.set()
        await running
        await producer.stop()
        return got

    got = asyncio.run(scenario())
    assert known_at_first_decision == [0]  # decided once before its node was known, then again
    assert [(t, r["task_id"], r.get("node_id")) for t, r in got] == [(PLACEMENT.name, "fresh", regs[0]["node_id"])]
