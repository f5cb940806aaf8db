-- SQLite's schema version 7 stores version_stages in the tree of its
-- primary key (WITHOUT ROWID). PostgreSQL has no such table layout and
-- needs no change: this version only keeps the two schemas' numbers in
-- step.

SELECT 1;
