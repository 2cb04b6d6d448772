"""Real components only: the embedded tansu broker and a chdb store, one each per session (per xdist worker)."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest

from suanwang.devstack.broker import EmbeddedBroker
from suanwang.lifeline import die_with_parent
from suanwang.settings import Settings
from suanwang.store import Store

_prefixes = itertools.count()
CHROMIUM = Path("/usr/bin/chromium")  # Debian's; the browser tests never download one


# tests that run the platform's services as processes, or time them against each other: one xdist worker runs
# them one after another, so they never starve each other of the machine's two cores
WHOLE_PLATFORM = {
    "test_e2e.py",
    "test_faults.py",
    "test_scale_out.py",
    "test_soak.py",
    "test_isolation.py",
    "test_lifecycle.py",
    "test_monitoring.py",
    "test_bench_e2e.py",
}


BROKER_FIXTURES = {"broker", "settings"}  # a test using one needs the embedded broker: slow, `make check` leaves it out


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups (--dist loadgroup)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Browser tests without the browser stop the run before it starts, with the one line to run; the tests that
    run the whole platform share one xdist group (`make test` distributes by group); the tests that need the
    broker are marked slow (`make check` runs the others)."""
    if not CHROMIUM.exists() and any(item.path.name == "test_dashboard_browser.py" for item in items):
        pytest.exit(f"{CHROMIUM} is missing: `make test` installs it; or: apt-get install chromium fonts-wqy-zenhei")
    for item in items:
        if item.path.name in WHOLE_PLATFORM:
            item.add_marker(pytest.mark.xdist_group("whole-platform"))
        if item.path.name in WHOLE_PLATFORM | {"test_dashboard_browser.py"} or BROKER_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> EmbeddedBroker:
    log = tmp_path_factory.mktemp("broker") / "broker.log"
    with EmbeddedBroker(log_path=log) as running:
        yield running


@pytest.fixture(scope="session")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="session")
def store(store_dir: Path) -> Store:
    """The one chdb store of this process (chdb allows one data path per process)."""
    opened = Store(Settings(data_dir=store_dir))
    opened.migrate()
    yield opened
    opened.close()


@pytest.fixture()
def settings(broker: EmbeddedBroker, store_dir: Path) -> Settings:
    """Settings on the shared broker with topics of their own, so tests never see each other's events."""
    return Settings(
        kafka_bootstrap=broker.bootstrap,
        topic_prefix=f"t{next(_prefixes)}-{os.getpid()}.",
        data_dir=store_dir,
        session_timeout_ms=6000,
    )


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """`suanwang ARGS` in a fresh process, with only the given SUANWANG_* variables."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SUANWANG_")}
    return subprocess.run(
        [sys.executable, "-m", "suanwang", *args],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=die_with_parent(),  # a test worker killed takes its `suanwang` with it
    )
