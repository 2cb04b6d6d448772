"""Priority classes: a request's class (its own or its tenant's default), and who may preempt whom.

The classes and their order come from the contract (`TaskRequest.priority`, highest first). Work may
preempt only work of a lower class, and of its own tenant, except emergency work (应急处置), which may
preempt any tenant's; nothing preempts emergency work. Which tenants may ask for emergency work, and each
tenant's default class, is the tenants book's to say.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from suanwang.schemas.values import PRIORITY_CLASSES

EMERGENCY, PRODUCTION, BEST_EFFORT = PRIORITY_CLASSES
RANK = {name: rank for rank, name in enumerate(PRIORITY_CLASSES)}  # 0: the highest


@dataclass(frozen=True)
class TenantClass:
    """What the tenants book says of one tenant's priority."""

    default: str = PRODUCTION
    emergency: bool = False


class PriorityError(ValueError):
    """A class that does not exist, or one the tenant may not ask for; `code` is the rejection's."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code


class Priorities:
    """Resolves each request's class against the tenants book (a tenant it lacks: production, no emergency)."""

    def __init__(self, tenants: Mapping[str, TenantClass] | None = None) -> None:
        self.tenants = dict(tenants or {})

    def of(self, req: Mapping[str, Any]) -> str:
        """The class the request runs at; PriorityError naming the field and value when it may not."""
        tenant = self.tenants.get(req["tenant"], TenantClass())
        name = req.get("priority") or tenant.default
        if name not in RANK:
            raise PriorityError("UNKNOWN_PRIORITY", f"priority {name!r} is not one of {', '.join(PRIORITY_CLASSES)}")
        if name == EMERGENCY and not tenant.emergency:
            raise PriorityError(
                "PRIORITY_NOT_ALLOWED", f"priority {name!r} is not allowed for tenant {req['tenant']!r} (tenants book)"
            )
        return name


def may_preempt(preemptor: str, preemptor_tenant: str, victim: str, victim_tenant: str) -> bool:
    """Whether work of class `preemptor` may take the place of work of class `victim`."""
    if RANK[victim] <= RANK[preemptor]:
        return False
    return preemptor == EMERGENCY or preemptor_tenant == victim_tenant
