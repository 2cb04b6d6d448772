"""A task request from JSON, checked field by field against the TaskRequest Avro schema.

Every problem is reported at once, each naming its field, so a client fixes its request in one round.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

from fastavro.validation import validate

from suanwang.bus import event
from suanwang.schemas.codec import parsed_schemas, schema_sources
from suanwang.schemas.jsonschema import record_schema

SET_BY_SERVER = {
    "event_id", "event_time", "escalated_from", "escalation_reason", "attempt", "retry_of", "not_before", "avoid_nodes",
}  # fmt: skip


class BadRequest(ValueError):
    """Field name -> what is wrong with it."""

    def __init__(self, problems: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in problems.items()))
        self.problems = problems


def task_fields() -> list[dict[str, Any]]:
    """The TaskRequest fields a client may send."""
    return [f for f in schema_sources()["TaskRequest"]["fields"] if f["name"] not in SET_BY_SERVER]


def task_request(body: Any) -> dict[str, Any]:
    """The request record for a JSON body; BadRequest naming every bad field. A missing task_id is made up."""
    if not isinstance(body, dict):
        raise BadRequest({"(body)": f"must be a JSON object, not {type(body).__name__}"})
    fields = {f["name"]: f for f in task_fields()}
    problems = {name: "is not a TaskRequest field" for name in body if name not in fields}
    record: dict[str, Any] = {"task_id": f"api-{os.urandom(8).hex()}"}
    parsed = {f["name"]: f["type"] for f in parsed_schemas()["TaskRequest"]["fields"]}
    for name, field in fields.items():
        if name not in body:
            if "default" not in field and name != "task_id":
                problems[name] = "is required"
            elif "default" in field:
                record[name] = field["default"]
            continue
        try:
            value = _timestamp(body[name]) if name == "deadline" else body[name]
        except ValueError as exc:
            problems[name] = f"{body[name]!r} {exc}"
            continue
        if isinstance(value, float) and value.is_integer() and _wants_integer(parsed[name]):
            value = int(value)
        if isinstance(value, bool) and _wants_integer(parsed[name]):
            problems[name] = f"{body[name]!r} is not a number"
            continue
        if not validate(value, parsed[name], raise_errors=False):
            problems[name] = f"{body[name]!r} does not fit {_describe(field['type'])}"
            continue
        record[name] = value
    if problems:
        raise BadRequest(problems)
    return event(**record)


def _timestamp(value: Any) -> Any:
    """Deadlines may be epoch milliseconds or ISO 8601 text; ValueError for a time no Avro reader can give back
    as a date (before year 1 or after 9999 in UTC), which the writer would take all the same."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value  # reported as not fitting
    if isinstance(value, datetime) or (isinstance(value, int | float) and not isinstance(value, bool)):
        try:
            ms = value.timestamp() * 1000 if isinstance(value, datetime) else value
            datetime.fromtimestamp(ms / 1000, tz=UTC)
        except (OverflowError, ValueError, OSError):
            raise ValueError("is not a time between the years 1 and 9999") from None
    return value


def _wants_integer(avro_type: Any) -> bool:
    types = avro_type if isinstance(avro_type, list) else [avro_type]
    return any(t in ("int", "long") or (isinstance(t, dict) and t.get("type") == "long") for t in types)


def _describe(avro_type: Any) -> str:
    if isinstance(avro_type, list):
        return " or ".join(_describe(t) for t in avro_type)
    if isinstance(avro_type, dict):
        if avro_type.get("logicalType") == "timestamp-millis":
            return "a timestamp (epoch ms or ISO 8601)"
        if avro_type["type"] == "array":
            return f"a list of {_describe(avro_type['items'])}"
        if avro_type["type"] == "enum":
            return f"one of {', '.join(avro_type['symbols'])}"
        return _describe(avro_type["type"])
    return {"long": "an integer", "int": "an integer", "double": "a number", "string": "a string"}.get(
        avro_type, avro_type
    )


def json_schema() -> dict[str, Any]:
    """The request body as a schema, from the TaskRequest Avro schema less what the server sets."""
    required = [f["name"] for f in task_fields() if "default" not in f and f["name"] != "task_id"]
    return {**record_schema(task_fields()), "required": required}
