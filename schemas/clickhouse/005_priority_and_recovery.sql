-- Priority classes, and the re-dispatch of work whose node failed or which was preempted.
-- No DEFAULT: the columns are contract fields (rows stored before them read the type's own default).
ALTER TABLE suanwang.task_requests ADD COLUMN IF NOT EXISTS priority LowCardinality(Nullable(String)) AFTER escalation_reason;
ALTER TABLE suanwang.task_requests ADD COLUMN IF NOT EXISTS attempt Int32 AFTER priority;
ALTER TABLE suanwang.task_requests ADD COLUMN IF NOT EXISTS retry_of Nullable(String) AFTER attempt;
ALTER TABLE suanwang.task_requests ADD COLUMN IF NOT EXISTS not_before Nullable(DateTime64(3, 'UTC')) AFTER retry_of;
ALTER TABLE suanwang.placements ADD COLUMN IF NOT EXISTS priority LowCardinality(String) AFTER input_gb;
ALTER TABLE suanwang.placements ADD COLUMN IF NOT EXISTS retry_of Nullable(String) AFTER priority;
ALTER TABLE suanwang.task_events ADD COLUMN IF NOT EXISTS cause LowCardinality(String) AFTER detail;
ALTER TABLE suanwang.task_events ADD COLUMN IF NOT EXISTS retry_task_id Nullable(String) AFTER cause;
ALTER TABLE suanwang.task_events ADD COLUMN IF NOT EXISTS preempted_by Nullable(String) AFTER retry_task_id;
