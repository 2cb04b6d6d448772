-- A node whose collector stopped on purpose: its silence raises no node_offline, and operators see why it is quiet.
-- No DEFAULT: the column is a contract field (rows stored before it read false, the type's own default).
ALTER TABLE suanwang.nodes ADD COLUMN IF NOT EXISTS paused Bool AFTER active;
