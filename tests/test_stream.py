"""The SSE stream: scope filters, bounded backlogs, and live placements of one province over HTTP."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from suanwang.api.scopes import ScopeView
from suanwang.api.server import FANOUT, create_api
from suanwang.api.stream import Client, Fanout
from suanwang.bus import EventProducer, ensure_topics
from suanwang.dispatcher.tiers import parse_scope
from suanwang.schemas.topics import PLACEMENT, Topics
from suanwang.settings import Settings
from suanwang.store import Store
from suanwang.topology import load_network
from tests.evidence import end_offsets, wait_for
from tests.samples import sample_record


def test_a_slow_client_keeps_only_its_newest_events() -> None:
    client = Client(lambda kind, record: True, backlog=10)
    for i in range(25):
        client.put("alert", {"n": i})
    assert len(client.queue) == 10 and client.dropped == 15
    assert asyncio.run(client.next(timeout_s=0.1)) == ("alert", {"n": 15})


def view(scope: str) -> ScopeView:
    network = load_network()
    return ScopeView.of(parse_scope(scope, network), network)


def test_scope_filters_follow_provinces_and_industries() -> None:
    gansu = view("province:Gansu").accepts
    assert gansu("placement", {"province": "Gansu", "cluster": "qingyang"})
    assert not gansu("placement", {"province": "Guangdong", "cluster": "shaoguan"})
    assert gansu("rollup", {"scope_key": "gansu"}) and gansu("alert", {"scope_key": "qingyang-cpu-x86-00001"})
    assert gansu("rollup", {"scope_key": "Gansu"}) and not gansu("rollup", {"scope_key": "Guangdong"})
    assert not gansu("alert", {"scope_key": "shaoguan-cpu-x86-00001"})
    genomics = view("industry:genomics").accepts
    assert genomics("placement", {"province": "Guizhou", "cluster": "guian"})
    assert not genomics("placement", {"province": "Gansu", "cluster": "qingyang"})
    assert view("national").accepts("alert", {"scope_key": "anything"})


def test_scope_queries_select_what_the_stream_filter_accepts(store: Store) -> None:
    """`ScopeView.where` in ClickHouse and `ScopeView.accepts` in Python agree, key by key."""
    keys = ["gansu", "Gansu", "qingyang", "qingyang-cpu-x86-00001", "shaoguan-gpu-h20-00002", "Guangdong", "gba>gansu"]
    for scope in ("national", "province:Gansu", "province:Guangdong", "industry:genomics"):
        where, params = view(scope).where("key")
        rows = store.query(
            f"SELECT k AS scope_key FROM (SELECT arrayJoin({{keys:Array(String)}}) AS k) WHERE {where}",
            {"keys": keys, **params},
        )[1]
        assert [r[0] for r in rows] == [k for k in keys if view(scope).accepts("alert", {"scope_key": k})], scope


def test_stream_sends_a_provinces_placements_live(settings: Settings, store: Store) -> None:
    def placement(task_id: str, province: str) -> dict[str, Any]:
        cluster = {"Guangdong": "shaoguan", "Gansu": "qingyang"}[province]
        return sample_record("Placement") | {"task_id": task_id, "province": province, "cluster": cluster}

    async def scenario() -> tuple[list[dict[str, Any]], int]:
        await ensure_topics(settings)
        producer = EventProducer(settings)
        await producer.start()
        async with TestClient(TestServer(create_api(store, settings))) as http:
            bad = await http.get("/api/stream?scope=province:Atlantis")
            resp = await http.get("/api/stream?scope=province:Gansu")
            assert (await resp.content.readline()) == b"event: ready\n"
            assert json.loads((await resp.content.readline())[6:])["scope"] == "province:Gansu"
            for i in range(3):
                await producer.send(PLACEMENT, placement(f"gd{i}", "Guangdong"))
            await producer.send(PLACEMENT, placement("gs0", "Gansu"))
            await producer.flush()
            got: list[dict[str, Any]] = []

            async def read() -> None:
                while True:
                    line = await resp.content.readline()
                    if line.startswith(b"data: "):
                        got.append(json.loads(line[6:]))

            reader = asyncio.create_task(read())
            fanout, topic = http.server.app[FANOUT], Topics(settings.topic_prefix).name(PLACEMENT)
            ends = await end_offsets(settings, topic)
            # every placement handed out, and every one the client accepted on the wire: a leak would be in `got`
            assert await wait_for(lambda: all(fanout.read_to.get(tp, 0) >= end for tp, end in ends.items()))
            (client,) = fanout.clients
            assert await wait_for(lambda: len(got) == client.accepted)
            reader.cancel()
            resp.close()
        await producer.stop()
        return got, bad.status

    got, bad_status = asyncio.run(scenario())
    assert [p["task_id"] for p in got] == ["gs0"]
    assert bad_status == 422


def test_the_fanout_reads_the_broker_only_while_a_client_listens(settings: Settings) -> None:
    async def scenario() -> None:
        await ensure_topics(settings)
        fanout, producer = Fanout(settings), EventProducer(settings)
        await producer.start()
        reading = asyncio.create_task(fanout.run())
        try:
            assert await wait_for(lambda: fanout.consumer is not None and bool(fanout.consumer.assignment()))
            assert fanout.consumer.paused() == fanout.consumer.assignment() and not fanout.ready.is_set()
            client = Client(lambda kind, record: True)
            fanout.join(client)
            assert await wait_for(fanout.ready.is_set) and not fanout.consumer.paused()
            await producer.send(PLACEMENT, sample_record("Placement") | {"task_id": "listened"})
            await producer.flush()
            assert await wait_for(lambda: client.accepted == 1)
            fanout.leave(client)
            assert await wait_for(lambda: not fanout.ready.is_set())
            assert fanout.consumer.paused() == fanout.consumer.assignment()
        finally:
            reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)
            await producer.stop()

    asyncio.run(scenario())


def test_stream_without_kafka_says_so(store: Store) -> None:
    async def status() -> int:
        async with TestClient(TestServer(create_api(store))) as http:
            return (await http.get("/api/stream")).status

    assert asyncio.run(status()) == 503
