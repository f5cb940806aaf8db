-- The versions under each master-key version: what retiring a key version
-- counts (under the writers' lock) and what re-wrapping walks, each a scan
-- of every version without it (a third of a second at a million versions
-- on PostgreSQL, every replica's writes waiting). Additive: a previous
-- release ignores it.

CREATE INDEX IF NOT EXISTS versions_by_key ON versions (key_name, key_version);
