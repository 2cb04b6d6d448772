"""The whole platform as a user runs it: `suanwang up` (on the session's broker, so its topics can be read after),
then history queried with `suanwang sql`. `up` with its own embedded broker is in test_lifecycle."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from suanwang.devstack.broker import EmbeddedBroker
from suanwang.lifeline import die_with_parent
from suanwang.schemas.codec import Codec
from suanwang.schemas.topics import PLACEMENT, Topics
from suanwang.settings import Settings
from tests.conftest import run_cli
from tests.test_grafana import panel_queries, variable_queries

pytestmark = pytest.mark.e2e


def _up(data_dir: Path, *extra: str, env: dict[str, str] | None = None) -> dict:
    env = {"SUANWANG_ALERT_INLET_TEMP_C": "27", **(env or {})}  # alerts at any hour of the day
    result = run_cli(
        "up",
        "--duration",
        "20",
        "--json",
        "--data-dir",
        str(data_dir),
        "--web-port",
        "0",
        "--nodes",
        "300",
        "--rate",
        "40",
        *extra,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


BILL_AS_YOU_GO = {  # prices every 2 s and bills every second, so a 20-s run has both
    "SUANWANG_MARKET_INTERVAL_S": "2",
    "SUANWANG_BILLING_INTERVAL_S": "1",
    "SUANWANG_BILLING_GRACE_S": "1",
}
# Silence is called after 2 s, far shorter than the worker's drain: a stop that looked like an outage would show.
QUICK_TO_CALL_SILENT = {"SUANWANG_TELEMETRY_INTERVAL_S": "1", "SUANWANG_OFFLINE_AFTER_INTERVALS": "2"}
# One node dies 6 s in; the dispatcher moves its tasks 1 s after the worker calls it offline.
KILL_A_NODE = {
    "SUANWANG_SIM_KILL_NODES": "1",
    "SUANWANG_SIM_KILL_AFTER_S": "6",
    "SUANWANG_DISPATCH_FAILOVER_GRACE_S": "1",
}
PREFIX = "e2e."


@dataclass
class Run:
    """One `suanwang up` on the session's broker, shared by this module's tests (it is the suite's longest step)."""

    summary: dict
    data_dir: Path
    placements: list[bytes]


@pytest.fixture(scope="module")
def platform_run(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> Run:
    data_dir = tmp_path_factory.mktemp("e2e") / "data"
    env = {"SUANWANG_KAFKA_BOOTSTRAP": broker.bootstrap, "SUANWANG_TOPIC_PREFIX": PREFIX}
    summary = _up(data_dir, env={**env, **BILL_AS_YOU_GO, **QUICK_TO_CALL_SILENT, **KILL_A_NODE})
    return Run(summary, data_dir, asyncio.run(_read_all(broker.bootstrap, Topics(PREFIX).name(PLACEMENT))))


def test_up_then_history_is_queryable(platform_run: Run) -> None:
    summary, data_dir = platform_run.summary, platform_run.data_dir
    for key in (
        "telemetry_events",
        "task_requests",
        "placements",
        "rejections",
        "alerts",
        "dispatch_p50_ms",
        "dispatch_p99_ms",
        "batched_p50_ms",
        "batched_p99_ms",
        "decision_p50_us",
        "decision_p99_us",
    ):
        assert key in summary
    assert summary["telemetry_events"] > 500 and summary["task_requests"] > 300
    assert summary["placements"] > 0 and summary["alerts"] > 0
    assert summary["placements"] + summary["rejections"] == summary["task_requests"]
    assert 0 < summary["dispatch_p50_ms"] <= summary["dispatch_p99_ms"]
    assert summary["batched_p50_ms"] is None or summary["batched_p50_ms"] <= summary["batched_p99_ms"]
    assert 0 < summary["decision_p50_us"] <= summary["decision_p99_us"]
    rows = summary["clickhouse_rows"]
    assert rows["telemetry"] == summary["telemetry_events"]  # the sink lost and doubled nothing
    assert rows["placements"] == summary["placements"] and rows["alerts"] == summary["alerts"]
    assert rows["rollups"] > 0 and rows["hub_latency"] > 0 and rows["grid_signals"] > 0
    assert rows["market_prices"] > 0 and rows["usage"] > 0 and rows["ledger"] > 0  # priced and billed as it ran
    month = datetime.now(UTC).astimezone(ZoneInfo("Asia/Shanghai")).strftime("%Y-%m")
    settled = run_cli("settle", "--period", month, "--data-dir", str(data_dir), "--json", env=BILL_AS_YOU_GO)
    assert settled.returncode == 0, settled.stderr
    report = json.loads(settled.stdout.strip().splitlines()[-1])
    assert report["balanced"] and report["checks"]["statements"] == report["checks"]["reconciled"] > 0
    assert report["tenants"] and report["providers"]
    assert sum(t["charges_fen"] for t in report["tenants"]) == sum(
        s["earned_fen"] for s in report["providers"] + report["network_operators"]
    )
    table = run_cli("settle", "--period", month, "--data-dir", str(data_dir), env=BILL_AS_YOU_GO)
    assert table.returncode == 0 and "statements reconcile" in table.stdout, table.stderr

    query = "SELECT hub, count() AS n FROM suanwang.placements GROUP BY hub ORDER BY hub"
    out = run_cli("sql", query, "--data-dir", str(data_dir), "--format", "csv")
    assert out.returncode == 0, out.stderr
    table = list(csv.DictReader(io.StringIO(out.stdout)))
    assert sum(int(r["n"]) for r in table) == summary["placements"]
    as_json = run_cli(
        "sql", "SELECT count() AS n FROM suanwang.telemetry", "--data-dir", str(data_dir), "--format", "json"
    )
    assert json.loads(as_json.stdout) == [{"n": summary["telemetry_events"]}]
    guide = analyst_queries()  # the README's analysts' guide, against this run's history
    for sql, answer in zip(guide, _rows_of_each(data_dir, guide), strict=True):
        assert answer, f"no rows: {sql}"
    (provinces,) = _rows_of_each(data_dir, [variable_queries()["province"]])
    variables = {"province": next(r["province"] for r in provinces if r["province"] == "Gansu")}
    day = timedelta(days=1)
    panels = panel_queries(datetime.now(UTC) - day, datetime.now(UTC) + day, variables)
    for (title, sql), answer in zip(panels, _rows_of_each(data_dir, [sql for _, sql in panels]), strict=True):
        assert answer, f"no rows in Grafana panel {title}: {sql}"


def _rows(data_dir: Path, sql: str) -> list[dict]:
    out = run_cli("sql", sql, "--data-dir", str(data_dir), "--format", "json")
    assert out.returncode == 0, (sql, out.stderr)
    return json.loads(out.stdout)


def _rows_of_each(data_dir: Path, queries: list[str]) -> list[list[dict]]:
    """The rows of each query, asked in one process: forty `suanwang sql` runs would cost a minute."""
    out = subprocess.run(
        [sys.executable, "-m", "tests.query_many", str(data_dir)],
        input=json.dumps(queries),
        capture_output=True,
        text=True,
        timeout=240,
        cwd=Path(__file__).parents[1],
        preexec_fn=die_with_parent(),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


def analyst_queries() -> list[str]:
    guide = (Path(__file__).parents[1] / "docs" / "analysts.md").read_text(encoding="utf-8")
    section = guide.split("<!-- analyst-queries -->")[1].split("<!-- /analyst-queries -->")[0]
    return re.findall(r"```sql\n(.*?)\n```", section, flags=re.S)


def test_every_placement_on_the_topic_decodes_and_a_stop_is_no_outage(platform_run: Run) -> None:
    summary, data_dir, placements = platform_run.summary, platform_run.data_dir, platform_run.placements
    assert len(placements) == summary["placements"]
    (paused,) = _rows(data_dir, "SELECT countIf(paused) AS n, count() AS nodes FROM suanwang.nodes FINAL")
    assert paused["n"] == paused["nodes"] == 300  # the simulator said it stopped every node on purpose
    stopped = "(SELECT min(event_time) FROM suanwang.nodes FINAL WHERE paused)"
    (offline,) = _rows(
        data_dir, f"SELECT count() AS n FROM suanwang.alerts WHERE kind = 'node_offline' AND event_time >= {stopped}"
    )
    assert offline["n"] == 0  # the stop and the worker's drain called no node silent
    codec = Codec()
    for payload in placements:
        schema, record = codec.decode(payload)
        assert schema == "Placement" and record["node_id"] and record["total_cost"] >= 0


async def _read_all(bootstrap: str, topic: str) -> list[bytes]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        if not parts:
            await consumer.topics()
            parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        out: list[bytes] = []
        while [tp for tp in parts if await consumer.position(tp) < ends[tp]]:
            for msgs in (await consumer.getmany(timeout_ms=500)).values():
                out.extend(m.value for m in msgs)
        return out
    finally:
        await consumer.stop()


def test_the_tasks_of_failed_nodes_are_placed_elsewhere_exactly_once(platform_run: Run) -> None:
    """The simulator kills its busiest node (and the model fails others now and then); the worker calls them
    offline, and past the grace the dispatcher ends each task such a node held (FAILED, cause node_offline) and
    dispatches it again once, onto another node."""
    data_dir = platform_run.data_dir
    moved = _rows(
        data_dir,
        "SELECT task_id, node_id, retry_task_id, toUnixTimestamp64Milli(event_time) AS at FROM suanwang.task_events "
        "WHERE cause = 'node_offline' ORDER BY task_id",
    )
    sweeps: dict[str, list[int]] = {}
    for r in moved:
        sweeps.setdefault(r["node_id"], []).append(r["at"])
    # one sweep per node: its tasks are ended within one tick of the dispatcher's timers (once a second)
    assert sweeps and all(max(at) - min(at) < 1000 for at in sweeps.values()), sweeps
    failed_at = {node: max(at) for node, at in sweeps.items()}
    ended = {  # tasks that ended of themselves (finished, or failed with no node to blame), and when
        r["task_id"]: r["at"]
        for r in _rows(
            data_dir,
            "SELECT task_id, toUnixTimestamp64Milli(min(event_time)) AS at FROM suanwang.task_events "
            "WHERE state != 'STARTED' AND cause = '' GROUP BY task_id",
        )
    }
    held = _rows(
        data_dir,
        "SELECT task_id, node_id, toUnixTimestamp64Milli(event_time) AS at FROM suanwang.placements",
    )
    still_held = sorted(
        r["task_id"] for r in held if r["at"] <= failed_at.get(r["node_id"], 0) and r["task_id"] not in ended
    )
    # a task whose end was still in flight to the dispatcher (the simulator's lifecycle producer lingers, the
    # dispatcher fetches on its wait) when the sweep came is moved too: at least once, as Kubernetes does
    defaults = Settings()
    in_flight_ms = defaults.bulk_linger_ms + defaults.fetch_max_wait_ms + 1_000  # and a timer tick
    raced = {r["task_id"] for r in moved if r["task_id"] in ended and r["at"] - in_flight_ms <= ended[r["task_id"]]}
    assert still_held == [r["task_id"] for r in moved if r["task_id"] not in raced]  # each task held, once each
    again = _rows(data_dir, "SELECT task_id, node_id FROM suanwang.placements WHERE retry_of IS NOT NULL")
    rejected = _rows(data_dir, "SELECT task_id FROM suanwang.rejections WHERE task_id LIKE '%~%'")
    decided = sorted([r["task_id"] for r in again] + [r["task_id"] for r in rejected])
    assert decided == sorted(r["retry_task_id"] for r in moved) and again
    origin = {r["retry_task_id"]: r["node_id"] for r in moved}
    assert all(r["node_id"] != origin[r["task_id"]] for r in again)
