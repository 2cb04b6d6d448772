"""The OpenAPI document of the API, served at /api/openapi.json; the task body comes from the Avro schema."""

from __future__ import annotations

from typing import Any

from suanwang.api.common import HEALTH, WINDOW_LENGTHS
from suanwang.api.submit import json_schema
from suanwang.schemas.values import COMPUTE_CLASSES
from suanwang.streams.windows import SCOPE_KINDS

ERROR = {"$ref": "#/components/schemas/Error"}
PUBLIC = ("/healthz", "/readyz", "/api/openapi.json")
SCOPE = {
    "name": "scope",
    "in": "query",
    "schema": {"type": "string", "default": "national"},
    "description": "national, province:<name> or industry:<name>",
}


def _answer(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    body = {"content": {"application/json": {"schema": schema}}} if schema else {}
    return {"description": description, **body}


def _listing(summary: str) -> dict[str, Any]:
    limit = {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}
    return {
        "get": {
            "summary": summary,
            "parameters": [limit],
            "responses": {
                "200": _answer("Newest first", {"type": "array", "items": {"type": "object"}}),
                "422": _answer("A bad limit", ERROR),
            },
        }
    }


def _filtered(summary: str, params: dict[str, list[str] | None]) -> dict[str, Any]:
    """A listing with optional filters: a value outside `enum` is a 422."""
    listing = _listing(summary)
    for name, allowed in params.items():
        schema: dict[str, Any] = {"type": "string", **({"enum": allowed} if allowed else {})}
        listing["get"]["parameters"].append({"name": name, "in": "query", "schema": schema})
    return listing


def _scoped(operation: dict[str, Any]) -> dict[str, Any]:
    """An operation that takes `scope`; an unknown scope is a 422."""
    operation["get"].setdefault("parameters", []).append(SCOPE)
    operation["get"]["responses"]["422"] = _answer("A bad limit or an unknown scope", ERROR)
    return operation


def openapi_document() -> dict[str, Any]:
    """The document, with a bearer token required on every route but the public ones."""
    document = _document()
    document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    for path, item in document["paths"].items():
        if path in PUBLIC:
            continue
        for operation in item.values():
            operation["security"] = [{"bearer": []}]
            operation["responses"]["401"] = _answer("No token, or an unknown one", ERROR)
            operation["responses"]["403"] = _answer("The token's role or scopes do not allow it", ERROR)
    return document


def _document() -> dict[str, Any]:
    ok = {"type": "object"}
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "suanwang 算网",
            "version": "0.1",
            "description": "Monitoring and dispatch of the national compute network.",
        },
        "paths": {
            "/healthz": {"get": {"summary": "The process is up", "responses": {"200": _answer("Up", ok)}}},
            "/readyz": {
                "get": {
                    "summary": "ClickHouse answers",
                    "responses": {"200": _answer("Ready", ok), "503": _answer("Not ready", ERROR)},
                }
            },
            "/api/summary": {"get": {"summary": "Rows per history table", "responses": {"200": _answer("Counts", ok)}}},
            "/api/placements": _scoped(_listing("Latest placements of a scope, explained")),
            "/api/alerts": _scoped(_listing("Latest alert events of a scope")),
            "/api/overview": _scoped(
                {
                    "get": {
                        "summary": "A scope's tasks placed, yuan and CO2 saved against local placement, open alerts",
                        "parameters": [],
                        "responses": {"200": _answer("Totals", ok)},
                    }
                }
            ),
            "/api/network": {
                "get": {
                    "summary": "Hubs and clusters with coordinates and names (zh/en), and the scopes a centre can pick",
                    "responses": {"200": _answer("The network model", ok)},
                }
            },
            "/api/sql": {
                "post": {
                    "summary": "One read-only query on the history",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {"query": {"type": "string"}},
                                    "required": ["query"],
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _answer("Columns and rows", ok),
                        "400": _answer("Refused or failed", ERROR),
                        "422": _answer("No query", ERROR),
                    },
                }
            },
            "/api/tasks": {
                "post": {
                    "summary": "Submit a task to the national dispatcher",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/TaskRequest"}}},
                    },
                    "responses": {
                        "202": _answer("Submitted: follow href", ok),
                        "400": _answer("Not JSON", ERROR),
                        "413": _answer("Body too large", ERROR),
                        "422": _answer("Bad fields, each named", ERROR),
                        "503": _answer("No broker configured", ERROR),
                    },
                }
            },
            "/api/tasks/{task_id}": {
                "get": {
                    "summary": "A task's request, decision and lifecycle",
                    "parameters": [{"name": "task_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                    "responses": {"200": _answer("The task", ok), "404": _answer("Not in the history", ERROR)},
                }
            },
            "/api/openapi.json": {"get": {"summary": "This document", "responses": {"200": _answer("OpenAPI 3", ok)}}},
            "/api/nodes": _scoped(
                _filtered(
                    "Registered nodes",
                    {
                        "hub": None,
                        "province": None,
                        "class": list(COMPUTE_CLASSES),
                        "health": list(HEALTH),
                    },
                )
            ),
            "/api/hubs": _scoped(
                {
                    "get": {
                        "summary": "Each hub of a scope now",
                        "responses": {"200": _answer("Hubs", {"type": "array", "items": ok})},
                    }
                }
            ),
            "/api/rollups": _scoped(
                _filtered(
                    "Rolling windows of a scope, newest first",
                    {
                        "scope_kind": list(SCOPE_KINDS),
                        "scope_key": None,
                        "window_s": list(WINDOW_LENGTHS),
                    },
                )
            ),
            "/api/latency": _scoped(
                {
                    "get": {
                        "summary": "Hub latency matrix: pairs with either end in the scope",
                        "responses": {"200": _answer("Pairs", {"type": "array", "items": ok})},
                    }
                }
            ),
            "/api/stream": {
                "get": {
                    "summary": "Server-sent events: ready (reading from now on), then placement, alert, rollup",
                    "parameters": [SCOPE],
                    "responses": {
                        "200": {
                            "description": "text/event-stream",
                            "content": {"text/event-stream": {"schema": {"type": "string"}}},
                        },
                        "422": _answer("Unknown scope", ERROR),
                        "503": _answer("No broker configured", ERROR),
                    },
                }
            },
            "/api/prices": _scoped(
                {
                    "get": {
                        "summary": "The market price in force per hub and compute class of a scope",
                        "responses": {"200": _answer("Prices", {"type": "array", "items": ok})},
                    }
                }
            ),
            "/api/statements": {
                "get": {
                    "summary": "A month's statements per tenant, provider and network operator, reconciled to the "
                    "ledger (a tenant sees its own; a provincial or industry operator the providers in its scope)",
                    "parameters": [
                        {
                            "name": "period",
                            "in": "query",
                            "schema": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}$"},
                        },
                        SCOPE,
                    ],
                    "responses": {
                        "200": _answer("Statements and checks", ok),
                        "422": _answer("A period not written YYYY-MM, or an unknown scope", ERROR),
                    },
                }
            },
            "/metrics": {
                "get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "Text format"}}}
            },
        },
        "components": {
            "schemas": {
                "TaskRequest": json_schema(),
                "Error": {
                    "type": "object",
                    "properties": {
                        "error": {"type": "string"},
                        "fields": {"type": "object", "additionalProperties": {"type": "string"}},
                    },
                    "required": ["error"],
                },
            }
        },
    }
