"""Settlement (统一结算): a month's statements per provider, network operator and tenant, each reconciled
to the fen: the charges its usage records come to against what the ledger posted to its account."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from suanwang.billing.book import Book, period_bounds
from suanwang.billing.ledger import COMPONENTS
from suanwang.store import DATABASE, Store

PROVIDER_COMPONENTS = ("compute", "energy", "storage")


def statements(store: Store, book: Book, period: str) -> dict[str, Any]:
    """Every statement of `period` (YYYY-MM) and the checks that tie them to the ledger."""
    period_bounds(period)  # a clear error for a malformed period
    p = {"period": period}
    _, usage = store.query(
        "SELECT payer, tenant, provider, network_operator, count(), sum(hours), sum(cu_hours), sum(energy_kwh), "
        "sum(transfer_gb), sum(compute_fen), sum(energy_fen), sum(transfer_fen), sum(storage_fen) "
        f"FROM {DATABASE}.usage FINAL WHERE period = {{period:String}} "
        "GROUP BY payer, tenant, provider, network_operator",
        p,
    )
    _, ledger = store.query(
        f"SELECT account, account_kind, tenant, sum(amount_fen) FROM {DATABASE}.ledger "
        "WHERE period = {period:String} GROUP BY account, account_kind, tenant",
        p,
    )
    _, unbalanced = store.query(
        f"SELECT count() FROM (SELECT txn_id FROM {DATABASE}.ledger WHERE period = {{period:String}} "
        "GROUP BY txn_id HAVING sum(amount_fen) != 0)",
        p,
    )
    posted: dict[str, int] = defaultdict(int)
    vouchers_for: dict[str, int] = defaultdict(int)
    for account, kind, tenant, amount in ledger:
        posted[account] += int(amount)
        if kind == "voucher":
            vouchers_for[tenant] += int(amount)
    payers: dict[str, dict[str, Any]] = {}
    providers: dict[str, dict[str, Any]] = {}
    operators: dict[str, dict[str, Any]] = {}
    for payer, tenant, provider, operator, n, hours, cu, kwh, gb, *fens in usage:
        charges = dict(zip(COMPONENTS, (int(f) for f in fens), strict=True))
        t = payers.setdefault(payer, _blank(payer, tenant=tenant))
        _add(t, n, hours, cu, kwh, gb, charges, COMPONENTS)
        _add(providers.setdefault(provider, _blank(provider)), n, hours, cu, kwh, gb, charges, PROVIDER_COMPONENTS)
        _add(operators.setdefault(operator, _blank(operator)), n, hours, cu, kwh, gb, charges, ("transfer",))
    for t in payers.values():
        t["vouchers_fen"] = vouchers_for[t["tenant"]]
        t["payable_fen"] = t["charges_fen"] - t["vouchers_fen"]
        _reconcile(t, t["payable_fen"], posted.get(t["account"], 0))
    for s in (*providers.values(), *operators.values()):
        s["earned_fen"] = s["charges_fen"]
        _reconcile(s, s["earned_fen"], -posted.get(s["account"], 0))
    voucher_rows = [
        {
            "voucher": v.id,
            "tenant": v.tenant,
            "kind": v.kind,
            "budget_fen": v.budget_fen,
            "drawn_fen": posted.get(v.account, 0),
            "valid_from": str(v.valid_from),
            "valid_to": str(v.valid_to),
        }
        for v in book.vouchers
    ]
    every = [*payers.values(), *providers.values(), *operators.values()]
    return {
        "period": period,
        "tenants": sorted(payers.values(), key=lambda s: s["account"]),
        "providers": sorted(providers.values(), key=lambda s: s["account"]),
        "network_operators": sorted(operators.values(), key=lambda s: s["account"]),
        "vouchers": voucher_rows,
        "checks": {
            "ledger_sum_fen": sum(posted.values()),
            "unbalanced_transactions": int(unbalanced[0][0]),
            "statements": len(every),
            "reconciled": sum(s["reconciled"] for s in every),
            "unposted_accounts": sorted(
                {a for a, amount in posted.items() if amount}
                - {s["account"] for s in every}
                - {v.account for v in book.vouchers}
            ),
        },
    }


def balanced(report: dict[str, Any]) -> bool:
    """Whether the ledger sums to zero, every transaction balances, and every statement reconciles."""
    c = report["checks"]
    return (
        c["ledger_sum_fen"] == 0
        and c["unbalanced_transactions"] == 0
        and c["reconciled"] == c["statements"]
        and not c["unposted_accounts"]
    )


def _blank(account: str, **extra: Any) -> dict[str, Any]:
    return {
        "account": account,
        **extra,
        "usage_records": 0,
        "hours": 0.0,
        "cu_hours": 0.0,
        "energy_kwh": 0.0,
        "transfer_gb": 0.0,
        "lines_fen": dict.fromkeys(COMPONENTS, 0),
        "charges_fen": 0,
    }


def _add(
    s: dict[str, Any],
    n: int,
    hours: float,
    cu: float,
    kwh: float,
    gb: float,
    charges: dict[str, int],
    parts: tuple[str, ...],
) -> None:
    s["usage_records"] += int(n)
    s["hours"] += hours
    s["cu_hours"] += cu
    s["energy_kwh"] += kwh
    s["transfer_gb"] += gb
    for c in parts:
        s["lines_fen"][c] += charges[c]
        s["charges_fen"] += charges[c]


def _reconcile(s: dict[str, Any], expected: int, ledger: int) -> None:
    s["ledger_fen"] = ledger
    s["difference_fen"] = expected - ledger
    s["reconciled"] = expected == ledger
