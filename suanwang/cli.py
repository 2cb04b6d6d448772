"""The `suanwang` command: the whole platform (`up`), each service alone, and queries."""

from __future__ import annotations

import asyncio
import csv
import json
import logging
import sys
from collections.abc import Callable, Coroutine
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from suanwang.errors import SuanwangError, need_extra
from suanwang.settings import Settings, default_of, load_settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help="算网 suanwang: monitoring and dispatch.")
err = Console(stderr=True)


def _default_of(setting: str, text: str) -> str:
    """Help text ending in the setting's default, read from the one definition of the settings."""
    return escape(f"{text} [{default_of(setting)}].")  # brackets are rich markup


DataDir = Annotated[
    Path | None, typer.Option("--data-dir", help=_default_of("data_dir", "Embedded ClickHouse data and logs"))
]
Nodes = Annotated[int | None, typer.Option(help=_default_of("sim_nodes", "Simulated nodes"))]
Rate = Annotated[float | None, typer.Option(help=_default_of("sim_rate", "Task requests per second"))]
WebPort = Annotated[int | None, typer.Option(help=_default_of("web_port", "API and dashboard port"))]
Duration = Annotated[float | None, typer.Option("--duration", help="Stop by itself after this many seconds.")]


def _quiet_client_libraries() -> None:
    """Interactive commands report failures as one clear error, not the client libraries' own logs."""
    for name in ("aiokafka", "clickhouse_connect"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def _service(
    settings: Settings,
    duration: float | None,
    body: Callable[[asyncio.Event], Coroutine[Any, Any, None]],
    needs_kafka: bool = True,
    stop_bound_s: float = 20.0,
) -> None:
    """Runs one service until SIGINT/SIGTERM or the duration; once asked to stop, it ends within `stop_bound_s`."""
    from suanwang.lifeline import exit_after
    from suanwang.process import stop_on_signals

    if needs_kafka and not settings.kafka_bootstrap:
        raise SuanwangError(
            "SUANWANG_KAFKA_BOOTSTRAP is not set; a standalone service needs a Kafka cluster "
            "(or use `suanwang up` for everything on the embedded broker)"
        )

    async def main() -> None:
        stop = asyncio.Event()
        stop_on_signals(stop)
        if duration:
            asyncio.get_running_loop().call_later(duration, stop.set)

        async def bound_the_stop() -> None:
            await stop.wait()
            exit_after(stop_bound_s, "service")

        watchdog = asyncio.create_task(bound_the_stop())
        await body(stop)
        watchdog.cancel()

    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(main())


@app.command()
def up(
    duration: Duration = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON summary as the last line.")] = False,
    data_dir: DataDir = None,
    broker_port: Annotated[int | None, typer.Option(help="Embedded broker port [free port].")] = None,
    web_port: WebPort = None,
    nodes: Nodes = None,
    rate: Rate = None,
    seed: Annotated[int | None, typer.Option(help="Simulator seed.")] = None,
) -> None:
    """Start the whole platform: broker, ClickHouse, worker, dispatcher, API and simulator."""
    from suanwang.devstack.runtime import Platform

    _quiet_client_libraries()

    settings = load_settings(
        data_dir=data_dir, broker_port=broker_port, web_port=web_port, sim_nodes=nodes, sim_rate=rate, sim_seed=seed
    )
    summary = Platform(settings, live=not json_out and sys.stdout.isatty()).run(duration)
    if json_out:
        print(json.dumps(summary))


@app.command()
def worker(
    duration: Duration = None,
    data_dir: DataDir = None,
    api: Annotated[bool, typer.Option("--api", help="Serve the API too, in the same process as the store.")] = False,
) -> None:
    """Run the Faust monitoring worker: rollups, alerts and the ClickHouse sink."""
    from suanwang.streams.worker import run_worker

    settings = load_settings(data_dir=data_dir)
    bound = settings.worker_drain_s + 15  # the drain, then Faust's own stop
    _service(settings, duration, lambda stop: run_worker(settings, stop, with_api=api), stop_bound_s=bound)


@app.command()
def dispatcher(
    duration: Duration = None,
    scope: Annotated[
        str | None, typer.Option(help="Tier: national, province:<name> or industry:<name> (listed in dispatch tiers).")
    ] = None,
) -> None:
    """Run the dispatcher service: requests in, placements and rejections out."""
    from suanwang.dispatcher.service import DispatcherService

    settings = load_settings(dispatcher_scope=scope)
    _service(settings, duration, DispatcherService(settings).run)


@app.command("api")
def api_command(
    duration: Duration = None,
    data_dir: DataDir = None,
    web_port: WebPort = None,
) -> None:
    """Run the API and dashboard alone (against a ClickHouse server)."""
    from suanwang.api.server import start_api
    from suanwang.store import Store

    settings = load_settings(data_dir=data_dir, web_port=web_port)

    async def serve(stop: asyncio.Event) -> None:
        store = Store(settings)
        await store.run(store.migrate)
        runner = await start_api(settings, store)
        await stop.wait()
        await runner.cleanup()
        store.close()

    _service(settings, duration, serve, needs_kafka=False)


@app.command()
def simulate(
    duration: Duration = None,
    nodes: Nodes = None,
    rate: Rate = None,
    telemetry_interval: Annotated[
        float | None, typer.Option(help=_default_of("telemetry_interval_s", "Seconds between a node's samples"))
    ] = None,
    seed: Annotated[int | None, typer.Option(help=_default_of("sim_seed", "Seed"))] = None,
    time_scale: Annotated[
        float | None, typer.Option(help="Simulated seconds per real second, for task runtimes and trace arrivals.")
    ] = None,
    replay_nodes: Annotated[Path | None, typer.Option(help="Replay this trace's nodes.csv, not the model.")] = None,
    replay_tasks: Annotated[Path | None, typer.Option(help="... and its tasks.csv (both or neither).")] = None,
) -> None:
    """Drive the platform with the reference network model, or replay a recorded cluster trace."""
    from suanwang.simulator.simulate import Simulator

    settings = load_settings(
        sim_nodes=nodes,
        sim_rate=rate,
        telemetry_interval_s=telemetry_interval,
        sim_seed=seed,
        sim_time_scale=time_scale,
    )
    replay = _load_replay(replay_nodes, replay_tasks) if replay_nodes or replay_tasks else None
    _service(settings, duration, Simulator(settings, replay).run)


def _load_replay(nodes_csv: Path | None, tasks_csv: Path | None) -> Any:
    """The trace, with every skipped row reported on stderr; an error if nothing usable is left."""
    from suanwang.simulator.simulate import Replay
    from suanwang.simulator.trace import read_nodes, read_tasks, report
    from suanwang.topology import load_network

    if nodes_csv is None or tasks_csv is None:
        raise SuanwangError("--replay-nodes and --replay-tasks go together: give both CSV files")
    hubs = load_network().hub_ids
    nodes, tasks = read_nodes(nodes_csv, hubs, hubs[0]), read_tasks(tasks_csv)
    for line in report(nodes) + report(tasks):
        err.print(line, highlight=False, markup=False)
    if not nodes.rows:
        raise SuanwangError(f"{nodes_csv} has no usable node row")
    err.print(f"replaying {len(nodes.rows)} nodes and {len(tasks.rows)} tasks", highlight=False)
    return Replay(nodes.rows, tasks.rows, hubs[0])


@app.command()
def replay(
    nodes: Annotated[Path, typer.Option("--nodes", help="The trace's nodes.csv.")],
    tasks: Annotated[Path, typer.Option("--tasks", help="The trace's tasks.csv.")],
    out: Annotated[Path, typer.Option("--out", help="Where to write task_id,node_id,gpu_indices.")] = Path(
        "placements.csv"
    ),
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON summary object.")] = False,
) -> None:
    """Place a recorded cluster's tasks offline through the dispatcher core, in arrival order."""
    from suanwang.simulator.replay import replay as run

    summary = run(nodes, tasks, out, err)
    _report(summary, json_out, f"replay of {tasks}")


bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks: figures and ratios measured in one run.")
app.add_typer(bench_app, name="bench")
JsonOut = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")]


def _report(figures: dict[str, Any], json_out: bool, title: str) -> None:
    if json_out:
        print(json.dumps(figures))
        return
    table = Table(title=title)
    table.add_column("figure")
    table.add_column("value", justify="right")
    for name, value in figures.items():
        table.add_row(name, f"{value:,.2f}" if isinstance(value, float) else str(value))
    Console().print(table)


@bench_app.command("dispatch")
def bench_dispatch(
    nodes: Annotated[int, typer.Option(min=10, help="Nodes in the table.")] = 10_000,
    tasks: Annotated[int, typer.Option(min=1, help="Requests decided by numba.")] = 2_000,
    numpy_tasks: Annotated[
        int | None, typer.Option(min=1, help="The first requests also decided by NumPy (all by default).")
    ] = None,
    python_tasks: Annotated[int, typer.Option(min=1, help="The first requests also decided in pure Python.")] = 100,
    window: Annotated[
        int, typer.Option(min=1, help="Requests that can wait per window of the batch path (1 s at 50 tasks/s).")
    ] = 25,
    seed: Annotated[int, typer.Option(help="Workload seed.")] = 7,
    json_out: JsonOut = False,
) -> None:
    """Decision time of the numba core against NumPy and pure Python, after checking they agree; and the batch
    path's time per task for windows of work that can wait."""
    from suanwang.benches.dispatch import bench_dispatch as run

    figures = run(nodes, tasks, min(python_tasks, tasks), seed, err, window, numpy_tasks)
    _report(figures, json_out, f"dispatch: {nodes:,} nodes, {tasks:,} tasks")
    if not figures["identical"]:
        raise SuanwangError("the numba, NumPy and Python implementations decided differently")


@bench_app.command("quality")
def bench_quality(
    nodes: Annotated[int, typer.Option(min=10, help="Nodes in the network.")] = 2_000,
    tasks: Annotated[int, typer.Option(min=1, help="Requests over the simulated day.")] = 20_000,
    batch: Annotated[int, typer.Option(min=1, help="Tasks in the batch compared with the LP bound.")] = 600,
    batch_nodes: Annotated[int, typer.Option(min=10, help="Nodes the batch must fit on (few: capacity binds).")] = 300,
    seed: Annotated[int, typer.Option(help="Workload seed.")] = 7,
    time_limit: Annotated[
        float, typer.Option(min=0.01, max=600, help="Seconds the batch's solve may take (its whole window's).")
    ] = 2.0,
    json_out: JsonOut = False,
) -> None:
    """The default policy against baselines over a simulated day, and its gap to an LP lower bound."""
    need_extra("scipy", "bench", "bench quality's LP bound", "")
    from suanwang.benches.quality import bench_quality as run

    figures = run(nodes, tasks, batch, batch_nodes, seed, err, time_limit)
    if json_out:
        print(json.dumps(figures))
        return
    table = Table(title=f"quality: {nodes:,} nodes, {tasks:,} tasks over a day")
    columns = list(next(iter(figures["policies"].values())))
    table.add_column("policy")
    for column in columns:
        table.add_column(column, justify="right")
    for name, row in figures["policies"].items():
        table.add_row(name, *(f"{row[c]:,.3f}" if isinstance(row[c], float) else str(row[c]) for c in columns))
    Console().print(table)
    for label, prefix in (("dispatcher (batch path)", ""), ("greedy path alone", "greedy_")):
        gap = figures[f"{prefix}lower_bound_gap"]
        Console().print(
            f"{label}: batch of {batch} on {batch_nodes} nodes: {figures[f'{prefix}batch_placed']} placed, cost "
            f"{figures[f'{prefix}batch_cost']:,.2f} yuan; LP lower bound for them "
            + (f"{figures[f'{prefix}batch_lower_bound']:,.2f}; gap {gap:.2%}" if gap is not None else "not found")
        )


@bench_app.command("packing")
def bench_packing(
    trace_dir: Annotated[Path, typer.Option(help="A directory with an openb node list and pod list.")] = Path(
        "../shared/traces/openb"
    ),
    seeds: Annotated[int, typer.Option(min=1, help="Samples of the pod list, each placed by every policy.")] = 10,
    inflate: Annotated[float, typer.Option(min=1.0, max=5.0, help="Arrived GPU requests / GPUs at the end.")] = 1.3,
    gpu_spec: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Share of GPU pods bound to one chip model, drawn as GPUs are.")
    ] = 0.0,
    multi_gpu: Annotated[
        float | None,
        typer.Option(min=0.0, max=1.0, help="Share of GPU pods asking several whole GPUs [default: as listed]."),
    ] = None,
    json_out: JsonOut = False,
) -> None:
    """GPUs allocated by our policy and the field's baselines on an openb trace, every placement checked."""
    from suanwang.benches.packing import Variant
    from suanwang.benches.packing import bench_packing as run

    figures = run(trace_dir, seeds, inflate, err, Variant(gpu_spec, multi_gpu))
    if json_out:
        print(json.dumps(figures))
    else:
        table = Table(
            title=f"packing: {figures['nodes']:,} nodes, {figures['gpus']:,} GPUs, {seeds} seeds; of the GPU pods "
            f"drawn {figures['gpu_pods_bound_to_a_model']:.0%} bound to a model, "
            f"{figures['gpu_pods_multi_gpu']:.0%} multi-GPU"
        )
        columns = list(next(iter(figures["policies"].values())))
        table.add_column("policy")
        for column in columns:
            table.add_column(column.replace("_", " "), justify="right")
        for name, row in figures["policies"].items():
            table.add_row(name, *(f"{row[c]:.4f}" if isinstance(row[c], float) else str(row[c]) for c in columns))
        Console().print(table)
    broken = {name: row["violations"] for name, row in figures["policies"].items() if row["violations"]}
    if broken:
        raise SuanwangError(f"placements that broke a rule: {broken}")
    refused = {name: row["refused_though_it_fit"] for name, row in figures["policies"].items()}
    if any(refused.values()):  # a policy that turns work away that fits would buy its figure with the work
        raise SuanwangError(f"tasks refused though the bench's cluster had room for them: {refused}")


