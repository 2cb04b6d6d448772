"""However `suanwang up` ends, nothing it started outlives it: a `kill -9` of `up` ends the broker and every
service, and while a run holds a data directory a second one refuses, naming it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from suanwang.lifeline import RunFile, die_with_parent
from tests.conftest import run_cli

pytestmark = pytest.mark.e2e

SMALL = ["--nodes", "50", "--rate", "5", "--web-port", "0"]


def wait_for_pids(run_file: RunFile, count: int, up: subprocess.Popen[str], timeout_s: float = 120) -> list[int]:
    """The run file once it names `count` live processes: `up`, the broker, worker, dispatcher and simulator."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert up.poll() is None, f"up ended early with {up.returncode}"
        pids = run_file.still_running()
        if len(pids) >= count:
            return pids
        time.sleep(0.2)
    raise AssertionError(f"run file {run_file.path} never named {count} live processes")


def running(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def ended(procs: list[psutil.Process], timeout_s: float) -> int:
    """How many of `procs` have ended (a zombie has: only its reaper is left to act) once all have, or fails."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = [p for p in procs if running(p)]
        if not alive:
            return len(procs)
        time.sleep(0.2)
    raise AssertionError(f"still running {timeout_s:.0f} s after `up` was killed: {[p.cmdline() for p in alive]}")


def test_kill_9_of_up_leaves_nothing_running_and_a_second_up_names_the_first(tmp_path: Path) -> None:
    data = tmp_path / "data"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SUANWANG_")}
    env = {**clean, "SUANWANG_WORKER_DRAIN_S": "3", "PYTHONUNBUFFERED": "1"}
    up = subprocess.Popen(
        [sys.executable, "-m", "suanwang", "up", "--data-dir", str(data), *SMALL],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
        preexec_fn=die_with_parent(),
    )
    try:
        pids = wait_for_pids(RunFile(data), 5, up)
        procs = [psutil.Process(p) for p in pids]
        assert up.pid in pids

        second = run_cli("up", "--data-dir", str(data), "--duration", "5", *SMALL, env={"SUANWANG_WORKER_DRAIN_S": "3"})
        assert second.returncode == 2, second.stderr[-2000:]
        assert "still running (pids" in second.stderr and str(up.pid) in second.stderr
        assert all(p.is_running() for p in procs)  # the refusal touched nothing of the first run

        up.send_signal(signal.SIGKILL)
        up.wait(timeout=10)
        assert ended([p for p in procs if p.pid != up.pid], timeout_s=90) == 4
    finally:
        if up.poll() is None:
            up.kill()
        for pid in RunFile(data).still_running():  # a failed assertion above must not leave the run behind
            os.kill(pid, signal.SIGKILL)


def test_kill_9_of_any_process_holding_an_embedded_broker_ends_the_broker(tmp_path: Path) -> None:
    """What `suanwang bench ingest` and pytest do: start the broker in-process, then die without a word."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_A_BROKER],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        broker = psutil.Process(int(holder.stdout.readline()))  # type: ignore[union-attr]
        assert running(broker) and "tansu" in " ".join(broker.cmdline())
        holder.kill()
        holder.wait(timeout=10)
        assert ended([broker], timeout_s=30) == 1
    finally:
        holder.kill()


HOLD_A_BROKER = """
import sys, threading
from suanwang.devstack.broker import EmbeddedBroker
broker = EmbeddedBroker()
broker.start()
print(broker.pid, flush=True)
threading.Event().wait()
"""
