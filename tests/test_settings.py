"""Settings: environment overrides, clear errors, and agreement with docker-compose and docs/settings.md."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from xml.etree import ElementTree

import pytest
import yaml

from suanwang import settings_doc
from suanwang.errors import SuanwangError
from suanwang.settings import ENV_PREFIX, Settings, load_settings, unknown_variables

ROOT = Path(__file__).resolve().parents[1]


def test_environment_overrides_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUANWANG_WEB_PORT", "9999")
    monkeypatch.setenv("SUANWANG_KAFKA_BOOTSTRAP", "k1:9092,k2:9092")
    s = load_settings()
    assert (s.web_port, s.kafka_bootstrap) == (9999, "k1:9092,k2:9092")
    assert load_settings(web_port=1234).web_port == 1234


def test_bad_value_names_the_variable_and_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUANWANG_WEB_PORT", "eighty")
    with pytest.raises(SuanwangError, match=r"SUANWANG_WEB_PORT='eighty': .*integer"):
        load_settings()


def test_misspelt_variable_is_refused_with_a_suggestion(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUANWANG_KAFKA_BOOTSTAP", "x:1")
    with pytest.raises(
        SuanwangError, match="SUANWANG_KAFKA_BOOTSTAP is not a setting; did you mean SUANWANG_KAFKA_BOOTSTRAP"
    ):
        load_settings()


def test_to_env_round_trips() -> None:
    s = Settings(kafka_bootstrap="h:1", sim_rate=12.5, data_dir=Path("/tmp/x"))
    env = s.to_env()
    assert not unknown_variables(env)
    assert Settings(**{k.removeprefix(ENV_PREFIX).lower(): v for k, v in env.items()}) == s


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_sets_only_real_settings() -> None:
    compose = _compose()
    names = {
        k for svc in compose["services"].values() for k in (svc.get("environment") or {}) if k.startswith(ENV_PREFIX)
    }
    assert names, "compose sets no SUANWANG_* variable"
    assert not unknown_variables({n: "" for n in names})
    suanwang_services = [n for n, svc in compose["services"].items() if svc.get("build")]
    assert sorted(suanwang_services) == ["api", "dispatcher", "simulate", "worker"]
    for svc in compose["services"].values():
        if svc.get("environment") and any(k.startswith(ENV_PREFIX) for k in svc["environment"]):
            values = {k.removeprefix(ENV_PREFIX).lower(): v for k, v in svc["environment"].items()}
            Settings(**values)  # every value parses


def test_compose_images_are_pinned() -> None:
    for name, svc in _compose()["services"].items():
        if "image" in svc:
            assert re.fullmatch(r"[\w./-]+:v?\d[\w.-]*", svc["image"]), f"{name}: {svc['image']} is not pinned"
    assert re.search(r"^FROM python:\d+\.\d+\.\d+", (ROOT / "Dockerfile").read_text(), re.M)


def test_the_image_has_every_package_directory() -> None:
    """A package directory pyproject maps but the Dockerfile does not copy would break the image's install."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    dockerfile = (ROOT / "Dockerfile").read_text()
    for folder in set(pyproject["tool"]["setuptools"]["package-dir"].values()):
        assert re.search(rf"^COPY {folder} \./{folder}$", dockerfile, re.M), f"the Dockerfile does not copy {folder}/"


def test_the_settings_reference_is_generated_from_the_settings_and_current() -> None:
    page = (ROOT / "docs" / "settings.md").read_text(encoding="utf-8")
    assert page == settings_doc.render(), "docs/settings.md is stale: run `make docs`"
    assert all(f"| `{ENV_PREFIX}{name.upper()}` |" in page for name in Settings.model_fields)
    assert "| `SUANWANG_BROKER_PORT` | int | `0` | ≥ 0, ≤ 65535 |" in page  # type, default and bounds
    assert "`PLAINTEXT`, `SSL`, `SASL_PLAINTEXT`, `SASL_SSL`" in page  # a choice's values


def test_the_scale_out_layout_is_three_brokers_two_shards_of_two_and_a_dispatcher_per_tier() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.cluster.yml").read_text())
    services = compose["services"]
    env = compose["x-suanwang-env"]
    Settings(**{k.removeprefix(ENV_PREFIX).lower(): v for k, v in env.items()})  # every value parses
    assert not unknown_variables(env)
    for name, svc in services.items():
        if "image" in svc:
            assert re.fullmatch(r"[\w./-]+:v?\d[\w.-]*", svc["image"]), name
        extra = {k: v for k, v in (svc.get("environment") or {}).items() if k.startswith(ENV_PREFIX)}
        Settings(**{k.removeprefix(ENV_PREFIX).lower(): v for k, v in {**env, **extra}.items()})
    brokers = [s for n, s in services.items() if n.startswith("kafka-")]
    assert len(brokers) == 3 and env["SUANWANG_KAFKA_BOOTSTRAP"].count("kafka-") == 3
    kafka = compose["x-kafka-env"]
    assert (kafka["KAFKA_DEFAULT_REPLICATION_FACTOR"], kafka["KAFKA_MIN_INSYNC_REPLICAS"]) == (3, 2)
    assert env["SUANWANG_TOPIC_REPLICATION"] == "3"
    # the cluster the DDL is rendered for is the one ClickHouse's config defines, two shards of two replicas
    config = ElementTree.parse(ROOT / "deploy/clickhouse/cluster.xml").getroot()
    cluster = config.find(f"remote_servers/{env['SUANWANG_CLICKHOUSE_CLUSTER']}")
    assert cluster is not None
    hosts = [[r.findtext("host") for r in shard.findall("replica")] for shard in cluster.findall("shard")]
    assert [len(h) for h in hosts] == [2, 2]
    for shard, replicas in enumerate(hosts, start=1):
        for host in replicas:
            assert services[host]["environment"]["CLICKHOUSE_SHARD"] == str(shard)
            assert services[host]["environment"]["CLICKHOUSE_REPLICA"] == host
    assert services["worker"]["deploy"]["replicas"] >= 2
    scopes = {s["command"][-1] for n, s in services.items() if n.startswith("dispatcher-")}
    assert scopes == {"national", *env["SUANWANG_DISPATCH_TIERS"].split(",")}
