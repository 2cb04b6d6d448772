"""Transport security: the client configurations every Kafka, schema-registry and ClickHouse client is built from."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import certifi
import faust
import pytest
from aiokafka import AIOKafkaProducer

from suanwang.bus import client_kwargs, consumer_kwargs
from suanwang.errors import SuanwangError
from suanwang.security import clickhouse_tls, faust_credentials, kafka_security, registry_conf
from suanwang.settings import Settings, load_settings
from suanwang.streams.app import faust_app

CA = Path(certifi.where())  # any real PEM bundle will do


def sasl_ssl(**over: object) -> Settings:
    base = {
        "kafka_bootstrap": "kafka-1:9093",
        "kafka_security_protocol": "SASL_SSL",
        "kafka_sasl_username": "suanwang-worker",
        "kafka_sasl_password": "s3cret",
        "kafka_ssl_cafile": CA,
    }
    return Settings(**(base | over))


def test_plaintext_by_default() -> None:
    settings = Settings(kafka_bootstrap="h:1")
    assert kafka_security(settings) == {"security_protocol": "PLAINTEXT", "ssl_context": None}
    assert faust_credentials(settings) is None
    assert registry_conf(settings) is None and clickhouse_tls(settings) == {}


def test_sasl_ssl_reaches_every_kafka_client(tmp_path: Path) -> None:
    settings = sasl_ssl(data_dir=tmp_path)
    args = client_kwargs(settings)
    assert args["security_protocol"] == "SASL_SSL" and args["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (args["sasl_plain_username"], args["sasl_plain_password"]) == ("suanwang-worker", "s3cret")
    context = args["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert consumer_kwargs(settings, "g")["security_protocol"] == "SASL_SSL"

    async def build() -> str:  # aiokafka accepts every argument (it connects only on start)
        return AIOKafkaProducer(**args).client._security_protocol

    assert asyncio.run(build()) == "SASL_SSL"
    credentials = faust_app(settings, "security-test").conf.broker_credentials
    assert isinstance(credentials, faust.SASLCredentials)
    assert (credentials.username, credentials.password, credentials.mechanism.value) == (
        "suanwang-worker",
        "s3cret",
        "SCRAM-SHA-512",
    )
    assert credentials.ssl_context.verify_mode == ssl.CERT_REQUIRED


def test_mutual_tls_without_sasl() -> None:
    settings = Settings(kafka_bootstrap="h:1", kafka_security_protocol="SSL", kafka_ssl_cafile=CA)
    assert "sasl_mechanism" not in kafka_security(settings)
    assert isinstance(faust_credentials(settings), faust.SSLCredentials)


def test_sasl_without_credentials_is_refused_naming_the_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUANWANG_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("SUANWANG_KAFKA_SASL_USERNAME", "u")
    with pytest.raises(
        SuanwangError, match="SASL_SSL needs SUANWANG_KAFKA_SASL_USERNAME and SUANWANG_KAFKA_SASL_PASSWORD"
    ):
        load_settings()


def test_a_missing_certificate_file_is_named() -> None:
    settings = sasl_ssl(kafka_ssl_cafile=Path("/nowhere/ca.pem"))
    with pytest.raises(SuanwangError, match="SUANWANG_KAFKA_SSL_CAFILE='/nowhere/ca.pem': no such file"):
        client_kwargs(settings)


def test_schema_registry_auth_and_clickhouse_tls() -> None:
    settings = Settings(
        schema_registry_url="https://registry:8081",
        schema_registry_username="sr",
        schema_registry_password="pw",
        schema_registry_ca_file=CA,
        clickhouse_url="https://suanwang:pw@clickhouse:8443",
        clickhouse_ca_file=CA,
    )
    assert registry_conf(settings) == {
        "url": "https://registry:8081",
        "basic.auth.user.info": "sr:pw",
        "ssl.ca.location": str(CA),
    }
    assert clickhouse_tls(settings) == {"verify": True, "ca_cert": str(CA)}
    assert clickhouse_tls(Settings(clickhouse_url="http://c:8123")) == {}


def test_secrets_reach_child_services_but_never_print() -> None:
    settings = sasl_ssl()
    assert settings.to_env()["SUANWANG_KAFKA_SASL_PASSWORD"] == "s3cret"
    assert "s3cret" not in repr(settings) and "s3cret" not in str(settings.model_dump())


def test_only_the_consumers_on_the_dispatch_path_fetch_with_its_short_wait() -> None:
    """On the embedded broker a fetch waits its wait out: the consumers a request waits on use the dispatch
    path's, every other keeps the longer one and polls the broker less."""
    settings = Settings(fetch_max_wait_ms=100, dispatch_fetch_max_wait_ms=20)
    assert consumer_kwargs(settings, "g")["fetch_max_wait_ms"] == 100
    assert consumer_kwargs(settings, "g", dispatch_path=True)["fetch_max_wait_ms"] == 20
