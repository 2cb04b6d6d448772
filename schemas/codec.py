"""Avro records in the Confluent wire format: magic byte 0, 4-byte big-endian schema id, body.

Schema ids come from a Confluent-compatible schema registry when one is configured; otherwise from
the local registry, where a schema's id is the first 31 bits of the SHA-256 of its Parsing Canonical
Form: stable across runs and machines, and new whenever the schema changes.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
from functools import cache
from importlib import resources
from typing import Any

import fastavro
from fastavro.schema import to_parsing_canonical_form

from suanwang.errors import SuanwangError

MAGIC = 0
_HEADER = struct.Struct(">bI")


class DecodeError(ValueError):
    """A payload that is not a record of a known schema in the wire format."""


@cache
def schema_sources() -> dict[str, dict[str, Any]]:
    """Every .avsc shipped in schemas/avro, by record name."""
    folder = resources.files("suanwang.schemas").joinpath("avro")
    out = {}
    for entry in folder.iterdir():
        if entry.name.endswith(".avsc"):
            source = json.loads(entry.read_text(encoding="utf-8"))
            out[source["name"]] = source
    return out


@cache
def parsed_schemas() -> dict[str, Any]:
    return {name: fastavro.parse_schema(src) for name, src in schema_sources().items()}


def local_schema_id(parsed_schema: Any) -> int:
    """The local registry's id of a schema (see module docstring)."""
    digest = hashlib.sha256(to_parsing_canonical_form(parsed_schema).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


class Codec:
    """Encodes and decodes the contract's records; one instance per process."""

    def __init__(
        self, schema_registry: str | dict[str, str] | None = None, topic_subjects: dict[str, str] | None = None
    ) -> None:
        """`schema_registry`: its URL, or a SchemaRegistryClient configuration (with auth and TLS); None: local ids."""
        self._schemas = parsed_schemas()
        self._registry = None
        if schema_registry:
            conf = {"url": schema_registry} if isinstance(schema_registry, str) else schema_registry
            self._ids = self._register(conf, topic_subjects or {})
        else:
            self._ids = {name: local_schema_id(schema) for name, schema in self._schemas.items()}
        self._by_id = {schema_id: name for name, schema_id in self._ids.items()}
        self._writers: dict[int, Any] = {}

    def _register(self, conf: dict[str, str], topic_subjects: dict[str, str]) -> dict[str, int]:
        """Registers each schema under its topic's `<topic>-value` subject (TopicNameStrategy)."""
        from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

        url = conf["url"]
        self._registry = SchemaRegistryClient(conf)
        ids = {}
        for name, source in schema_sources().items():
            subject = topic_subjects.get(name, f"suanwang.{name}") + "-value"
            try:
                ids[name] = self._registry.register_schema(subject, Schema(json.dumps(source), "AVRO"))
            except Exception as exc:  # the client raises several unrelated types
                raise SuanwangError(
                    f"schema registry at {url} refused schema {name} ({exc}); check SUANWANG_SCHEMA_REGISTRY_URL"
                ) from exc
        return ids

    def schema_id(self, schema: str) -> int:
        return self._ids[schema]

    def encode(self, schema: str, record: dict[str, Any]) -> bytes:
        buf = io.BytesIO()
        buf.write(_HEADER.pack(MAGIC, self._ids[schema]))
        fastavro.schemaless_writer(buf, self._schemas[schema], record)
        return buf.getvalue()

    def decode_as(self, expected: str, payload: bytes | None) -> dict[str, Any]:
        """The record, which must be of schema `expected` (the one its topic carries)."""
        schema, record = self.decode(payload)
        if schema != expected:
            raise DecodeError(f"a {schema} record where {expected} was expected")
        return record

    def decode(self, payload: bytes | None) -> tuple[str, dict[str, Any]]:
        """The schema name and the record; DecodeError saying what is wrong otherwise."""
        if payload is None or len(payload) < _HEADER.size:
            size = 0 if payload is None else len(payload)
            raise DecodeError(f"payload of {size} bytes is shorter than the 5-byte header")
        magic, schema_id = _HEADER.unpack_from(payload)
        if magic != MAGIC:
            raise DecodeError(f"magic byte is {magic}, expected {MAGIC}")
        name = self._by_id.get(schema_id)
        if name is None:
            return self._decode_foreign(schema_id, payload)
        try:
            record = fastavro.schemaless_reader(io.BytesIO(payload[_HEADER.size :]), self._schemas[name], None)
        except Exception as exc:  # fastavro raises EOFError, ValueError, UnicodeDecodeError, ...
            raise DecodeError(f"body does not match schema {name} (id {schema_id}): {exc!r}") from exc
        return name, record

    def _decode_foreign(self, schema_id: int, payload: bytes) -> tuple[str, dict[str, Any]]:
        """A record written with another version of one of our schemas, resolved through the registry."""
        if self._registry is None:
            raise DecodeError(f"unknown schema id {schema_id} and no schema registry configured")
        writer = self._writers.get(schema_id)
        if writer is None:
            try:
                source = json.loads(self._registry.get_schema(schema_id).schema_str)
            except Exception as exc:
                raise DecodeError(f"schema id {schema_id} not found in the registry: {exc}") from exc
            writer = self._writers[schema_id] = fastavro.parse_schema(source)
        name = writer["name"].split(".")[-1]
        if name not in self._schemas:
            raise DecodeError(f"schema id {schema_id} is {writer['name']}, not part of the contract")
        try:
            record = fastavro.schemaless_reader(io.BytesIO(payload[_HEADER.size :]), writer, self._schemas[name])
        except Exception as exc:
            raise DecodeError(f"body does not match schema {name} (id {schema_id}): {exc!r}") from exc
        return name, record
