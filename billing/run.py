"""The billing run: meters the tasks whose history changed, and posts to the ledger what it lacks.

It reads ClickHouse, whose `placements` and `task_events` hold each Kafka message exactly once, and posts
the difference between what each usage record should have posted and what the ledger holds. So a run
repeated, or cut short by a crash, never posts twice and never loses a posting: the next run finds the gap.
One run at a time (the worker's leader, or `suanwang settle`): vouchers are drawn on in order, never beyond
their budget.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from suanwang.billing.book import Book, period_bounds, period_of
from suanwang.billing.ledger import Entry, Key, accounts, fen, target, transaction
from suanwang.billing.metering import Anomaly, Metered, Usage, meter
from suanwang.clock import now_ms
from suanwang.schemas.values import TASK_ENDS
from suanwang.store import DATABASE, Store
from suanwang.topology import Network

log = logging.getLogger("suanwang.billing")
BATCH = 2000  # tasks metered per query
USAGE, LEDGER = BILLING_TABLES = ("usage", "ledger")  # the tables billing writes (schemas/clickhouse/003)
OVERLAP_MS = 2000  # rows of an insert under way when a run reads may carry an ingested_at just before its newest


@dataclass
class Report:
    """What one run did."""

    tasks: int = 0
    usages: int = 0
    transactions: int = 0
    entries: int = 0
    anomalies: dict[str, int] = field(default_factory=lambda: defaultdict(int))


class BillingRun:
    """Meters and posts; keeps, between runs, how far it has read and which tasks to look at again."""

    def __init__(self, store: Store, network: Network, book: Book, grace_s: float) -> None:
        self.store = store
        self.book = book
        self.operators = network.billing.network_operators
        self.storage_price = network.billing.storage_yuan_per_gb_month
        self.grace_ms = int(grace_s * 1000)
        self.read_upto: int | None = None  # ingested_at (ms) of the newest row already considered
        self.seen: dict[str, tuple[int, int]] = {}  # task -> (rows, newest ingested_at) when last read
        self.recheck: dict[str, int] = {}  # task -> when to meter it again without a new event

    def cycle(self, now: int | None = None) -> Report:
        """One run over the tasks whose events or placement arrived since the last, and those due again.
        The first run of a process looks at every task with an event since the start of last month."""
        now = now_ms() if now is None else now
        if self.read_upto is None:
            since_event = period_bounds(period_of(period_bounds(period_of(now))[0] - 1))[0]
            marks = self._changed(f"event_time >= fromUnixTimestamp64Milli({since_event})")
        else:
            marks = self._changed(f"ingested_at > fromUnixTimestamp64Milli({self.read_upto - OVERLAP_MS})")
        tasks = [t for t, mark in marks.items() if self.seen.get(t) != mark]  # the overlap read again: only news
        due = [t for t, at in self.recheck.items() if at <= now]
        report = self.bill(sorted(set(tasks) | set(due)), now)
        self.seen = marks  # only once billed: a run that fails leaves them to the next
        self.read_upto = max([self.read_upto or 0, *(at for _, at in marks.values())])
        return report

    def close(self, period: str, now: int | None = None) -> Report:
        """Meters every task that ran in the period (before its statements are drawn)."""
        start, end = period_bounds(period)
        _, rows = self.store.query(
            f"SELECT task_id FROM {DATABASE}.task_events GROUP BY task_id "
            f"HAVING min(event_time) < fromUnixTimestamp64Milli({end}) AND "
            f"(countIf(state IN {TASK_ENDS}) = 0 OR max(event_time) >= fromUnixTimestamp64Milli({start}))"
        )
        return self.bill([r[0] for r in rows], now_ms() if now is None else now)

    def bill(self, task_ids: list[str], now: int) -> Report:
        report = Report()
        left = self._voucher_left()
        for k in range(0, len(task_ids), BATCH):
            self._bill_batch(task_ids[k : k + BATCH], now, left, report)
        if report.entries or report.anomalies:
            log.info("billing: %s", report)
        return report

    def _bill_batch(self, task_ids: list[str], now: int, left: dict[str, int], report: Report) -> None:
        placements, events = self._history(task_ids)
        posted, txns = self._posted(task_ids)
        stored = self._stored_hours(task_ids)
        entries: list[Entry] = []
        usages: list[dict[str, Any]] = []
        anomalies: list[dict[str, Any]] = []
        for task_id in task_ids:
            report.tasks += 1
            found: list[Anomaly] = []
            try:
                task_entries, task_usages = self._bill_task(
                    task_id, placements.get(task_id), events.get(task_id, []), now, (posted, txns, stored), left, found
                )
            except Exception as exc:  # a row no rule foresaw: recorded with its reason, the other tasks billed
                log.warning("billing: task %s not billed: %r", task_id, exc)
                found.append(Anomaly("unbillable", f"{type(exc).__name__}: {exc}"))
                task_entries, task_usages = [], []
            entries += task_entries
            usages += task_usages
            report.transactions += len({e.txn_id for e in task_entries})
            for a in dict.fromkeys(found):  # each rule and detail once per task
                report.anomalies[a.rule] += 1
                anomalies.append({"task_id": task_id, "rule": a.rule, "detail": a.detail, "seen_at": now})
        # the ledger first: a crash before the usage rows leaves postings the next run finds and keeps
        self.store.insert_records(LEDGER, [{**vars(e), "posted_at": now} for e in entries])
        self.store.insert_records(USAGE, usages)
        self.store.insert_records("billing_exceptions", anomalies)
        report.usages += len(usages)
        report.entries += len(entries)

    def _bill_task(
        self,
        task_id: str,
        placement: dict[str, Any] | None,
        events: list[dict[str, Any]],
        now: int,
        history: tuple[dict[str, dict[Key, int]], dict[str, int], dict[str, float]],
        left: dict[str, int],
        found: list[Anomaly],
    ) -> tuple[list[Entry], list[dict[str, Any]]]:
        """One task's new ledger entries and usage rows; its anomalies go to `found`. `left` is drawn on only
        once the whole task is posted, so a task that fails half-way draws nothing."""
        posted, txns, stored = history
        m: Metered = meter(task_id, placement, events, now, self.grace_ms, self.storage_price)
        self.recheck.pop(task_id, None)
        if m.recheck_at is not None:
            self.recheck[task_id] = m.recheck_at
        found += m.anomalies
        entries: list[Entry] = []
        usages: list[dict[str, Any]] = []
        drawn: dict[str, int] = defaultdict(int)
        for u in m.usages:
            drawn_here: dict[str, int] = defaultdict(int)
            for (_, account), amount in posted[u.usage_id].items():
                if account.startswith("voucher:"):
                    drawn_here[account] += amount
            room = {v: n - drawn[v] for v, n in left.items()}
            wanted = target(u, self.book, self.operators, room, drawn_here, found)
            txn = transaction(u, wanted, posted[u.usage_id], txns[u.usage_id] + 1, self._reason(u, txns))
            for e in txn:
                if e.account_kind == "voucher" and e.account.removeprefix("voucher:") in left:
                    drawn[e.account.removeprefix("voucher:")] += e.amount_fen  # (one since dropped: no budget)
            entries += txn
            if txn or stored.get(u.usage_id) != u.hours:  # new or changed: a new version of the row
                usages.append(self._usage_row(u, now))
        for voucher, amount in drawn.items():
            left[voucher] -= amount
        return entries, usages

    @staticmethod
    def _reason(u: Usage, txns: dict[str, int]) -> str:
        return f"{u.outcome.lower()} {u.hours:.4f} h" if not txns[u.usage_id] else f"revised: {u.hours:.4f} h"

    def _usage_row(self, u: Usage, now: int) -> dict[str, Any]:
        row = {k: v for k, v in vars(u).items() if k != "charges"}
        row.update({f"{c}_fen": fen(y) for c, y in u.charges.items()})
        row.update(accounts(u, self.book, self.operators))
        row["metered_at"] = now
        return row

    def _changed(self, where: str) -> dict[str, tuple[int, int]]:
        """Tasks with a lifecycle event or placement stored matching `where`: how many, and the newest ingested_at."""
        _, rows = self.store.query(
            f"SELECT task_id, count(), toUnixTimestamp64Milli(max(ingested_at)) FROM ("
            f"SELECT task_id, ingested_at FROM {DATABASE}.task_events WHERE {where} UNION ALL "
            f"SELECT task_id, ingested_at FROM {DATABASE}.placements WHERE {where}) GROUP BY task_id"
        )
        return {task: (int(n), int(at)) for task, n, at in rows}

    def _history(self, task_ids: list[str]) -> tuple[dict[str, dict[str, Any]], dict[str, list[dict[str, Any]]]]:
        """Each task's placement (the first, should one be stored twice) and lifecycle events."""
        ids = {"ids": task_ids}
        names, rows = self.store.query(
            f"SELECT * EXCEPT (start_at, event_time), toUnixTimestamp64Milli(start_at) AS start_at, "
            f"toUnixTimestamp64Milli(event_time) AS event_time FROM {DATABASE}.placements "
            "WHERE task_id IN {ids:Array(String)} ORDER BY event_time",
            ids,
        )
        placements: dict[str, dict[str, Any]] = {}
        for row in rows:
            record = dict(zip(names, row, strict=True))
            placements.setdefault(record["task_id"], record)
        _, rows = self.store.query(
            f"SELECT task_id, event_id, toUnixTimestamp64Milli(event_time), node_id, state FROM {DATABASE}.task_events "
            "WHERE task_id IN {ids:Array(String)}",
            ids,
        )
        events: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for task_id, event_id, at, node_id, state in rows:
            events[task_id].append({"event_id": event_id, "event_time": int(at), "node_id": node_id, "state": state})
        return placements, events

    def _posted(self, task_ids: list[str]) -> tuple[dict[str, dict[Key, int]], dict[str, int]]:
        """What the ledger holds per usage record and (component, account), and its transactions' count."""
        _, rows = self.store.query(
            f"SELECT usage_id, component, account, sum(amount_fen) FROM {DATABASE}.ledger "
            "WHERE task_id IN {ids:Array(String)} GROUP BY usage_id, component, account",
            {"ids": task_ids},
        )
        posted: dict[str, dict[Key, int]] = defaultdict(dict)
        for usage_id, component, account, amount in rows:
            if amount:
                posted[usage_id][(component, account)] = int(amount)
        _, rows = self.store.query(
            f"SELECT usage_id, uniqExact(txn_id) FROM {DATABASE}.ledger "
            "WHERE task_id IN {ids:Array(String)} GROUP BY usage_id",
            {"ids": task_ids},
        )
        txns: dict[str, int] = defaultdict(int, {r[0]: int(r[1]) for r in rows})
        return posted, txns

    def _stored_hours(self, task_ids: list[str]) -> dict[str, float]:
        """The hours of each usage record's newest stored version: a record metered the same is not written again."""
        _, rows = self.store.query(
            f"SELECT usage_id, argMax(hours, metered_at) FROM {DATABASE}.usage "
            "WHERE task_id IN {ids:Array(String)} GROUP BY usage_id",
            {"ids": task_ids},
        )
        return {usage_id: hours for usage_id, hours in rows}

    def _voucher_left(self) -> dict[str, int]:
        """Each voucher's budget less what the ledger shows drawn on it, in fen."""
        _, rows = self.store.query(
            f"SELECT account, sum(amount_fen) FROM {DATABASE}.ledger WHERE account_kind = 'voucher' GROUP BY account"
        )
        drawn = {account.removeprefix("voucher:"): int(amount) for account, amount in rows}
        return {v.id: v.budget_fen - drawn.get(v.id, 0) for v in self.book.vouchers}
