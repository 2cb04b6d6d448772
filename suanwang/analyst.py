"""Analysts' SQL: one SELECT over the suanwang database, checked by ClickHouse's own parser, run under limits on
a connection and threads of its own, so no query reaches the server's files or stalls ingestion.

The text is parsed twice by the engine, never spliced into another statement first: `formatQuerySingleLine`
takes it as a bound parameter (one statement, comments dropped), and `EXPLAIN AST` of that canonical text gives
the tree the rules below walk. What runs is the canonical text, with the limits as per-query settings and
`readonly=1`, which also stops what the tree check might miss from writing.
"""

from __future__ import annotations

import asyncio
import queue
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from clickhouse_connect.driver.exceptions import ClickHouseError

from suanwang.errors import SuanwangError
from suanwang.settings import Settings
from suanwang.store import DATABASE, connect

# system tables that describe the schema or generate values, and nothing of the server itself
SAFE_SYSTEM_TABLES = frozenset({"one", "numbers", "tables", "columns", "functions", "time_zones"})
# scalar functions that read the server's files, models, dictionaries or configuration
DENIED_FUNCTIONS = frozenset(
    {"file", "catboostevaluate", "naivebayesclassifier", "joinget", "joingetornull", "getserversetting"}
)
DENIED_PREFIXES = ("dict", "filesystem")
SET_FUNCTIONS = frozenset({"in", "notin", "globalin", "globalnotin", "nullin", "notnullin", "globalnullin"})
# the ClickHouse setting each limit is, and the suanwang setting that sets it
LIMITS = {
    "max_execution_time": "analyst_max_seconds",
    "max_memory_usage": "analyst_max_memory_bytes",
    "max_rows_to_read": "analyst_max_rows_read",
    "max_result_rows": "analyst_max_result_rows",
    "max_result_bytes": "analyst_max_result_bytes",
}
_TRAILING_FORMAT = re.compile(r"\bFORMAT\s+\w+\s*$", re.IGNORECASE)
_CONTROLLED_BY = re.compile(r"controlled by '(\w+)'")
_CODE_LIMIT = {159: "max_execution_time", 241: "max_memory_usage", 158: "max_rows_to_read", 396: "max_result_rows"}


class Refused(SuanwangError):
    """A query the rules do not allow; `status` is 422 for what is not one SELECT, 403 for what reaches outside."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class LimitExceeded(SuanwangError):
    """A query cut short by one of its limits, named as the setting that raises it."""


class Busy(SuanwangError):
    """Every analyst slot is taken; the caller should retry after `retry_after_s`."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass
class Node:
    """One node of ClickHouse's `EXPLAIN AST`: its kind, its name or value, and its children."""

    kind: str
    name: str = ""
    children: list[Node] = field(default_factory=list)

    def walk(self) -> list[tuple[Node, Node | None]]:
        """Every node below and including this one, each with its parent."""
        out: list[tuple[Node, Node | None]] = [(self, None)]
        for node, _ in out:  # grows as it goes: breadth first
            out.extend((child, node) for child in node.children)
        return out


def parse_ast(lines: list[str]) -> Node:
    """The tree of `EXPLAIN AST` output, one node per line, nested by leading spaces."""
    stack: list[tuple[int, Node]] = []
    root: Node | None = None
    for line in lines:
        depth = len(line) - len(line.lstrip(" "))
        text = re.sub(r"\s*\((?:children \d+|alias [^)]*)\)", "", line.strip())
        kind, _, name = text.partition(" ")
        node = Node(kind, name.strip())
        while stack and stack[-1][0] >= depth:
            stack.pop()
        if stack:
            stack[-1][1].children.append(node)
        else:
            root = node
        stack.append((depth, node))
    if root is None:
        raise Refused("the query is empty", 422)
    return root


def _table_allowed(name: str) -> bool:
    database, _, table = name.rpartition(".")
    database, table = database.strip("`"), table.strip("`")
    if not database or database == DATABASE:  # unqualified names resolve in suanwang (or are WITH names)
        return True
    return database == "system" and table in SAFE_SYSTEM_TABLES


def check_tree(root: Node) -> None:
    """Refused naming why, unless the tree is one SELECT over suanwang's tables without table functions, files,
    output clauses or settings of its own."""
    if root.kind != "SelectWithUnionQuery":
        raise Refused(f"only a single SELECT (or WITH … SELECT) is allowed here, not {root.kind}", 422)
    extra = root.children[1:]
    if extra and extra[-1].kind == "Identifier" and extra[-1].name == "Native":
        extra = extra[:-1]  # the format the client asks for, attached to the statement it explains
    if extra:
        raise Refused("INTO OUTFILE, FORMAT and SETTINGS are not allowed: the API chooses how results leave", 403)
    for node, parent in root.walk():
        name = node.name.lower()
        if node.kind == "Set":
            raise Refused("a query may not choose its own SETTINGS: its limits are the API's", 403)
        if node.kind == "Function" and parent is not None and parent.kind == "TableExpression":
            raise Refused(f"table functions are not allowed ({node.name}): query the {DATABASE} tables", 403)
        if node.kind == "Function" and (name in DENIED_FUNCTIONS or name.startswith(DENIED_PREFIXES)):
            raise Refused(f"the function {node.name} reads outside the {DATABASE} tables and is not allowed", 403)
        if node.kind == "TableIdentifier" and not _table_allowed(node.name):
            raise Refused(_outside(node.name), 403)
        if node.kind == "Function" and name in SET_FUNCTIONS:
            operand = node.children[0].children[1:] if node.children and node.children[0].children else []
            for table in operand:
                if table.kind == "Identifier" and "." in table.name and not _table_allowed(table.name):
                    raise Refused(_outside(table.name), 403)


