-- How many times each rotation run's row was written (no row: never).
-- Every write names the revision it read and changes nothing when it
-- finds another: a replica's late write cannot undo what an operator or
-- another replica wrote meanwhile. A table of its own rather than a
-- column, so that the migration can run again on a schema that has it.
-- Additive: a previous release ignores it.

CREATE TABLE IF NOT EXISTS rotation_run_revisions (
    run_id TEXT PRIMARY KEY REFERENCES rotation_runs (run_id) ON DELETE CASCADE,
    revision BIGINT NOT NULL
);
