"""Every process suanwang starts ends with its parent, however the parent ends (`kill -9` included), and a
service asked to stop ends within its bound even when what it drains to is gone."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import psutil

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(sig: signal.Signals = signal.SIGTERM) -> Callable[[], None] | None:
    """A `preexec_fn` that has the kernel send `sig` to the child when this process ends (None off Linux).
    The signal follows the thread that forks, so start children from the main thread."""
    if not sys.platform.startswith("linux"):
        return None
    parent = os.getpid()

    def arm() -> None:
        end_with(parent, sig)  # and if the parent died before the signal was armed, now

    return arm


def end_with(parent: int, sig: signal.Signals = signal.SIGTERM) -> None:
    """The same, armed from inside a child that was not started through a `preexec_fn` (multiprocessing)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:
            os.kill(os.getpid(), sig)


def exit_after(seconds: float, what: str) -> threading.Timer:
    """Ends the process `seconds` from now unless it has ended by then: a stop that hangs (a broker gone, a
    drain that cannot finish) still ends. A thread, so a blocked event loop cannot hold it back."""

    def give_up() -> None:
        with contextlib.suppress(OSError):  # stderr may be a pipe whose reader is gone (a parent killed)
            print(f"{what}: still stopping after {seconds:.0f} s; exiting now", file=sys.stderr, flush=True)
        os._exit(3)

    timer = threading.Timer(seconds, give_up)
    timer.daemon = True
    timer.start()
    return timer


class RunFile:
    """The processes of one `suanwang up` of a data directory, written while it runs, so the next one can say
    what still holds the directory and how to stop it."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "run" / "up.pids"

    def still_running(self) -> list[int]:
        """Pids of an earlier run that are still alive and still suanwang or its broker."""
        if not self.path.exists():
            return []
        alive = []
        for text in self.path.read_text().split():
            try:
                proc = psutil.Process(int(text))
                line = " ".join(proc.cmdline())
            except (ValueError, psutil.Error):
                continue
            if "suanwang" in line or "tansu" in line:
                alive.append(proc.pid)
        return alive

    def write(self, pids: list[int]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("\n".join(str(p) for p in pids) + "\n")

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