@bench_app.command("e2e")
def bench_e2e(
    rate: Annotated[float, typer.Option(min=1, help="Requests (and relayed messages) per second.")] = 1000,
    seconds: Annotated[float, typer.Option(min=1, help="Seconds of each run.")] = 20,
    nodes: Annotated[int, typer.Option(min=10, help="Nodes the dispatcher knows.")] = 10_000,
    json_out: JsonOut = False,
) -> None:
    """Request-to-decision latency through the broker, against a relay that does no work, in one run."""
    from suanwang.benches.e2e import bench_e2e as run

    _quiet_client_libraries()
    figures = run(load_settings(), rate, seconds, nodes, err)
    _report(figures, json_out, f"e2e: {rate:g} requests/s for {seconds:g} s, {nodes:,} nodes")


@bench_app.command("ingest")
def bench_ingest(
    events: Annotated[int, typer.Option(min=1, help="Telemetry events to send.")] = 200_000,
    nodes: Annotated[int, typer.Option(min=10, help="Nodes the events come from.")] = 2_000,
    rate: Annotated[float, typer.Option(min=0, help="Events/s the producer keeps to; 0: flat out (throughput).")] = 0,
    frame_size: Annotated[
        int, typer.Option(min=0, help="Samples per collector frame (one cluster's nodes); 0: one record a sample.")
    ] = 0,
    json_out: JsonOut = False,
) -> None:
    """Telemetry events per second through one worker, produced to stored and aggregated, and the lag."""
    from suanwang.benches.ingest import bench_ingest as run

    _quiet_client_libraries()
    figures = run(load_settings(), events, nodes, rate, err, frame_size)
    framed = f", {frame_size} a frame" if frame_size else ""
    _report(figures, json_out, f"ingest: {events:,} telemetry events from {nodes:,} nodes{framed}, one worker")
    if figures["rows_in_clickhouse"] != events:
        raise SuanwangError(f"{figures['rows_in_clickhouse']:,} rows stored for {events:,} events sent")