def _outside(table: str) -> str:
    safe = ", ".join(f"system.{t}" for t in sorted(SAFE_SYSTEM_TABLES))
    return f"the table {table} is outside the {DATABASE} database; only its tables and {safe} may be read"


def limits_of(settings: Settings) -> dict[str, Any]:
    """The per-query settings every analyst query runs under."""
    limits: dict[str, Any] = {ch: getattr(settings, ours) for ch, ours in LIMITS.items()}
    return {
        **limits,
        "max_threads": settings.analyst_max_threads,
        "os_thread_priority": settings.analyst_nice,  # the CPU goes to the sink and the API first
        "result_overflow_mode": "throw",
        "readonly": 1,
    }


def _limit_error(exc: ClickHouseError, settings: Settings) -> SuanwangError:
    text = str(exc)
    named = _CONTROLLED_BY.search(text)
    code = re.search(r"Code: (\d+)", text)
    setting = named.group(1) if named else _CODE_LIMIT.get(int(code.group(1)) if code else 0)
    if setting in ("max_result_bytes", "max_result_rows") and "bytes" in text.lower() and "rows" not in text.lower():
        setting = "max_result_bytes"
    if setting in LIMITS:
        ours = LIMITS[setting]
        return LimitExceeded(
            f"the query exceeded {setting} = {getattr(settings, ours)} "
            f"(set by SUANWANG_{ours.upper()}); narrow it, or ask an operator to raise the limit"
        )
    return SuanwangError(f"query failed: {text.strip().splitlines()[0]}")


class Analysts:
    """Runs analysts' queries, at most `analyst_max_in_flight` at a time, each on a connection of its own (a chdb
    handle runs one call at a time, so connections are not shared between threads)."""

    def __init__(self, store_settings: Settings, settings: Settings | None = None) -> None:
        """Connects where `store_settings` point (the store's), with the limits of `settings` (the API's)."""
        self.store_settings = store_settings
        self.settings = settings or store_settings
        self.slots = self.settings.analyst_max_in_flight
        self.in_flight = 0
        self._idle: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._idle.put(connect(store_settings, analyst=True))  # the first at once: a bad address fails at start
        self._opened = 1
        self._executor = ThreadPoolExecutor(max_workers=self.slots, thread_name_prefix="analyst")

    async def query(self, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        """(columns, rows) of the query; Refused, LimitExceeded, Busy or SuanwangError saying why not."""
        if self.in_flight >= self.slots:
            retry = max(1, round(self.settings.analyst_max_seconds / 2))
            raise Busy(f"{self.slots} analyst queries are running; retry in {retry} s", retry)
        self.in_flight += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, self.run, sql)
        finally:
            self.in_flight -= 1

    def run(self, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Checks and runs one query on the calling thread."""
        client = self._take()
        try:
            canonical = self.check(client, sql)
            result = client.query(canonical, settings=limits_of(self.settings))
        except ClickHouseError as exc:
            client.close()  # a query cut mid-stream may leave its handle unusable: the next gets a new one
            client = connect(self.store_settings, analyst=True)
            raise _limit_error(exc, self.settings) from None
        finally:
            self._idle.put(client)
        return list(result.column_names), [tuple(r) for r in result.result_rows]

    def _take(self) -> Any:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            self._opened += 1
            return connect(self.store_settings, analyst=True)

    @staticmethod
    def check(client: Any, sql: str) -> str:
        """The query's canonical text once the engine's parser shows it is allowed; Refused otherwise."""
        try:
            canonical = client.query(
                "SELECT formatQuerySingleLine({q:String})", parameters={"q": sql}, settings={"readonly": 1}
            ).result_rows[0][0]
            # parse only, nothing runs; settings here would join the tree as the statement's own SETTINGS
            lines = [r[0] for r in client.query(f"EXPLAIN AST {canonical}").result_rows]
        except ClickHouseError as exc:
            first = str(exc).strip().splitlines()[0]
            if "(READONLY)" in first:
                raise Refused("a query may not choose its own SETTINGS: its limits are the API's", 403) from None
            reason = re.sub(r"^.*?DB::Exception: ", "", first).split(": In scope")[0]
            raise Refused(f"the query does not parse as one statement: {reason}", 422) from None
        if _TRAILING_FORMAT.search(canonical):
            raise Refused("INTO OUTFILE, FORMAT and SETTINGS are not allowed: the API chooses how results leave", 403)
        check_tree(parse_ast(lines))
        return canonical

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        while not self._idle.empty():
            self._idle.get_nowait().close()
