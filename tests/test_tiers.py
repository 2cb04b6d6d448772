"""Dispatch tiers: scopes parse with clear errors, every node has one owner, and a provincial and the
national dispatcher running at once on the real broker never place on each other's nodes; what the
province cannot place is escalated with its reason and placed by the national one."""

from __future__ import annotations

import asyncio

import pytest

from suanwang.bus import EventProducer, ensure_topics
from suanwang.dispatcher.service import DispatcherService
from suanwang.dispatcher.tiers import Scope, Tiers, parse_scope
from suanwang.errors import SuanwangError
from suanwang.schemas.topics import PLACEMENT, REJECTION, TASK_REQUEST, Topics
from suanwang.settings import Settings
from suanwang.topology import load_network
from tests.fleet import collect, fleet, register
from tests.test_dispatcher_service import _request


def test_scopes_parse_or_say_what_is_allowed() -> None:
    network = load_network()
    assert parse_scope("national", network) == Scope("national")
    assert str(parse_scope("province:Gansu", network)) == "province:Gansu"
    assert parse_scope("province:Inner Mongolia", network).topic_suffix == ".province.inner-mongolia"
    with pytest.raises(SuanwangError, match="no province 'Atlantis'; known: .*Gansu"):
        parse_scope("province:Atlantis", network)
    with pytest.raises(SuanwangError, match="not national, province:<name> or industry:<name>"):
        parse_scope("city:Lanzhou", network)


def test_each_node_has_one_owner_and_overlapping_tiers_are_refused() -> None:
    network = load_network()
    tiers = Tiers("province:Gansu, industry:genomics", network)
    owners = {str(tiers.owner(reg)) for reg in fleet(300)}
    assert owners == {"national", "province:Gansu", "industry:genomics"}
    gansu = [reg for reg in fleet(300) if str(tiers.owner(reg)) == "province:Gansu"]
    assert gansu and all(reg["province"] == "Gansu" for reg in gansu)
    with pytest.raises(SuanwangError, match="lies in delegated province:Guizhou"):
        Tiers("province:Guizhou,industry:genomics", network)  # genomics owns Gui'an, in Guizhou
    with pytest.raises(SuanwangError, match="not in SUANWANG_DISPATCH_TIERS"):
        Tiers("", network).check_runs(Scope("province", "Gansu"))
    assert Topics("p.").spec("p.tasks.request.province.gansu") is TASK_REQUEST


def test_province_and_national_run_at_once_without_sharing_capacity(settings: Settings) -> None:
    settings = settings.model_copy(update={"dispatch_tiers": "province:Gansu"})
    province = settings.model_copy(update={"dispatcher_scope": "province:Gansu"})
    topics = Topics(settings.topic_prefix)
    regs = fleet(200)
    gansu_nodes = {r["node_id"] for r in regs if r["province"] == "Gansu"}
    cpu = {"chip_archs": ["x86_64"], "accelerators": 0, "latency_tier_ms": None, "origin_hub": "gansu",
           "data_hub": "gansu", "origin_province": "Gansu"}  # fmt: skip
    to_province = [_request(f"p{i}", **cpu) for i in range(20)]
    to_province.append(_request("abroad", **cpu, allowed_provinces=["Guangdong"]))  # residency: not in Gansu
    to_national = [_request(f"n{i}", **cpu) for i in range(20)]  # Gansu is cheapest, but not the national's

    async def scenario() -> list[tuple[str, dict]]:
        await ensure_topics(settings)
        producer = EventProducer(settings)
        await producer.start()
        await register(producer, regs)
        stop = asyncio.Event()
        services = [asyncio.create_task(DispatcherService(s).run(stop)) for s in (settings, province)]
        province_topic = topics.requests(parse_scope("province:Gansu", load_network()).topic_suffix)
        for req in to_province:
            await producer.send(TASK_REQUEST, req, topic=province_topic)
        for req in to_national:
            await producer.send(TASK_REQUEST, req)
        await producer.flush()
        # every placement, the one escalation, and the national topic's requests with the escalated one
        want = len(to_province) + len(to_national) + 1 + len(to_national) + 1
        got = await collect(settings, [PLACEMENT, REJECTION, TASK_REQUEST], want=want, timeout_s=90)
        stop.set()
        await asyncio.gather(*services)
        await producer.stop()
        return got

    got = asyncio.run(scenario())
    placements = {r["task_id"]: r for name, r in got if name == PLACEMENT.name}
    assert set(placements) == {r["task_id"] for r in to_province + to_national}
    for task_id, p in placements.items():
        if task_id.startswith("p"):
            assert p["scope"] == "province:Gansu" and p["node_id"] in gansu_nodes
        else:  # the national tier, including the escalated task, never touches the province's nodes
            assert p["scope"] == "national" and p["node_id"] not in gansu_nodes
    assert placements["abroad"]["province"] == "Guangdong"
    escalation = [r for name, r in got if name == REJECTION.name]
    assert [(r["task_id"], r["reason_code"], r["scope"]) for r in escalation] == [
        ("abroad", "ESCALATED", "province:Gansu")
    ]
    passed_on = [r for name, r in got if name == TASK_REQUEST.name and r["escalated_from"]]
    assert [(r["task_id"], r["escalated_from"]) for r in passed_on] == [("abroad", "province:Gansu")]
    assert passed_on[0]["escalation_reason"].startswith("province:Gansu: 0/")
    assert passed_on[0]["escalation_reason"] == escalation[0]["reason"]
