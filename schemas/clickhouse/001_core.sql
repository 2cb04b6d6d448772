-- suanwang history, version 001. Column names are the Avro field names of each table's topic
-- (schemas/topics.py maps topic -> table); every statement is idempotent.
-- Every table the sink fills ends with kafka_topic, kafka_partition, kafka_offset (where the sink read the
-- row: it resumes after the highest offset already stored, so a redelivered message is never inserted
-- twice) and ingested_at.

CREATE DATABASE IF NOT EXISTS suanwang;

CREATE TABLE IF NOT EXISTS suanwang.schema_migrations
(
    version String,
    applied_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(applied_at)
ORDER BY version;

-- Latest registration per node wins (the topic is compacted on the same key).
CREATE TABLE IF NOT EXISTS suanwang.nodes
(
    event_id String,
    event_time DateTime64(3, 'UTC'),
    node_id String,
    hub LowCardinality(String),
    cluster LowCardinality(String),
    province LowCardinality(String),
    data_center LowCardinality(String),
    compute_class LowCardinality(String),
    chip_arch LowCardinality(String),
    chip_model LowCardinality(String),
    cpu_milli Int64,
    memory_mib Int64,
    accelerators Int32,
    accelerator_memory_mib Int64,
    throughput Float64,
    power_kw Float64,
    idle_power_kw Float64,
    pue Float64,
    unit_price Float64,
    active Bool,
    kafka_topic LowCardinality(String) DEFAULT '',
    kafka_partition Int32 DEFAULT -1,
    kafka_offset Int64 DEFAULT -1,
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(event_time)
ORDER BY node_id;

CREATE TABLE IF NOT EXISTS suanwang.telemetry
(
    event_id String,
    event_time DateTime64(3, 'UTC'),
    node_id String,
    hub LowCardinality(String),
    cluster LowCardinality(String),
    province LowCardinality(String),
    cpu_util Float32,
    memory_util Float32,
    accelerator_util Float32,
    power_kw Float32,
    inlet_temp_c Float32,
    running_tasks Int32,
    kafka_topic LowCardinality(String) DEFAULT '',
    kafka_partition Int32 DEFAULT -1,
    kafka_offset Int64 DEFAULT -1,
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = MergeTree
PARTITION BY toYYYYMMDD(event_time)
ORDER BY (hub, cluster, node_id, event_time)
TTL toDateTime(event_time) + INTERVAL 180 DAY;

CREATE TABLE IF NOT EXISTS suanwang.task_requests
(
    event_id String,
    event_time DateTime64(3, 'UTC'),
    task_id String,
    tenant LowCardinality(String),
    industry LowCardinality(String),
    kind LowCardinality(String),
    origin_hub LowCardinality(String),
    origin_province LowCardinality(String),
    chip_archs Array(LowCardinality(String)),
    chip_models Array(LowCardinality(String)),
    cpu_milli Int64,
    memory_mib Int64,
    accelerators Int32,
    accelerator_milli Int32,
    duration_s Nullable(Float64),
    latency_tier_ms Nullable(Int32),
    input_gb Float64,
    data_hub LowCardinality(String),
    allowed_provinces Array(LowCardinality(String)),
    deadline Nullable(DateTime64(3, 'UTC')),
    budget_yuan Nullable(Float64),
    escalated_from LowCardinality(Nullable(String)),
    escalation_reason Nullable(String),
    kafka_topic LowCardinality(String) DEFAULT '',
    kafka_partition Int32 DEFAULT -1,
    kafka_offset Int64 DEFAULT -1,
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (origin_hub, event_time, task_id);

CREATE TABLE IF NOT EXISTS suanwang.task_events
(
    event_id String,
    event_time DateTime64(3, 'UTC'),
    task_id String,
    node_id String,
    state LowCardinality(String),
    detail String,
    kafka_topic LowCardinality(String) DEFAULT '',
    kafka_partition Int32 DEFAULT -1,
    kafka_offset Int64 DEFAULT -1,
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (event_time, task_id);

CREATE TABLE IF NOT EXISTS suanwang.placements
(
    event_id String,
    event_time DateTime64(3, 'UTC'),
    task_id String,
    tenant LowCardinality(String),
    kind LowCardinality(String),
    request_time DateTime64(3, 'UTC'),
    scope LowCardinality(String),
    node_id String,
    hub LowCardinality(String),
    cluster LowCardinality(String),
    province LowCardinality(String),
    origin_hub LowCardinality(String),
    accelerator_indices Array(Int32),
    accelerator_milli Int32,
    cpu_milli Int64,
    memory_mib Int64,
    start_at DateTime64(3, 'UTC'),
    compute_cost Float64,
    energy_cost Float64,
    transfer_cost Float64,
    carbon_cost Float64,
    total_cost Float64,
    energy_kwh Float64,
    carbon_kg Float64,
    est_latency_ms Float64,
    runner_up_node_id Nullable(String),
    runner_up_cost Nullable(Float64),
    local_node_id Nullable(String),
    local_cost Nullable(Float64),
    saved_yuan Float64,
    saved_carbon_kg Float64,
    feasible_nodes Int32,
    decision_us Float64,
    kafka_topic LowCardinality(String) DEFAULT '',
    kafka_partition Int32 DEFAULT -1,
    kafka_offset Int64 DEFAULT -1,
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (hub, event_time, task_id);

CREATE TABLE IF NOT EXISTS suanwang.rejections
(
    event_id String,
    event_time DateTime64(3, 'UTC'),
    task_id String,
    tenant LowCardinality(String),
    request_time DateTime64(3, 'UTC'),
    scope LowCardinality(String),
    reason_code LowCardinality(String),
    reason String,
    nodes_total Int32,
    filtered Map(LowCardinality(String), Int32),
    kafka_topic LowCardinality(String) DEFAULT '',
    kafka_partition Int32 DEFAULT -1,
    kafka_offset Int64 DEFAULT -1,
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (reason_code, event_time, task_id);

-- The latest version of each window wins: a partial that arrives late republishes its windows corrected.
CREATE TABLE IF NOT EXISTS suanwang.rollups
(
    event_id String,
    event_time DateTime64(3, 'UTC'),
    scope_kind LowCardinality(String),
    scope_key LowCardinality(String),
    window_s Int32,
    window_start DateTime64(3, 'UTC'),
    window_end DateTime64(3, 'UTC'),
    samples Int64,
    nodes_online Int32,
    nodes_total Int32,
    cpu_util_mean Float32,
    cpu_util_max Float32,
    memory_util_mean Float32,
    memory_util_max Float32,
    accelerator_util_mean Float32,
    accelerator_util_max Float32,
    load_min Float32,
    power_kw_mean Float64,
    energy_kwh Float64,
    pue Float32,
    green_share Float32,
    free_cpu_milli Map(LowCardinality(String), Float64),
    free_accelerators Map(LowCardinality(String), Float64),
    kafka_topic LowCardinality(String) DEFAULT '',
    kafka_partition Int32 DEFAULT -1,
    kafka_offset Int64 DEFAULT -1,
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(event_time)
PARTITION BY toYYYYMM(window_start)
ORDER BY (scope_kind, scope_key, window_s, window_start);

CREATE TABLE IF NOT EXISTS suanwang.latency_rollups
(
    event_id String,
    event_time DateTime64(3, 'UTC'),
    scope_kind LowCardinality(String),
    scope_key LowCardinality(String),
    window_start DateTime64(3, 'UTC'),
    window_end DateTime64(3, 'UTC'),
    samples Int64,
    p50_ms Float64,
    p95_ms Float64,
    p99_ms Float64,
    max_ms Float64,
    tier_ms Nullable(Int32),
    bandwidth_gbps_p50 Nullable(Float64),
    deferred Int32,
    deferral_s_mean Nullable(Float64),
    kafka_topic LowCardinality(String) DEFAULT '',
    kafka_partition Int32 DEFAULT -1,
    kafka_offset Int64 DEFAULT -1,
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(event_time)
PARTITION BY toYYYYMM(window_start)
ORDER BY (scope_kind, scope_key, window_start);

CREATE TABLE IF NOT EXISTS suanwang.alerts
(
    event_id String,
    event_time DateTime64(3, 'UTC'),
    alert_key String,
    kind LowCardinality(String),
    severity LowCardinality(String),
    scope_kind LowCardinality(String),
    scope_key LowCardinality(String),
    message String,
    value Float64,
    threshold Float64,
    resolved Bool,
    kafka_topic LowCardinality(String) DEFAULT '',
    kafka_partition Int32 DEFAULT -1,
    kafka_offset Int64 DEFAULT -1,
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (kind, event_time, alert_key);

-- One row per province and hour; a later signal for the same hour (a revised forecast) replaces it.
CREATE TABLE IF NOT EXISTS suanwang.grid_signals
(
    event_id String,
    event_time DateTime64(3, 'UTC'),
    province LowCardinality(String),
    hub LowCardinality(String),
    hour_start DateTime64(3, 'UTC'),
    price_yuan_kwh Float64,
    green_share Float64,
    carbon_kg_per_kwh Float64,
    kafka_topic LowCardinality(String) DEFAULT '',
    kafka_partition Int32 DEFAULT -1,
    kafka_offset Int64 DEFAULT -1,
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(event_time)
ORDER BY (province, hour_start);

CREATE TABLE IF NOT EXISTS suanwang.hub_latency
(
    event_id String,
    event_time DateTime64(3, 'UTC'),
    from_hub LowCardinality(String),
    to_hub LowCardinality(String),
    rtt_ms Float64,
    bandwidth_gbps Float64,
    kafka_topic LowCardinality(String) DEFAULT '',
    kafka_partition Int32 DEFAULT -1,
    kafka_offset Int64 DEFAULT -1,
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (from_hub, to_hub, event_time)
TTL toDateTime(event_time) + INTERVAL 365 DAY;

-- One row per bad message and component, even if it was read (and reported) twice.
CREATE TABLE IF NOT EXISTS suanwang.dead_letters
(
    event_id String,
    event_time DateTime64(3, 'UTC'),
    component LowCardinality(String),
    source_topic LowCardinality(String),
    partition Int32,
    offset Int64,
    key Nullable(String),
    payload String,
    error String,
    kafka_topic LowCardinality(String) DEFAULT '',
    kafka_partition Int32 DEFAULT -1,
    kafka_offset Int64 DEFAULT -1,
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(event_time)
PARTITION BY toYYYYMM(event_time)
ORDER BY (source_topic, partition, offset, component);

-- Hourly rollups kept by ClickHouse itself as rows arrive: exact because the sink never inserts a
-- message twice. Read them with sum()/max() GROUP BY the key (parts merge in the background).
CREATE TABLE IF NOT EXISTS suanwang.telemetry_hourly
(
    hour DateTime('UTC'),
    hub LowCardinality(String),
    cluster LowCardinality(String),
    province LowCardinality(String),
    samples SimpleAggregateFunction(sum, UInt64),
    nodes AggregateFunction(uniq, String),
    cpu_util_sum SimpleAggregateFunction(sum, Float64),
    cpu_util_max SimpleAggregateFunction(max, Float32),
    accelerator_util_sum SimpleAggregateFunction(sum, Float64),
    accelerator_util_max SimpleAggregateFunction(max, Float32),
    memory_util_sum SimpleAggregateFunction(sum, Float64),
    power_kw_sum SimpleAggregateFunction(sum, Float64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (hub, cluster, province, hour);

CREATE MATERIALIZED VIEW IF NOT EXISTS suanwang.telemetry_hourly_mv TO suanwang.telemetry_hourly AS
SELECT
    toStartOfHour(event_time) AS hour,
    hub,
    cluster,
    province,
    count() AS samples,
    uniqState(node_id) AS nodes,
    sum(toFloat64(cpu_util)) AS cpu_util_sum,
    max(cpu_util) AS cpu_util_max,
    sum(toFloat64(accelerator_util)) AS accelerator_util_sum,
    max(accelerator_util) AS accelerator_util_max,
    sum(toFloat64(memory_util)) AS memory_util_sum,
    sum(toFloat64(power_kw)) AS power_kw_sum
FROM suanwang.telemetry
GROUP BY hour, hub, cluster, province;

CREATE TABLE IF NOT EXISTS suanwang.placements_hourly
(
    hour DateTime('UTC'),
    origin_hub LowCardinality(String),
    hub LowCardinality(String),
    scope LowCardinality(String),
    tasks SimpleAggregateFunction(sum, UInt64),
    deferred SimpleAggregateFunction(sum, UInt64),
    total_cost SimpleAggregateFunction(sum, Float64),
    energy_kwh SimpleAggregateFunction(sum, Float64),
    carbon_kg SimpleAggregateFunction(sum, Float64),
    saved_yuan SimpleAggregateFunction(sum, Float64),
    saved_carbon_kg SimpleAggregateFunction(sum, Float64),
    decision_us_max SimpleAggregateFunction(max, Float64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (origin_hub, hub, scope, hour);

CREATE MATERIALIZED VIEW IF NOT EXISTS suanwang.placements_hourly_mv TO suanwang.placements_hourly AS
SELECT
    toStartOfHour(event_time) AS hour,
    origin_hub,
    hub,
    scope,
    count() AS tasks,
    countIf(start_at > event_time) AS deferred,
    sum(total_cost) AS total_cost,
    sum(energy_kwh) AS energy_kwh,
    sum(carbon_kg) AS carbon_kg,
    sum(saved_yuan) AS saved_yuan,
    sum(saved_carbon_kg) AS saved_carbon_kg,
    max(decision_us) AS decision_us_max
FROM suanwang.placements
GROUP BY hour, origin_hub, hub, scope;
