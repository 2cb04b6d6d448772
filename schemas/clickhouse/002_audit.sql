-- suanwang history, version 002: the audit trail. Every statement is idempotent.

-- One row per API request that needed a token: who asked, what, in which scope, and what they got.
-- Written by the API itself (batched), credentials never included.
CREATE TABLE IF NOT EXISTS suanwang.api_audit
(
    event_time DateTime64(3, 'UTC'),
    request_id String,
    actor LowCardinality(String),
    role LowCardinality(String),
    method LowCardinality(String),
    route LowCardinality(String),
    target String,
    scope LowCardinality(String),
    status UInt16,
    reason String
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (actor, event_time);

-- Who did what and why, in one place: every API action and every dispatch decision. Decisions are read
-- from placements and rejections themselves (each already says which dispatcher tier decided and why), so
-- the trail can never disagree with them.
CREATE VIEW IF NOT EXISTS suanwang.audit_log AS
SELECT event_time, actor, role, concat(method, ' ', route) AS action, target, toString(status) AS outcome, reason
FROM suanwang.api_audit
UNION ALL
SELECT
    event_time,
    concat('dispatcher:', scope) AS actor,
    'dispatcher' AS role,
    'place' AS action,
    task_id AS target,
    node_id AS outcome,
    format(
        'cheapest of {} feasible nodes: {} yuan (compute {}, energy {}, transfer {}, carbon {}); runner-up {} at {}; local {} at {}',
        toString(feasible_nodes), toString(round(total_cost, 2)), toString(round(compute_cost, 2)),
        toString(round(energy_cost, 2)), toString(round(transfer_cost, 2)), toString(round(carbon_cost, 2)),
        ifNull(runner_up_node_id, 'none'), ifNull(toString(round(runner_up_cost, 2)), '-'),
        ifNull(local_node_id, 'none'), ifNull(toString(round(local_cost, 2)), '-')
    ) AS reason
FROM suanwang.placements
UNION ALL
SELECT
    event_time,
    concat('dispatcher:', scope) AS actor,
    'dispatcher' AS role,
    'reject' AS action,
    task_id AS target,
    toString(reason_code) AS outcome,
    reason
FROM suanwang.rejections;
