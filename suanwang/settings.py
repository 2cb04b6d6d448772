"""All settings of every service, in one place; each is overridable by a SUANWANG_* variable."""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from suanwang.errors import SuanwangError

ENV_PREFIX = "SUANWANG_"


def default_of(name: str) -> Any:
    """A setting's default, for a constructor or a help text that must not state it a second time."""
    return Settings.model_fields[name].default


class Settings(BaseSettings):
    """Defaults run everything embedded; set the addresses to use real Kafka and ClickHouse."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_default=True)

    # Kafka
    kafka_bootstrap: str | None = Field(None, description="host:port[,host:port]; unset: start the embedded broker.")
    broker_port: int = Field(0, ge=0, le=65535, description="Embedded broker port; 0 picks a free one.")
    topic_prefix: str = Field("suanwang.", description="Prefix of every topic name.")
    topic_partitions: int = Field(3, ge=1, description="Partitions of each topic created by suanwang.")
    dispatch_partitions: int = Field(
        48,
        ge=1,
        description="Partitions of the dispatch path's topics: requests (national and tiers'), placements and "
        "rejections. Each of their records is sent at once, so each is its own batch, and the embedded broker "
        "lists every batch of a partition on each fetch that returns data from it: more partitions keep the "
        "fetches of the dispatcher and of those following its decisions short as a long run fills the log.",
    )
    topic_replication: int = Field(1, ge=1, description="Replication factor of each topic created by suanwang.")
    schema_registry_url: str | None = Field(None, description="Confluent-compatible registry; unset: local ids.")
    session_timeout_ms: int = Field(6000, ge=1000, description="Consumer-group session timeout.")
    fetch_max_wait_ms: int = Field(
        100,
        ge=1,
        le=10_000,
        description="Longest a consumer's fetch waits at the broker for data to arrive. Kafka answers as soon as "
        "data arrives, so it costs nothing there; the embedded tansu waits it out, and a shorter wait polls it "
        "harder (docs/benchmarks.md).",
    )
    dispatch_fetch_max_wait_ms: int = Field(
        20,
        ge=1,
        le=10_000,
        description="The fetch wait of the consumers on the dispatch path: the dispatcher's requests, and the "
        "placements `up` and the live dashboard follow. Each request may wait it out on the embedded broker, so it "
        "is short; the other consumers keep SUANWANG_FETCH_MAX_WAIT_MS and poll the broker less.",
    )
    metrics_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="Port of the Prometheus metrics of a worker, dispatcher or simulator; 0: none. `up` gives "
        "the three this port and the next two; the API serves its own at /metrics.",
    )
    bulk_linger_ms: int = Field(
        250,
        ge=0,
        le=1000,
        description="How long producers of bulk streams (telemetry, probes, the worker's rollups, alerts and "
        "bills) wait to fill a batch; task requests and the dispatcher's decisions go at once.",
    )
    # Kafka transport security (PLAINTEXT on the embedded broker; see the README's security section)
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="How clients talk to the brokers."
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "SCRAM-SHA-512", description="SASL mechanism with SASL_* protocols."
    )
    kafka_sasl_username: str | None = Field(None, description="SASL user; required with SASL_* protocols.")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password; required with SASL_* protocols.")
    kafka_ssl_cafile: Path | None = Field(None, description="CA bundle that signed the brokers; unset: system CAs.")
    kafka_ssl_certfile: Path | None = Field(None, description="Client certificate for mutual TLS.")
    kafka_ssl_keyfile: Path | None = Field(None, description="Key of the client certificate.")
    schema_registry_username: str | None = Field(None, description="Basic-auth user of the schema registry.")
    schema_registry_password: SecretStr | None = Field(None, description="Basic-auth password of the schema registry.")
    schema_registry_ca_file: Path | None = Field(None, description="CA bundle of an https schema registry.")
    # ClickHouse
    clickhouse_url: str | None = Field(None, description="http(s)://user:pass@host:port; unset: chdb in data_dir.")
    clickhouse_cluster: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="ClickHouse cluster of the history (remote_servers); set: each table Replicated on every shard "
        "behind a Distributed table of the same name.",
    )
    data_dir: Path = Field(Path("data"), description="Embedded ClickHouse data and service logs.")
    clickhouse_ca_file: Path | None = Field(None, description="CA bundle of an https ClickHouse; unset: system CAs.")
    clickhouse_verify_tls: bool = Field(True, description="Verify an https ClickHouse's certificate.")
    clickhouse_analyst_url: str | None = Field(
        None, description="DSN of a read-only ClickHouse user for analysts' SQL; unset: the main connection's."
    )
    # Analysts' SQL (/api/sql): limits of each query, and how many run at once
    analyst_max_in_flight: int = Field(2, ge=1, le=64, description="Analyst queries run at once; more get 429.")
    analyst_max_seconds: float = Field(10.0, gt=0, le=3600, description="Longest an analyst query may run.")
    analyst_max_memory_bytes: int = Field(1_000_000_000, ge=10_000_000, description="Memory one analyst query may use.")
    analyst_max_rows_read: int = Field(200_000_000, ge=1000, description="Rows one analyst query may read.")
    analyst_max_result_rows: int = Field(100_000, ge=1, description="Rows an analyst query may return.")
    analyst_max_result_bytes: int = Field(64_000_000, ge=1000, description="Bytes an analyst query may return.")
    analyst_max_threads: int = Field(1, ge=1, le=64, description="Threads one analyst query may use.")
    analyst_nice: int = Field(19, ge=0, le=19, description="Nice of analyst query threads: ingestion runs first.")
    sink_batch_size: int = Field(2000, ge=1, description="Rows per ClickHouse insert at most.")
    sink_flush_s: float = Field(1.0, gt=0, description="Seconds a row waits for its batch at most.")
    # Web
    web_host: str = Field("127.0.0.1", description="Address the API and dashboard listen on.")
    web_port: int = Field(8080, ge=0, le=65535, description="Port of the API and dashboard; 0 picks a free one.")
    web_assets_dir: Path | None = Field(
        None, description="node_modules with the dashboard's plotly.js and map outlines; unset: the one make installs."
    )
    api_tokens_file: Path | None = Field(None, description="YAML file of API tokens (hashes, roles, scopes).")
    api_tokens: SecretStr | None = Field(None, description="The same YAML as text; wins over the file.")
    api_open: bool = Field(
        False, description="Serve the API without tokens on a non-loopback address (never in production)."
    )
    api_token: SecretStr | None = Field(None, description="Token the CLI presents to a running API.")
    # Dispatcher
    dispatcher_scope: str = Field(
        "national",
        pattern=r"^(national|(province|industry):.+)$",
        description="Tier of this dispatcher: national, province:<name> or industry:<name>.",
    )
    dispatch_tiers: str = Field(
        "", description="Delegated tiers, comma-separated (province:Gansu,industry:genomics); the same for all."
    )
    dispatch_start_timeout_s: float = Field(
        300.0, gt=0, description="Seconds a placement may wait for its task to start before its capacity is freed."
    )
    dispatch_remembered_decisions: int = Field(
        50_000, ge=1, description="Newest decisions kept to answer a redelivered request the same way."
    )
    dispatch_batch_window_s: float = Field(
        1.0, ge=0, le=60, description="Seconds work that can wait (no latency tier) is gathered to be placed together."
    )
    dispatch_batch_windows: str = Field(
        "", description="Windows per task kind overriding it, e.g. training=2,backup=5 (0 to 60 s; 0: greedy)."
    )
    dispatch_batch_time_limit_s: float = Field(
        0.2, gt=0, le=10, description="Longest a window's solve may run; the best assignment found by then is used."
    )
    dispatch_failover_grace_s: float = Field(
        30.0, ge=0, le=3600, description="Seconds a node stays offline before its tasks are dispatched again."
    )
    dispatch_max_attempts: int = Field(
        4, ge=1, le=20, description="Attempts a task gets (node failures and preemptions) before it is rejected."
    )
    dispatch_retry_backoff_s: float = Field(
        1.0, gt=0, le=3600, description="Wait before a task's second re-dispatch; doubles with each one after."
    )
    carbon_price_yuan_per_kg: float = Field(0.1, ge=0, description="Price put on each kg of CO2 emitted.")
    dispatch_hold_yuan_per_kwh: float = Field(
        0.5,
        ge=0,
        description="Price of capacity held idle before a deferred start, per kWh the task draws and hour held: "
        "work with a deadline starts later only when that saves more in power and carbon.",
    )
    market_interval_s: float = Field(
        10.0, gt=0, description="Seconds between two price updates of the market (network.yaml `market`)."
    )
    # Billing
    tenants_file: Path | None = Field(
        None, description="YAML file of tenants and their vouchers; unset: the shipped book of the simulator's tenants."
    )
    billing_interval_s: float = Field(5.0, gt=0, description="Seconds between two billing runs of the worker.")
    billing_grace_s: float = Field(
        60.0, ge=0, description="Seconds a task's last event waits for late ones before the task is billed."
    )
    # Monitoring
    worker_drain_s: float = Field(
        45.0, ge=0, description="Seconds a stopping worker may take to store what it has read."
    )
    worker_group: str | None = Field(None, description="Consumer group of the workers; unset: <prefix>worker.")
    telemetry_interval_s: float = Field(5.0, gt=0, description="Seconds between two samples of one node.")
    offline_after_intervals: int = Field(
        3, ge=1, description="Telemetry intervals of silence before a node is offline."
    )
    window_lateness_s: float = Field(5.0, ge=0, description="Event-time lateness a window waits for before closing.")
    max_clock_skew_s: float = Field(300.0, gt=0, description="Telemetry stamped further in the future is refused.")
    alert_overload_util: float = Field(0.9, gt=0, le=1, description="Load above this for 5 min alerts as overload.")
    alert_inlet_temp_c: float = Field(35.0, description="Inlet temperature that alerts as overheating.")
    alert_pue_max: float = Field(1.25, ge=1, description="Policy PUE of hub data centres; a cluster above it alerts.")
    alert_green_share_min: float = Field(0.8, ge=0, le=1, description="Green share a hub data centre must keep.")
    alert_idle_util: float = Field(0.2, ge=0, le=1, description="A hub or province below this load is idle...")
    alert_saturated_util: float = Field(0.8, ge=0, le=1, description="...while another above this is saturated.")
    alert_overload_margin: float = Field(
        0.1, ge=0, le=1, description="An overload clears once the 5-min mean load is this far under its threshold."
    )
    alert_inlet_temp_margin_c: float = Field(
        3.0, ge=0, description="Overheating clears once the inlet is this many °C under its threshold."
    )
    alert_pue_margin: float = Field(0.02, ge=0, description="A PUE alert clears once PUE is this far under the policy.")
    alert_green_share_margin: float = Field(
        0.02, ge=0, le=1, description="A green-share alert clears once the share is this far above the minimum."
    )
    alert_latency_margin: float = Field(
        0.1, ge=0, description="A latency-tier alert clears once p99 is under its tier by this share of the tier."
    )
    # Simulator
    sim_nodes: int = Field(1000, ge=10, description="Nodes in the simulated network.")
    sim_rate: float = Field(50.0, ge=0, description="Task requests per second.")
    sim_seed: int = Field(7, description="Seed of the simulator's random streams.")
    sim_time_scale: float = Field(360.0, gt=0, description="Simulated seconds of task runtime per real second.")
    sim_frames: bool = Field(
        True, description="Send each cluster's samples as one collector frame per interval; false: one a record."
    )
    sim_kill_nodes: int = Field(0, ge=0, description="Nodes the simulator kills (silent, tasks lost) during a run.")
    sim_kill_after_s: float = Field(60.0, ge=0, description="Seconds into a run at which those nodes are killed.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level of services.")

    @field_validator("dispatch_batch_windows")
    @classmethod
    def _windows_in_bounds(cls, value: str) -> str:
        parse_windows(value)
        return value

    @property
    def batch_windows(self) -> dict[str, float]:
        """The batch window of each task kind named in `dispatch_batch_windows`."""
        return parse_windows(self.dispatch_batch_windows)

    @model_validator(mode="after")
    def _sasl_has_credentials(self) -> Settings:
        sasl = self.kafka_security_protocol.startswith("SASL")
        if sasl and not (self.kafka_sasl_username and self.kafka_sasl_password):
            raise ValueError(
                f"SUANWANG_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs SUANWANG_KAFKA_SASL_USERNAME "
                "and SUANWANG_KAFKA_SASL_PASSWORD"
            )
        return self

    @property
    def chdb_path(self) -> Path:
        return (self.data_dir / "clickhouse").resolve()

    @property
    def api_url_path(self) -> Path:
        """Where a running API leaves its address, for `suanwang sql` and `settle` to find it."""
        return self.data_dir / "run" / "api.url"

    def to_env(self) -> dict[str, str]:
        """These settings as SUANWANG_* variables, to hand to a child service."""
        env = {}
        for name, value in self.model_dump().items():
            if value is not None:
                secret = isinstance(value, SecretStr)
                env[ENV_PREFIX + name.upper()] = value.get_secret_value() if secret else str(value)
        return env


MAX_BATCH_WINDOW_S = 60.0


def parse_windows(text: str) -> dict[str, float]:
    """`kind=seconds,…` as a dict; ValueError naming the entry that is malformed or out of 0..60 s."""
    windows = {}
    for entry in filter(None, (e.strip() for e in text.split(","))):
        kind, _, seconds = entry.partition("=")
        try:
            value = float(seconds)
        except ValueError:
            raise ValueError(f"{entry!r} is not kind=seconds") from None
        if not kind.strip() or not 0 <= value <= MAX_BATCH_WINDOW_S:
            raise ValueError(f"{entry!r}: a window is a kind and 0 to {MAX_BATCH_WINDOW_S:g} seconds")
        windows[kind.strip()] = value
    return windows


def unknown_variables(environ: dict[str, str] | None = None) -> list[str]:
    """SUANWANG_* variables that name no setting: almost always a typo worth stopping for."""
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    env = os.environ if environ is None else environ
    return sorted(k for k in env if k.startswith(ENV_PREFIX) and k not in known)


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment plus CLI overrides; SuanwangError naming the bad variable."""
    for var in unknown_variables():
        known = [ENV_PREFIX + n.upper() for n in Settings.model_fields]
        hint = difflib.get_close_matches(var, known, n=1)
        raise SuanwangError(f"{var} is not a setting" + (f"; did you mean {hint[0]}?" if hint else ""))
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        err = exc.errors()[0]
        if not err["loc"]:  # a rule across settings names its variables itself
            raise SuanwangError(err["msg"].removeprefix("Value error, ")) from None
        source = ENV_PREFIX + str(err["loc"][0]).upper()
        raise SuanwangError(f"{source}={err.get('input')!r}: {err['msg'].removeprefix('Value error, ')}") from None
