-- A sample of a collector frame is dead-lettered alone: its index is part of a dead letter's identity.
-- No DEFAULT: a contract field (DeadLetter.sample; rows stored before it read the type's own default, 0).
ALTER TABLE suanwang.dead_letters ADD COLUMN IF NOT EXISTS sample Int32 AFTER error, MODIFY ORDER BY (source_topic, partition, offset, component, sample);
