"""Double-entry postings in fen: what a usage record should have posted, and the transaction that gets the
ledger there from what it holds.

For each charge component the provider (compute, energy, storage) or the network operator (transfer) is
credited the whole charge; the tenant is debited it, less what its vouchers cover, which their accounts
are debited instead. So every component, and every transaction, sums to zero. Amounts are rounded to the
fen once, per component, and split in whole fen, so nothing is lost to rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from suanwang.billing.book import Book
from suanwang.billing.metering import Anomaly, Usage

COMPONENTS = ("compute", "energy", "transfer", "storage")
Key = tuple[str, str]  # (component, account)
FEN_LIMIT = 2**63 - 1


def fen(yuan: float) -> int:
    """Yuan to whole fen, half away from zero (the shortest decimal of the float, so 0.145 is 15)."""
    if not abs(yuan) * 100 < FEN_LIMIT:  # the ledger's Int64 (NaN too): a charge beyond it is a row gone wrong
        raise ValueError(f"charge {yuan!r} yuan is beyond the ledger's range of ±{FEN_LIMIT} fen")
    return int(Decimal(repr(yuan)).scaleb(2).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def account_kind(account: str) -> str:
    return account.split(":", 1)[0]


@dataclass(frozen=True)
class Entry:
    entry_id: str
    txn_id: str
    usage_id: str
    task_id: str
    period: str
    tenant: str
    account: str
    account_kind: str
    component: str
    amount_fen: int
    reason: str


def accounts(u: Usage, book: Book, operators: dict[str, str]) -> dict[str, str]:
    """Who pays (the tenant, or a suspense account for a tenant not in the book) and who is paid."""
    payer = f"tenant:{u.tenant}" if u.tenant in book.tenants else f"suspense:{u.tenant}"
    if u.origin_hub not in operators:
        raise ValueError(f"origin_hub={u.origin_hub!r} is not a hub of the network model: no network operator to pay")
    return {
        "payer": payer,
        "provider": f"provider:{u.cluster}",
        "network_operator": f"network:{operators[u.origin_hub]}",
    }


def target(
    u: Usage,
    book: Book,
    operators: dict[str, str],
    voucher_left: dict[str, int],
    drawn_here: dict[str, int],
    anomalies: list[Anomaly],
) -> dict[Key, int]:
    """The postings the usage record should have, in fen. `voucher_left` is what each voucher has left
    (this record's own draws excluded: `drawn_here`); unknown tenants are debited on a suspense account."""
    out: dict[Key, int] = {}
    known = u.tenant in book.tenants
    who = accounts(u, book, operators)
    payer = who["payer"]
    if not known:
        anomalies.append(Anomaly("unknown_tenant", f"{u.tenant} is not in the tenants book: debited to {payer}"))
    vouchers = book.vouchers_of(u.tenant) if known else []
    room = {v.id: voucher_left.get(v.id, v.budget_fen) + drawn_here.get(v.account, 0) for v in vouchers}
    for component in COMPONENTS:
        amount = fen(u.charges[component])
        if amount == 0:
            continue
        payee = who["network_operator"] if component == "transfer" else who["provider"]
        out[(component, payee)] = -amount
        due = amount
        for v in vouchers:
            if not v.applies(component, u.hub, u.compute_class) or due == 0:
                continue
            if not v.valid_at(u.ended_at):
                anomalies.append(Anomaly("voucher_expired", f"{v.id} valid {v.valid_from}..{v.valid_to}: not drawn"))
                continue
            take = min(due, room[v.id])
            if take < due:
                anomalies.append(Anomaly("voucher_exhausted", f"{v.id} ({v.budget_fen} fen) is used up"))
            if take > 0:
                out[(component, v.account)] = take
                room[v.id] -= take
                due -= take
        if due:
            out[(component, payer)] = due
    return out


def transaction(u: Usage, wanted: dict[Key, int], posted: dict[Key, int], txn_no: int, reason: str) -> list[Entry]:
    """The entries that move the ledger from `posted` to `wanted` for this usage record (none if equal)."""
    txn_id = f"{u.usage_id}#{txn_no}"
    entries = []
    for key in sorted(set(wanted) | set(posted)):
        delta = wanted.get(key, 0) - posted.get(key, 0)
        if delta:
            component, account = key
            entries.append(
                Entry(
                    entry_id=f"{txn_id}:{component}:{account}",
                    txn_id=txn_id,
                    usage_id=u.usage_id,
                    task_id=u.task_id,
                    period=u.period,
                    tenant=u.tenant,
                    account=account,
                    account_kind=account_kind(account),
                    component=component,
                    amount_fen=delta,
                    reason=reason,
                )
            )
    if sum(e.amount_fen for e in entries):  # cannot happen: `wanted` and `posted` each sum to zero
        raise RuntimeError(f"transaction {txn_id} does not balance: {entries}")
    return entries
