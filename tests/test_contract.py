"""The event contract: schemas parse and round-trip, ids are stable, bad payloads fail clearly."""

from __future__ import annotations

import struct
from datetime import datetime

import pytest

from suanwang.schemas.codec import Codec, DecodeError, local_schema_id, parsed_schemas, schema_sources
from suanwang.schemas.topics import ALL_TOPICS, Topics
from tests.samples import sample_record

SCHEMAS = sorted(schema_sources())


def test_every_topic_has_a_schema_and_every_schema_a_topic() -> None:
    assert sorted({t.schema for t in ALL_TOPICS}) == SCHEMAS
    assert len(SCHEMAS) == 15


@pytest.mark.parametrize("name", SCHEMAS)
def test_schema_is_in_the_namespace_with_event_id_and_time(name: str) -> None:
    source = schema_sources()[name]
    assert source["namespace"] == "suanwang"
    fields = {f["name"]: f["type"] for f in source["fields"]}
    assert fields["event_id"] == "string"
    assert fields["event_time"] == {"type": "long", "logicalType": "timestamp-millis"}


@pytest.mark.parametrize("name", SCHEMAS)
def test_round_trip_in_confluent_wire_format(name: str) -> None:
    codec = Codec()
    record = sample_record(name)
    payload = codec.encode(name, record)
    magic, schema_id = struct.unpack(">bI", payload[:5])
    assert (magic, schema_id) == (0, codec.schema_id(name))
    decoded_name, decoded = codec.decode(payload)
    assert decoded_name == name

    def as_sent(got: object) -> object:
        if isinstance(got, datetime):
            return int(got.timestamp() * 1000)
        return [as_sent(g) for g in got] if isinstance(got, list) else got

    for field, value in record.items():
        assert as_sent(decoded[field]) == value, field


def test_local_ids_are_stable_and_distinct() -> None:
    first, second = Codec(), Codec()
    ids = {n: first.schema_id(n) for n in SCHEMAS}
    assert ids == {n: second.schema_id(n) for n in SCHEMAS}
    assert len(set(ids.values())) == len(ids)
    assert all(0 < i < 2**31 for i in ids.values())
    assert ids["Placement"] == local_schema_id(parsed_schemas()["Placement"])


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\x00\x01", "shorter than the 5-byte header"),
        (b"\x01\x00\x00\x00\x01abc", "magic byte is 1"),
        (b"\x00\x00\x00\x00\x01abc", "unknown schema id 1"),
    ],
)
def test_bad_payloads_say_what_is_wrong(payload: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        Codec().decode(payload)


def test_decode_as_refuses_a_record_of_another_schema() -> None:
    codec = Codec()
    payload = codec.encode("Alert", sample_record("Alert"))
    assert codec.decode_as("Alert", payload)["alert_key"] == "s"
    with pytest.raises(DecodeError, match="a Alert record where Placement was expected"):
        codec.decode_as("Placement", payload)


def test_message_keys_come_from_the_topic_key_field() -> None:
    from suanwang.schemas.topics import DEADLETTER, TELEMETRY

    assert TELEMETRY.key_of({"node_id": "n-1"}) == b"n-1"
    assert DEADLETTER.key_of({"anything": 1}) is None


def test_truncated_body_names_the_schema() -> None:
    codec = Codec()
    payload = codec.encode("Placement", sample_record("Placement"))
    with pytest.raises(DecodeError, match="does not match schema Placement"):
        codec.decode(payload[:20])


def test_topic_names_carry_the_prefix_and_resolve_back() -> None:
    topics = Topics("x.")
    for spec in ALL_TOPICS:
        assert topics.spec(topics.name(spec)) is spec
    assert topics.name(ALL_TOPICS[0]) == "x.registry.node"
    assert [s.name for s in ALL_TOPICS if s.compacted] == ["registry.node", "market.price"]
