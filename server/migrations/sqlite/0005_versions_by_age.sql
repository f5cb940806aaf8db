-- Deprecated versions are purged once they are a day old: an index by age
-- lets the purge look at a secret's old versions only, however many young
-- ones it has. Additive: a previous release ignores it.

CREATE INDEX versions_by_age ON versions (secret_id, created_at);
