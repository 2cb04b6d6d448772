"""Contract records as OpenAPI 3.0 schemas, derived from their Avro schemas: the API's task body and the rows
it returns from the history are described by the contract, never by a second hand-written copy."""

from __future__ import annotations

from typing import Any

from suanwang.schemas.codec import schema_sources

SCALARS = {"long": "integer", "int": "integer", "double": "number", "float": "number", "boolean": "boolean"}


def field_schema(avro_type: Any, enums: bool = True) -> dict[str, Any]:
    """One Avro type as a schema; `enums` False gives an enum as a plain string (rows stored before a symbol
    existed read '' from ClickHouse)."""
    if isinstance(avro_type, list):
        branches = [field_schema(t, enums) for t in avro_type if t != "null"]
        schema = branches[0] if len(branches) == 1 else {"oneOf": branches}
        return {**schema, "nullable": True} if "null" in avro_type else schema
    if isinstance(avro_type, dict):
        kind = avro_type["type"]
        if avro_type.get("logicalType") == "timestamp-millis":
            return {"oneOf": [{"type": "integer"}, {"type": "string", "format": "date-time"}]}
        if kind == "array":
            return {"type": "array", "items": field_schema(avro_type["items"], enums)}
        if kind == "map":
            return {"type": "object", "additionalProperties": field_schema(avro_type["values"], enums)}
        if kind == "enum":
            return {"type": "string", **({"enum": list(avro_type["symbols"])} if enums else {})}
        if kind == "record":
            return record_schema(avro_type["fields"], enums)
        return field_schema(kind, enums)
    return {"type": SCALARS.get(avro_type, "string")}


def record_schema(fields: list[dict[str, Any]], enums: bool = True, closed: bool = True) -> dict[str, Any]:
    """A record's fields as an object schema, each with its doc; `closed` forbids other properties."""
    properties = {f["name"]: {**field_schema(f["type"], enums), "description": f.get("doc", "")} for f in fields}
    return {"type": "object", "properties": properties, "additionalProperties": not closed}


def row_schema(record: str) -> dict[str, Any]:
    """A history row of a contract record's table: its fields (enums as strings), and the columns the sink
    adds (where it read the row, when it stored it) beside them."""
    return record_schema(schema_sources()[record]["fields"], enums=False, closed=False)