@bench_app.command("isolation")
def bench_isolation(
    seconds: Annotated[float, typer.Option(min=15, help="Length of the run: quiet, loaded, quiet, a third each.")] = 90,
    nodes: Nodes = None,
    rate: Rate = None,
    data_dir: DataDir = None,
    json_out: JsonOut = False,
) -> None:
    """Ten analysts' heavy queries during a run: ClickHouse's rows against Kafka's, sink delay, /api/hubs time."""
    from suanwang.benches.isolation import isolation

    _quiet_client_libraries()
    settings = load_settings(data_dir=data_dir, sim_nodes=nodes, sim_rate=rate, web_port=0)
    figures = isolation(settings, seconds)
    figures.pop("run")
    if json_out:
        print(json.dumps(figures))
    else:
        phases = figures["phases"]
        table = Table(title=f"isolation: {figures['analysts']} analysts in the middle third of {seconds:g} s")
        table.add_column("figure")
        for phase in phases:
            table.add_column(phase, justify="right")
        for name in next(iter(phases.values())):
            table.add_row(name, *(str(v[name]) for v in phases.values()))
        Console().print(table)
        Console().print(
            f"answers {figures['answers']}; sink flush interval {figures['sink_flush_s']:g} s; "
            f"rows in Kafka {figures['kafka_rows']}, in ClickHouse {figures['clickhouse_rows']}"
        )
    if not figures["rows_match"]:
        raise SuanwangError(f"ClickHouse holds {figures['clickhouse_rows']}, Kafka {figures['kafka_rows']}")


