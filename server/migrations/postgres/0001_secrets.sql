-- Secrets, versions and stages; master keys wrapped by the root key.
-- Times are Unix milliseconds; access dates are Unix days (day resolution).

CREATE TABLE master_keys (
    name TEXT NOT NULL,
    version BIGINT NOT NULL,
    wrapped_material BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (name, version)
);

CREATE TABLE secrets (
    id TEXT PRIMARY KEY,
    name TEXT COLLATE "C" NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT '',
    key_name TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    changed_at BIGINT NOT NULL,
    accessed_day BIGINT,
    deletion_date BIGINT
);

CREATE TABLE secret_tags (
    secret_id TEXT NOT NULL REFERENCES secrets (id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (secret_id, key)
);

CREATE TABLE versions (
    secret_id TEXT NOT NULL REFERENCES secrets (id) ON DELETE CASCADE,
    version_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    accessed_day BIGINT,
    is_binary BOOLEAN NOT NULL,
    ciphertext BYTEA NOT NULL,
    wrapped_data_key BYTEA NOT NULL,
    key_name TEXT NOT NULL,
    key_version BIGINT NOT NULL,
    PRIMARY KEY (secret_id, version_id)
);

CREATE INDEX versions_by_seq ON versions (secret_id, seq);

CREATE TABLE version_stages (
    secret_id TEXT NOT NULL,
    stage TEXT NOT NULL,
    version_id TEXT NOT NULL,
    PRIMARY KEY (secret_id, stage),
    FOREIGN KEY (secret_id, version_id) REFERENCES versions (secret_id, version_id) ON DELETE CASCADE
);
