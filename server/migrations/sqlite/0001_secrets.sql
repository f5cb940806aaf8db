-- Secrets, versions and stages; master keys wrapped by the root key.
-- Times are Unix milliseconds; access dates are Unix days (day resolution).

CREATE TABLE master_keys (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    -- nonce || AES-256-GCM(root key, material), bound to name and version
    wrapped_material BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (name, version)
) STRICT;

CREATE TABLE secrets (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT '',
    key_name TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    changed_at INTEGER NOT NULL,
    accessed_day INTEGER,
    deletion_date INTEGER
) STRICT;

CREATE TABLE secret_tags (
    secret_id TEXT NOT NULL REFERENCES secrets (id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (secret_id, key)
) STRICT;

CREATE TABLE versions (
    secret_id TEXT NOT NULL REFERENCES secrets (id) ON DELETE CASCADE,
    version_id TEXT NOT NULL,
    -- Insertion order, for "newest first" without trusting the clock.
    seq INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    created_by TEXT NOT NULL,
    accessed_day INTEGER,
    is_binary INTEGER NOT NULL,
    -- nonce || AES-256-GCM(data key, value), bound to secret, version, kind
    ciphertext BLOB NOT NULL,
    -- nonce || AES-256-GCM(master key, data key), bound to secret, version, key
    wrapped_data_key BLOB NOT NULL,
    key_name TEXT NOT NULL,
    key_version INTEGER NOT NULL,
    PRIMARY KEY (secret_id, version_id)
) STRICT;

CREATE INDEX versions_by_seq ON versions (secret_id, seq);

-- A label is on at most one version of a secret: the primary key says so.
CREATE TABLE version_stages (
    secret_id TEXT NOT NULL,
    stage TEXT NOT NULL,
    version_id TEXT NOT NULL,
    PRIMARY KEY (secret_id, stage),
    FOREIGN KEY (secret_id, version_id) REFERENCES versions (secret_id, version_id) ON DELETE CASCADE
) STRICT;