class Format(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


@bench_app.command("soak")
def bench_soak(
    minutes: Annotated[float, typer.Option(help="How long the platform runs.")] = 10.0,
    every: Annotated[float, typer.Option(help="Seconds between samples.")] = 10.0,
    nodes: Nodes = None,
    rate: Rate = None,
    data_dir: DataDir = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """The whole platform for MINUTES: memory growth, consumer lag and dispatch p99 over time."""
    from suanwang.benches.soak import soak

    _quiet_client_libraries()
    settings = load_settings(data_dir=data_dir, sim_nodes=nodes, sim_rate=rate, web_port=0)
    figures = soak(settings, minutes, every)
    if json_out:
        print(json.dumps(figures, default=str))
        return
    series = figures.pop("series")
    _report({k: json.dumps(v) if isinstance(v, dict) else v for k, v in figures.items() if k != "run"}, False, "soak")
    Console().print(f"{len(series)} samples; --json prints each")


@app.command()
def sql(
    query: Annotated[str, typer.Argument(help='A ClickHouse query, e.g. "SELECT count() FROM suanwang.placements".')],
    data_dir: DataDir = None,
    fmt: Annotated[Format, typer.Option("--format", help="Output format.")] = Format.table,
) -> None:
    """Query the history: embedded ClickHouse by default, through a running `up` if it holds the store."""
    from suanwang.query import run_query

    _quiet_client_libraries()
    settings = load_settings(data_dir=data_dir)
    columns, rows = run_query(settings, query)
    if fmt is Format.json:
        print(json.dumps([dict(zip(columns, r, strict=True)) for r in rows], default=str))
    elif fmt is Format.csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(columns)
        writer.writerows(rows)
    else:
        table = Table(*columns)
        for r in rows:
            table.add_row(*(str(v) for v in r))
        Console().print(table)


@app.command()
def settle(
    period: Annotated[str, typer.Option(help="The month, YYYY-MM (China Standard Time).")],
    data_dir: DataDir = None,
    json_out: JsonOut = False,
) -> None:
    """A month's statements per tenant, provider and network operator, reconciled to the ledger to the fen."""
    from suanwang.billing.settle import settle as run

    _quiet_client_libraries()
    report = run(load_settings(data_dir=data_dir), period)
    if json_out:
        print(json.dumps(report, default=str))
    else:
        _print_statements(report)
    if not report["balanced"]:
        err.print(f"[bold red]the statements of {period} do not reconcile:[/] {report['checks']}", highlight=False)
        raise typer.Exit(1)


def _yuan(fen: int) -> str:
    return f"{fen / 100:,.2f}"


def _print_statements(report: dict[str, Any]) -> None:
    out = Console()
    groups = (("tenants", "payable_fen"), ("providers", "earned_fen"), ("network_operators", "earned_fen"))
    for group, total in groups:
        table = Table(title=f"{report['period']} {group.replace('_', ' ')} (yuan)")
        for column in ("account", "records", "CU-hours", "compute", "energy", "transfer", "storage", "vouchers"):
            table.add_column(column, justify="left" if column == "account" else "right")
        table.add_column(total.removesuffix("_fen"), justify="right")
        table.add_column("ledger", justify="right")
        for s in report[group]:
            lines = [_yuan(s["lines_fen"][c]) for c in ("compute", "energy", "transfer", "storage")]
            vouchers = _yuan(-s["vouchers_fen"]) if "vouchers_fen" in s else ""
            mark = "" if s["reconciled"] else " ✗"
            table.add_row(
                s["account"],
                str(s["usage_records"]),
                f"{s['cu_hours']:,.1f}",
                *lines,
                vouchers,
                _yuan(s[total]),
                _yuan(s["ledger_fen"]) + mark,
            )
        out.print(table)
    c = report["checks"]
    out.print(
        f"ledger sum {c['ledger_sum_fen']} fen; {c['unbalanced_transactions']} unbalanced transactions; "
        f"{c['reconciled']}/{c['statements']} statements reconcile"
        + ("" if report["balanced"] else f"; unposted accounts: {c['unposted_accounts']}")
    )


token_app = typer.Typer(no_args_is_help=True, help="API tokens: each has a role and the scopes it covers.")
app.add_typer(token_app, name="token")
Role = Annotated[
    str, typer.Option(help="national_operator, provincial_operator, industry_operator, tenant or analyst.")
]
Many = Annotated[list[str] | None, typer.Option(help="Repeatable.")]


@token_app.command("new")
def token_new(
    name: Annotated[str, typer.Argument(help="Who holds the token, e.g. gansu-duty-desk.")],
    role: Role,
    province: Many = None,
    industry: Many = None,
    tenant: Annotated[str | None, typer.Option(help="The tenant whose tasks a tenant token may see.")] = None,
) -> None:
    """Make a token: prints it once, and the entry (its hash only) to add to SUANWANG_API_TOKENS_FILE."""
    from pydantic import ValidationError

    from suanwang.api.access import ROLES, new_token, token_entry_yaml
    from suanwang.topology import load_network

    if role not in ROLES:
        raise SuanwangError(f"--role {role!r} is not one of {', '.join(ROLES)}")
    token = new_token()
    try:
        entry = token_entry_yaml(
            name,
            role,
            token,
            load_network(),
            provinces=province,
            industries=industry,
            tenant=tenant,  # type: ignore[arg-type]
        )
    except ValidationError as exc:
        raise SuanwangError(f"token {name!r}: {exc.errors()[0]['msg'].removeprefix('Value error, ')}") from None
    Console(stderr=True).print("[bold]token[/] (shown once; give it to its holder):")
    print(token)
    Console(stderr=True).print("[bold]entry[/] to add under `tokens:` in the tokens file:")
    print(entry, end="")


def main() -> None:
    """Entry point: a SuanwangError becomes one line on stderr and exit code 2, never a traceback."""
    try:
        app(standalone_mode=False)
    except SuanwangError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)  # one line, as written
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:  # click usage errors arrive here in non-standalone mode
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
