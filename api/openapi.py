"""The OpenAPI document, generated from the route table: each route's summary and answers, its query and body
models (`api.models`, the ones the handlers validate with), and the task body from the Avro schema."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from suanwang.api.models import Error, Query
from suanwang.api.submit import json_schema
from suanwang.schemas.jsonschema import row_schema

TASK_BODY = "TaskRequest"  # a body taken from the Avro contract, not a pydantic model
ERROR = {"$ref": "#/components/schemas/Error"}
SCHEMA_REF = "#/components/schemas/{model}"


@dataclass(frozen=True)
class Operation:
    """What the document says of one route: `answers` maps each status to its meaning (the first is success,
    with `returns`: an object, an array of objects, or `text` of `media`); `rows` names the contract record
    whose stored rows an array holds."""

    summary: str
    answers: dict[int, str]
    query: type[Query] | None = None
    body: type[BaseModel] | str | None = None
    returns: str = "object"
    rows: str | None = None
    media: str = "application/json"


@dataclass(frozen=True)
class Route:
    """One route of the API: who may call it (None: public) and, for an API operation, its `doc`."""

    method: str
    path: str
    handler: Any
    roles: tuple[str, ...] | None
    doc: Operation | None = None


def openapi_document(routes: Iterable[Route]) -> dict[str, Any]:
    """The whole document; a bearer token is required exactly on the routes that have roles."""
    paths: dict[str, dict[str, Any]] = {}
    schemas: dict[str, Any] = {"Error": _openapi_schema(Error.model_json_schema()), TASK_BODY: json_schema()}
    for route in routes:
        if route.doc is not None:
            paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, schemas)
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "suanwang 算网",
            "version": "0.1",
            "description": "Monitoring and dispatch of the national compute network.",
        },
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }


def _operation(route: Route, schemas: dict[str, Any]) -> dict[str, Any]:
    doc = route.doc
    assert doc is not None
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in re.findall(r"{(\w+)}", route.path)
    ] + (_parameters(doc.query) if doc.query else [])
    success, *errors = doc.answers.items()
    operation: dict[str, Any] = {
        "summary": doc.summary,
        "responses": {str(success[0]): _success(success[1], doc, schemas)}
        | {str(status): _answer(meaning, ERROR) for status, meaning in errors},
    }
    if parameters:
        operation["parameters"] = parameters
    if doc.body is not None:
        name = doc.body if isinstance(doc.body, str) else doc.body.__name__
        if not isinstance(doc.body, str):
            schemas[name] = _openapi_schema(doc.body.model_json_schema())
        body = {"schema": {"$ref": SCHEMA_REF.format(model=name)}}
        operation["requestBody"] = {"required": True, "content": {"application/json": body}}
    if route.roles is not None:
        operation["security"] = [{"bearer": []}]
        operation["responses"]["401"] = _answer("No token, or an unknown one", ERROR)
        operation["responses"]["403"] = _answer("The token's role or scopes do not allow it", ERROR)
    return operation


def _parameters(model: type[Query]) -> list[dict[str, Any]]:
    """A query model's fields as OpenAPI parameters (by their names on the wire)."""
    schema = model.model_json_schema(by_alias=True)
    out = []
    for name, prop in schema["properties"].items():
        description = prop.pop("description", None)
        value = {k: v for k, v in _openapi_schema(prop).items() if k != "nullable"}  # None: left out of the query
        parameter = {"name": name, "in": "query", "schema": value}
        out.append(parameter | ({"description": description} if description else {}))
    return out


def _openapi_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """JSON Schema as OpenAPI 3.0 takes it: `anyOf [x, null]` becomes a nullable x, `const` a one-value enum."""
    schema = {k: v for k, v in schema.items() if k != "title"}
    branches = schema.pop("anyOf", None)
    if branches is not None:
        kept = [b for b in branches if b.get("type") != "null"]
        inner = _openapi_schema(kept[0]) if len(kept) == 1 else {"oneOf": [_openapi_schema(b) for b in kept]}
        schema = {**inner, **schema, "nullable": True} if len(kept) < len(branches) else {**inner, **schema}
    if "const" in schema:
        schema["enum"] = [schema.pop("const")]
    if "properties" in schema:
        schema["properties"] = {k: _openapi_schema(v) for k, v in schema["properties"].items()}
    if isinstance(schema.get("additionalProperties"), dict):
        schema["additionalProperties"] = _openapi_schema(schema["additionalProperties"])
    if schema.get("default") is None:
        schema.pop("default", None)
    return schema


def _success(meaning: str, doc: Operation, schemas: dict[str, Any]) -> dict[str, Any]:
    if doc.returns == "text":
        return {"description": meaning, "content": {doc.media: {"schema": {"type": "string"}}}}
    items: dict[str, Any] = {"type": "object"}
    if doc.rows is not None:
        schemas[f"{doc.rows}Row"] = row_schema(doc.rows)
        items = {"$ref": SCHEMA_REF.format(model=f"{doc.rows}Row")}
    return _answer(meaning, {"type": "array", "items": items} if doc.returns == "array" else items)


def _answer(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}
