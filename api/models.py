"""The API's typed models: each route's query parameters and bodies, declared once. Handlers read their
queries through them (`query_of`), and the OpenAPI document is generated from them, so the two agree."""

from __future__ import annotations

from typing import Any, Literal, TypeVar, get_args, get_origin

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from suanwang.api.guard import http_error
from suanwang.schemas.values import COMPUTE_CLASSES
from suanwang.streams.windows import HOPPING_MS, SCOPE_KINDS
from suanwang.topology import load_network

HEALTH = ("healthy", "offline", "unreported")  # open alerts: its own node_offline, its cluster's collector_silent
WINDOW_LENGTHS = tuple(str(length // 1000) for length, _hop in HOPPING_MS)  # window_s of the rolling windows
NETWORK = load_network()


class Query(BaseModel):
    """Query parameters: strings on the wire, checked and converted here; unknown ones are ignored."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)


class Scoped(Query):
    scope: str | None = Field(
        None, description="national, province:<name> or industry:<name>; default: the caller's first scope"
    )


class Listing(Scoped):
    limit: int = Field(50, ge=1, le=1000, description="Rows to return, newest first.")


class NodesQuery(Listing):
    hub: Literal[tuple(NETWORK.hubs)] | None = None  # type: ignore[valid-type]
    province: Literal[tuple(NETWORK.provinces)] | None = None  # type: ignore[valid-type]
    compute_class: Literal[COMPUTE_CLASSES] | None = Field(None, alias="class")  # type: ignore[valid-type]
    health: Literal[HEALTH] | None = Field(
        None, description="offline: its node_offline alert is open; unreported: its cluster's collector_silent is."
    )  # type: ignore[valid-type]


class RollupsQuery(Listing):
    scope_kind: Literal[SCOPE_KINDS] = "hub"  # type: ignore[valid-type]
    scope_key: str | None = None
    window_s: Literal[WINDOW_LENGTHS] = WINDOW_LENGTHS[0]  # type: ignore[valid-type]


class StatementsQuery(Scoped):
    period: str | None = Field(None, pattern=r"^[0-9]{4}-[0-9]{2}$", description="YYYY-MM; default: this month.")


class SqlBody(BaseModel):
    query: str = Field(description="One read-only SELECT on the history.")


class Error(BaseModel):
    error: str = Field(description="What is wrong, naming the field and the value.")
    fields: dict[str, str] | None = Field(None, description="Each bad field of a body and what is wrong with it.")


Q = TypeVar("Q", bound=Query)


def query_of(request: web.Request, model: type[Q]) -> Q:
    """The request's query as `model`; a 422 naming the first bad parameter and its value."""
    try:
        return model.model_validate(dict(request.query))
    except ValidationError as exc:
        raise http_error(web.HTTPUnprocessableEntity, _problem(model, exc.errors()[0])) from None


def _problem(model: type[Query], error: Any) -> str:
    name = str(error["loc"][0])
    field = next(f for key, f in model.model_fields.items() if name in (key, f.alias))
    value = error["input"]
    branches = get_args(field.annotation) if get_origin(field.annotation) is not Literal else (field.annotation,)
    allowed = [str(v) for branch in branches if get_origin(branch) is Literal for v in get_args(branch)]
    if error["type"] == "literal_error":
        return f"{name}={value!r} is not one of {', '.join(sorted(allowed))}"
    bounds = {k: getattr(m, k) for m in field.metadata for k in ("ge", "le") if hasattr(m, k)}
    if {"ge", "le"} <= set(bounds):
        return f"{name}={value!r} must be {bounds['ge']}..{bounds['le']}"
    return f"{name}={value!r}: {error['msg']}"
