-- The stages of versions, rebuilt as a WITHOUT ROWID table: its rows are
-- stored in the tree of its primary key (secret_id, stage), not beside it.
-- A read of a value looks stages up by that key twice (the version a stage
-- is on; the stages of that version), and each lookup was a descent of the
-- key's index and then a seek in the rowid table for each row it found;
-- now it is one descent. The
-- same columns, keys and constraint: nothing else changes. Not additive,
-- but a previous release reads and writes the rebuilt table as before (it
-- refuses a schema newer than it knows, though).

CREATE TABLE version_stages_rebuilt (
    secret_id TEXT NOT NULL,
    stage TEXT NOT NULL,
    version_id TEXT NOT NULL,
    PRIMARY KEY (secret_id, stage),
    FOREIGN KEY (secret_id, version_id) REFERENCES versions (secret_id, version_id) ON DELETE CASCADE
) STRICT, WITHOUT ROWID;

INSERT INTO version_stages_rebuilt (secret_id, stage, version_id)
    SELECT secret_id, stage, version_id FROM version_stages;

-- Nothing refers to version_stages, so neither the drop nor the rename
-- touches another table.
DROP TABLE version_stages;

ALTER TABLE version_stages_rebuilt RENAME TO version_stages;
