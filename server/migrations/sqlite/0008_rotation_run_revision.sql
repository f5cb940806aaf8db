-- How many times a rotation run's row was written. Every write names the
-- revision it read and changes nothing when it finds another: a replica's
-- late write cannot undo what an operator or another replica wrote
-- meanwhile. Additive: a previous release ignores the column.

ALTER TABLE rotation_runs ADD COLUMN revision INTEGER NOT NULL DEFAULT 0;
