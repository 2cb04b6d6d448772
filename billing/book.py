"""The tenants billing knows and their vouchers, from a YAML book validated on load."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo

import yaml
from pydantic import BaseModel, ValidationError, model_validator

from suanwang.errors import SuanwangError
from suanwang.schemas.values import PRIORITY_CLASSES

CST = ZoneInfo("Asia/Shanghai")
VOUCHER_COVERS = {"compute": ("compute", "energy"), "network": ("transfer",)}  # 算力券 / 运力券


class Tenant(BaseModel):
    name: str
    province: str = ""
    sme: bool = False
    priority: str = "production"  # the class of its requests that name none
    emergency: bool = False  # may ask for emergency work (应急处置), which preempts other tenants' work

    @model_validator(mode="after")
    def _known_class(self) -> Tenant:
        if self.priority not in PRIORITY_CLASSES:
            raise ValueError(f"priority={self.priority!r} is not one of {', '.join(PRIORITY_CLASSES)}")
        if self.priority == PRIORITY_CLASSES[0] and not self.emergency:
            raise ValueError(f"priority={self.priority!r} needs emergency: true")
        return self


class Voucher(BaseModel):
    """A budget a tenant may draw on for the charges its kind covers, where and when it is valid."""

    id: str
    tenant: str
    kind: Literal["compute", "network"]
    budget_yuan: float
    valid_from: date
    valid_to: date
    hubs: list[str] = []
    classes: list[str] = []

    @model_validator(mode="after")
    def _sound(self) -> Voucher:
        if self.budget_yuan < 0:
            raise ValueError(f"voucher {self.id}: budget_yuan={self.budget_yuan} is negative")
        if self.valid_to < self.valid_from:
            raise ValueError(f"voucher {self.id}: valid_to {self.valid_to} is before valid_from {self.valid_from}")
        return self

    @property
    def account(self) -> str:
        return f"voucher:{self.id}"

    @property
    def budget_fen(self) -> int:
        return round(self.budget_yuan * 100)

    def valid_at(self, ms: int) -> bool:
        """Whether a usage record ending at `ms` falls within the validity days (China Standard Time)."""
        day = datetime.fromtimestamp((ms - 1) / 1000, CST).date()  # a record ending at midnight ends the day before
        return self.valid_from <= day <= self.valid_to

    def applies(self, component: str, hub: str, compute_class: str) -> bool:
        return (
            component in VOUCHER_COVERS[self.kind]
            and (not self.hubs or hub in self.hubs)
            and (not self.classes or compute_class in self.classes)
        )


class Book(BaseModel):
    tenants: dict[str, Tenant]
    vouchers: list[Voucher] = []

    @model_validator(mode="after")
    def _consistent(self) -> Book:
        seen: set[str] = set()
        for v in self.vouchers:
            if v.tenant not in self.tenants:
                raise ValueError(f"voucher {v.id} names unknown tenant {v.tenant!r}")
            if v.id in seen:
                raise ValueError(f"voucher id {v.id} appears twice")
            seen.add(v.id)
        return self

    def vouchers_of(self, tenant: str) -> list[Voucher]:
        """A tenant's vouchers, the soonest to expire first (then by id): they are drawn on in this order."""
        return sorted((v for v in self.vouchers if v.tenant == tenant), key=lambda v: (v.valid_to, v.id))


def load_book(path: Path | None = None) -> Book:
    """The book at `path`, or the shipped one; a clear error naming the file and the field when invalid."""
    if path is None:
        text, where = resources.files("suanwang.billing").joinpath("tenants.yaml").read_text("utf-8"), "tenants.yaml"
    else:
        try:
            text, where = path.read_text("utf-8"), str(path)
        except OSError as exc:
            raise SuanwangError(f"cannot read the tenants file {path}: {exc.strerror}") from None
    try:
        return Book.model_validate(yaml.safe_load(text))
    except (ValidationError, yaml.YAMLError) as exc:
        detail = exc.errors()[0] if isinstance(exc, ValidationError) else None
        why = f"{detail['msg']} at {'.'.join(map(str, detail['loc']))}" if detail else str(exc).splitlines()[0]
        raise SuanwangError(f"{where} is invalid: {why}") from None


def period_of(ms: int) -> str:
    """The billing month (China Standard Time) holding `ms`, as YYYY-MM."""
    return datetime.fromtimestamp(ms / 1000, CST).strftime("%Y-%m")


def period_bounds(period: str) -> tuple[int, int]:
    """[start, end) of a YYYY-MM month in China Standard Time, in ms; a clear error for a malformed one."""
    try:
        first = datetime.strptime(period, "%Y-%m").replace(tzinfo=CST)
    except ValueError:
        raise SuanwangError(f"period {period!r} is not a month written YYYY-MM") from None
    following = (first + timedelta(days=32)).replace(day=1)
    return int(first.timestamp() * 1000), int(following.timestamp() * 1000)
