-- A re-dispatch names the nodes its earlier attempts failed on, so it is not placed there again.
ALTER TABLE suanwang.task_requests ADD COLUMN IF NOT EXISTS avoid_nodes Array(String) AFTER not_before;
