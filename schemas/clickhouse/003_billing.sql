-- suanwang history, version 003: unified metering, billing and settlement (统一度量、计费、结算), and the
-- market prices that steer dispatch. Every statement is idempotent.

-- The quote a placement carries, which the bill applies to the hours metered (Avro fields of Placement).
ALTER TABLE suanwang.placements ADD COLUMN IF NOT EXISTS precision LowCardinality(String) AFTER decision_us;
ALTER TABLE suanwang.placements ADD COLUMN IF NOT EXISTS compute_class LowCardinality(String) AFTER precision;
ALTER TABLE suanwang.placements ADD COLUMN IF NOT EXISTS chip_model LowCardinality(String) AFTER compute_class;
ALTER TABLE suanwang.placements ADD COLUMN IF NOT EXISTS price_index Float64 AFTER chip_model;
ALTER TABLE suanwang.placements ADD COLUMN IF NOT EXISTS cu_per_hour Float64 AFTER price_index;
ALTER TABLE suanwang.placements ADD COLUMN IF NOT EXISTS compute_yuan_per_hour Float64 AFTER cu_per_hour;
ALTER TABLE suanwang.placements ADD COLUMN IF NOT EXISTS meter_kw Float64 AFTER compute_yuan_per_hour;
ALTER TABLE suanwang.placements ADD COLUMN IF NOT EXISTS yuan_per_kwh Float64 AFTER meter_kw;
ALTER TABLE suanwang.placements ADD COLUMN IF NOT EXISTS input_gb Float64 AFTER yuan_per_kwh;
ALTER TABLE suanwang.task_requests ADD COLUMN IF NOT EXISTS precision LowCardinality(String) AFTER accelerator_milli;

-- Every price the market set (market.price keeps only the latest per hub and class).
CREATE TABLE IF NOT EXISTS suanwang.market_prices
(
    event_id String,
    event_time DateTime64(3, 'UTC'),
    price_key String,
    hub LowCardinality(String),
    compute_class LowCardinality(String),
    price_index Float64,
    yuan_per_cu_hour Float64,
    utilisation Float64,
    pressure Float64,
    nodes Int32,
    scope LowCardinality(String),
    kafka_topic LowCardinality(String) DEFAULT '',
    kafka_partition Int32 DEFAULT -1,
    kafka_offset Int64 DEFAULT -1,
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (hub, compute_class, event_time);

-- One row per task and calendar month (China Standard Time) it ran in: the metered quantities. A later
-- event that changes a record (a late start, say) writes a new version; the newest `metered_at` wins.
CREATE TABLE IF NOT EXISTS suanwang.usage
(
    usage_id String,
    task_id String,
    period LowCardinality(String),
    tenant LowCardinality(String),
    node_id String,
    hub LowCardinality(String),
    cluster LowCardinality(String),
    origin_hub LowCardinality(String),
    compute_class LowCardinality(String),
    chip_model LowCardinality(String),
    precision LowCardinality(String),
    payer String,
    provider String,
    network_operator String,
    started_at DateTime64(3, 'UTC'),
    ended_at DateTime64(3, 'UTC'),
    outcome LowCardinality(String),
    hours Float64,
    cu_hours Float64,
    energy_kwh Float64,
    transfer_gb Float64,
    storage_gb_hours Float64,
    price_index Float64,
    compute_fen Int64,
    energy_fen Int64,
    transfer_fen Int64,
    storage_fen Int64,
    metered_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(metered_at)
PARTITION BY period
ORDER BY (tenant, usage_id);

-- The double-entry ledger: append-only, amounts in fen (debit positive, credit negative). Every
-- transaction sums to zero. A change to a usage record is posted as a new transaction of the differences,
-- never by editing a row.
CREATE TABLE IF NOT EXISTS suanwang.ledger
(
    entry_id String,
    txn_id String,
    usage_id String,
    task_id String,
    period LowCardinality(String),
    tenant LowCardinality(String),
    account String,
    account_kind LowCardinality(String),
    component LowCardinality(String),
    amount_fen Int64,
    posted_at DateTime64(3, 'UTC'),
    reason String
)
ENGINE = MergeTree
PARTITION BY period
ORDER BY (account, period, usage_id, entry_id);

-- What the billing rules met and how each was handled (one row per task, rule and detail).
CREATE TABLE IF NOT EXISTS suanwang.billing_exceptions
(
    task_id String,
    rule LowCardinality(String),
    detail String,
    seen_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(seen_at)
ORDER BY (rule, task_id, detail);
