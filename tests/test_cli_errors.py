"""Bad input and bad surroundings end in one clear line and a non-zero exit, never a traceback."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.conftest import run_cli


def _one_clear_line(result, *fragments: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    text = " ".join(result.stderr.split())
    assert text.startswith("error:")
    for fragment in fragments:
        assert fragment in text, text


def test_unknown_setting_value() -> None:
    _one_clear_line(run_cli("up", "--duration", "1", env={"SUANWANG_SIM_RATE": "fast"}), "SUANWANG_SIM_RATE='fast'")


def test_misspelt_setting() -> None:
    _one_clear_line(
        run_cli("sql", "SELECT 1", env={"SUANWANG_CLICKHOUSE_ULR": "x"}),
        "SUANWANG_CLICKHOUSE_ULR is not a setting",
        "SUANWANG_CLICKHOUSE_URL",
    )


def test_unreachable_external_broker(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    result = run_cli(
        "up",
        "--duration",
        "1",
        "--data-dir",
        str(tmp_path),
        "--web-port",
        "0",
        env={"SUANWANG_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}"},
    )
    _one_clear_line(result, f"cannot reach Kafka at 127.0.0.1:{port}", "SUANWANG_KAFKA_BOOTSTRAP")


def test_unreachable_clickhouse_server() -> None:
    result = run_cli("sql", "SELECT 1", env={"SUANWANG_CLICKHOUSE_URL": "http://127.0.0.1:1"})
    _one_clear_line(result, "cannot reach ClickHouse at http://127.0.0.1:1", "SUANWANG_CLICKHOUSE_URL")


def test_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = run_cli("up", "--duration", "1", "--data-dir", str(tmp_path), "--web-port", str(port))
    _one_clear_line(result, f"port {port} for the web API is in use", "--web-port")


def test_broker_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = run_cli(
            "up", "--duration", "1", "--data-dir", str(tmp_path), "--web-port", "0", "--broker-port", str(port)
        )
    _one_clear_line(result, f"port {port} for the embedded broker is in use")


def test_corrupt_data_dir(tmp_path: Path) -> None:
    (tmp_path / "clickhouse").write_text("not a directory")
    _one_clear_line(run_cli("sql", "SELECT 1", "--data-dir", str(tmp_path)), "is a file, not a ClickHouse data")


def test_data_dir_held_by_another_process(store, store_dir: Path) -> None:
    # this test process holds the session store; a second process is told so (no API is running there)
    result = run_cli("sql", "SELECT 1", "--data-dir", str(store_dir))
    _one_clear_line(result, "in use by another process")


def test_bad_query_names_the_problem(tmp_path: Path) -> None:
    _one_clear_line(run_cli("sql", "SELECT nope FROM suanwang.placements", "--data-dir", str(tmp_path)), "query failed")


def test_standalone_service_needs_kafka() -> None:
    _one_clear_line(run_cli("dispatcher", "--duration", "1"), "SUANWANG_KAFKA_BOOTSTRAP is not set")


@pytest.mark.parametrize("command", ["up", "worker", "dispatcher", "api", "simulate", "sql"])
def test_every_command_has_help(command: str) -> None:
    result = run_cli(command, "--help")
    assert result.returncode == 0 and "Usage" in result.stdout


@pytest.mark.slow  # seconds of subprocesses or timeouts: make test runs it, make check does not
def test_settle_names_a_bad_period_and_a_bad_tenants_file(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    _one_clear_line(run_cli("settle", "--period", "2026-13", "--data-dir", data), "'2026-13'", "YYYY-MM")
    book = tmp_path / "tenants.yaml"
    book.write_text("tenants: {}\nvouchers: [{id: v, tenant: ghost}]\n")
    _one_clear_line(
        run_cli("settle", "--period", "2026-11", "--data-dir", data, env={"SUANWANG_TENANTS_FILE": str(book)}),
        f"{book} is invalid",
    )
    empty = run_cli("settle", "--period", "2026-11", "--data-dir", data, "--json")
    assert empty.returncode == 0, empty.stderr
    assert '"balanced": true' in empty.stdout and '"statements": 0' in empty.stdout
