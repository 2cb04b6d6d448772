"""A valid record for every contract schema, built from the schema itself."""

from __future__ import annotations

from typing import Any

from suanwang.schemas.codec import schema_sources


def value_for(avro_type: Any) -> Any:
    if isinstance(avro_type, list):  # a union: the first non-null branch
        return value_for(next(t for t in avro_type if t != "null"))
    if isinstance(avro_type, dict):
        kind = avro_type["type"]
        if avro_type.get("logicalType") == "timestamp-millis":
            return 1_795_000_000_000
        if kind == "enum":
            return avro_type["symbols"][0]
        if kind == "array":
            return [value_for(avro_type["items"])]
        if kind == "map":
            return {"k": value_for(avro_type["values"])}
        if kind == "record":
            return sample(avro_type)
        return value_for(kind)
    return {
        "string": "s",
        "long": 7,
        "int": 3,
        "double": 0.5,
        "float": 0.5,
        "boolean": True,
        "bytes": b"\x01",
        "null": None,
    }[avro_type]


def sample(source: dict[str, Any]) -> dict[str, Any]:
    return {f["name"]: value_for(f["type"]) for f in source["fields"]}


def sample_record(schema: str) -> dict[str, Any]:
    return sample(schema_sources()[schema])
