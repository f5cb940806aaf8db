-- Policy versions, the certificate registry (with revocations), and the
-- audit chain.

CREATE TABLE policies (
    version BIGINT PRIMARY KEY,
    document TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL
);

CREATE TABLE certificates (
    serial TEXT PRIMARY KEY,
    -- Empty for a serial revoked without having been issued here.
    principal TEXT NOT NULL,
    issued_at BIGINT,
    not_after BIGINT,
    revoked_at BIGINT,
    revoked_by TEXT
);

CREATE INDEX certificates_by_principal ON certificates (principal);

-- Each event's MAC covers its fields, its sequence number and the previous
-- event's MAC, under a key derived from the root key.
CREATE TABLE audit_events (
    seq BIGINT PRIMARY KEY,
    time BIGINT NOT NULL,
    principal TEXT NOT NULL,
    peer TEXT NOT NULL,
    action TEXT NOT NULL,
    resource TEXT NOT NULL,
    decision TEXT NOT NULL,
    outcome TEXT NOT NULL,
    request_id TEXT NOT NULL,
    detail TEXT NOT NULL,
    mac BYTEA NOT NULL
);

CREATE INDEX audit_by_time ON audit_events (time);
