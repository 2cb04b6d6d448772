-- Which of the dispatcher's paths decided a placement (Placement.decided_by).
-- No DEFAULT: a contract field (rows stored before it read the type's own default, '').
ALTER TABLE suanwang.placements ADD COLUMN IF NOT EXISTS decided_by LowCardinality(String) AFTER retry_of;
