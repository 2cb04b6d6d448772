"""The SUANWANG_SCHEMA_REGISTRY_URL path: confluent-kafka's client against the Confluent REST API.

No Confluent-compatible registry (Confluent, Karapace, Apicurio, Redpanda) can be installed from this
machine's package registries, so the server here is the part of the Confluent REST API the client uses
(register under a subject, fetch by global id), with the registry's own rule that an identical schema
keeps its id across subjects. The client, the codec and the Kafka round trip are the real ones.
"""

from __future__ import annotations

import asyncio
import io
import json
import struct
import threading
from collections.abc import Iterator

import fastavro
import pytest
from aiohttp import web
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

from suanwang.bus import EventProducer, contract_consumer, ensure_topics, make_codec
from suanwang.errors import SuanwangError
from suanwang.schemas.codec import Codec, DecodeError, schema_sources
from suanwang.schemas.topics import ALERT, ALL_TOPICS, Topics
from suanwang.settings import Settings
from tests.samples import sample_record


class RegistryServer:
    """Confluent REST endpoints `POST /subjects/{s}/versions` and `GET /schemas/ids/{id}`, on a thread."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.subjects: dict[str, list[int]] = {}
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def canonical(self, schema_str: str) -> str:
        return json.dumps(fastavro.schema.to_parsing_canonical_form(fastavro.parse_schema(json.loads(schema_str))))

    async def register(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("schemaType", "AVRO") != "AVRO":
            return web.json_response({"error_code": 42201, "message": "only AVRO"}, status=422)
        key = self.canonical(body["schema"])
        schema_id = self.ids.setdefault(key, 1000 + len(self.ids))
        versions = self.subjects.setdefault(request.match_info["subject"], [])
        if schema_id not in versions:
            versions.append(schema_id)
        return web.json_response({"id": schema_id})

    async def by_id(self, request: web.Request) -> web.Response:
        wanted = int(request.match_info["id"])
        for key, schema_id in self.ids.items():
            if schema_id == wanted:
                return web.json_response({"schema": json.loads(key), "schemaType": "AVRO"})
        return web.json_response({"error_code": 40403, "message": "Schema not found"}, status=404)

    def __enter__(self) -> RegistryServer:
        self._thread.start()
        app = web.Application()
        app.router.add_post("/subjects/{subject}/versions", self.register)
        app.router.add_get("/schemas/ids/{id}", self.by_id)
        runner = web.AppRunner(app)

        async def start() -> str:
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            return f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"

        self._runner = runner
        self.url = asyncio.run_coroutine_threadsafe(start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture()
def registry() -> Iterator[RegistryServer]:
    with RegistryServer() as server:
        yield server


def test_every_schema_is_registered_under_its_topic_value_subject(registry: RegistryServer, settings: Settings) -> None:
    codec = make_codec(settings.model_copy(update={"schema_registry_url": registry.url}))
    topics = Topics(settings.topic_prefix)
    assert sorted(registry.subjects) == sorted(f"{topics.name(spec)}-value" for spec in ALL_TOPICS)
    for spec in ALL_TOPICS:
        [registered] = registry.subjects[f"{topics.name(spec)}-value"]
        assert codec.schema_id(spec.schema) == registered
    payload = codec.encode("Alert", sample_record("Alert"))
    assert int.from_bytes(payload[1:5], "big") == registry.subjects[f"{topics.name(ALERT)}-value"][0]


def test_a_record_written_by_a_newer_producer_is_resolved_through_the_registry(registry: RegistryServer) -> None:
    """A producer on a later Alert schema (one more field) registers it; we read it with ours."""
    ours = Codec(registry.url)
    newer = json.loads(json.dumps(schema_sources()["Alert"]))
    newer["fields"].append({"name": "runbook_url", "type": "string", "default": ""})
    newer_id = SchemaRegistryClient({"url": registry.url}).register_schema(
        "suanwang.monitor.alert-value", Schema(json.dumps(newer), "AVRO")
    )
    assert newer_id != ours.schema_id("Alert")
    record = {**sample_record("Alert"), "runbook_url": "https://runbooks/overheat"}
    buf = io.BytesIO()
    buf.write(struct.pack(">bI", 0, newer_id))
    fastavro.schemaless_writer(buf, fastavro.parse_schema(newer), record)
    name, decoded = ours.decode(buf.getvalue())
    assert name == "Alert"
    assert decoded["alert_key"] == record["alert_key"]
    assert "runbook_url" not in decoded
    with pytest.raises(DecodeError, match="schema id 999999 not found in the registry"):
        ours.decode(struct.pack(">bI", 0, 999999) + b"\x00")


@pytest.mark.slow  # seconds of subprocesses or timeouts: make test runs it, make check does not
def test_an_unreachable_registry_is_one_clear_error() -> None:
    with pytest.raises(SuanwangError, match="schema registry at http://127.0.0.1:9 refused schema"):
        Codec("http://127.0.0.1:9")


def test_records_cross_kafka_with_registry_ids(registry: RegistryServer, settings: Settings) -> None:
    """A producer's codec and a consumer's own codec agree through the registry alone."""
    asyncio.run(_round_trip(registry, settings))


async def _round_trip(registry: RegistryServer, settings: Settings) -> None:
    with_registry = settings.model_copy(update={"schema_registry_url": registry.url})
    await ensure_topics(with_registry)
    producer = EventProducer(with_registry)
    await producer.start()
    record = sample_record("Alert")
    await producer.send(ALERT, record)
    await producer.flush()
    await producer.stop()
    reader = make_codec(with_registry)
    consumer = contract_consumer(with_registry, [ALERT], None)
    await consumer.start()
    try:
        batches = await consumer.getmany(timeout_ms=10_000)
        [msg] = [m for messages in batches.values() for m in messages]
    finally:
        await consumer.stop()
    assert int.from_bytes(msg.value[1:5], "big") in registry.ids.values()
    assert reader.decode_as("Alert", msg.value)["alert_key"] == record["alert_key"]
