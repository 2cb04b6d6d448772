"""Transport security: the TLS and SASL arguments of every Kafka, schema-registry and ClickHouse client, from settings.

Each client is built through one of these functions, so a deployment's security settings reach every
connection the platform opens; all unset means plaintext, as on the embedded broker.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from aiokafka.helpers import create_ssl_context

from suanwang.errors import SuanwangError
from suanwang.settings import Settings


def _existing(path: Path | None, variable: str) -> str | None:
    if path is not None and not path.is_file():
        raise SuanwangError(f"{variable}={str(path)!r}: no such file")
    return str(path) if path is not None else None


def kafka_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of SSL and SASL_SSL, verifying the brokers (hostname included); None for plaintext."""
    if not settings.kafka_security_protocol.endswith("SSL"):
        return None
    return create_ssl_context(
        cafile=_existing(settings.kafka_ssl_cafile, "SUANWANG_KAFKA_SSL_CAFILE"),
        certfile=_existing(settings.kafka_ssl_certfile, "SUANWANG_KAFKA_SSL_CERTFILE"),
        keyfile=_existing(settings.kafka_ssl_keyfile, "SUANWANG_KAFKA_SSL_KEYFILE"),
    )


def kafka_security(settings: Settings) -> dict[str, Any]:
    """aiokafka's security arguments (producers, consumers, the admin client)."""
    protocol = settings.kafka_security_protocol
    out: dict[str, Any] = {"security_protocol": protocol, "ssl_context": kafka_ssl_context(settings)}
    if protocol.startswith("SASL"):
        assert settings.kafka_sasl_password is not None  # Settings refuses SASL without credentials
        out |= {
            "sasl_mechanism": settings.kafka_sasl_mechanism,
            "sasl_plain_username": settings.kafka_sasl_username,
            "sasl_plain_password": settings.kafka_sasl_password.get_secret_value(),
        }
    return out


def faust_credentials(settings: Settings) -> Any:
    """The same security for the Faust workers' own consumers and producers (a faust Credentials, or None)."""
    import faust  # only workers need it

    context = kafka_ssl_context(settings)
    if settings.kafka_security_protocol.startswith("SASL"):
        assert settings.kafka_sasl_password is not None
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=settings.kafka_sasl_password.get_secret_value(),
            mechanism=settings.kafka_sasl_mechanism,
            ssl_context=context,
        )
    return faust.SSLCredentials(context) if context is not None else None


def registry_conf(settings: Settings) -> dict[str, str] | None:
    """confluent-kafka's SchemaRegistryClient configuration; None without a registry."""
    if not settings.schema_registry_url:
        return None
    conf = {"url": settings.schema_registry_url}
    if settings.schema_registry_username:
        password = settings.schema_registry_password.get_secret_value() if settings.schema_registry_password else ""
        conf["basic.auth.user.info"] = f"{settings.schema_registry_username}:{password}"
    ca = _existing(settings.schema_registry_ca_file, "SUANWANG_SCHEMA_REGISTRY_CA_FILE")
    if ca:
        conf["ssl.ca.location"] = ca
    return conf


def clickhouse_tls(settings: Settings) -> dict[str, Any]:
    """clickhouse-connect's TLS arguments for an https server (credentials ride in SUANWANG_CLICKHOUSE_URL)."""
    if not (settings.clickhouse_url or "").startswith("https://"):
        return {}
    ca = _existing(settings.clickhouse_ca_file, "SUANWANG_CLICKHOUSE_CA_FILE")
    return {"verify": settings.clickhouse_verify_tls, **({"ca_cert": ca} if ca else {})}
