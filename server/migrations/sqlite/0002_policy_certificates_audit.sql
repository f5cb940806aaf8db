-- Policy versions, the certificate registry (with revocations), and the
-- audit chain.

CREATE TABLE policies (
    version INTEGER PRIMARY KEY,
    document TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    created_by TEXT NOT NULL
) STRICT;

CREATE TABLE certificates (
    serial TEXT PRIMARY KEY,
    -- Empty for a serial revoked without having been issued here.
    principal TEXT NOT NULL,
    issued_at INTEGER,
    not_after INTEGER,
    revoked_at INTEGER,
    revoked_by TEXT
) STRICT;

CREATE INDEX certificates_by_principal ON certificates (principal);

-- Each event's MAC covers its fields, its sequence number and the previous
-- event's MAC, under a key derived from the root key.
CREATE TABLE audit_events (
    seq INTEGER PRIMARY KEY,
    time INTEGER NOT NULL,
    principal TEXT NOT NULL,
    peer TEXT NOT NULL,
    action TEXT NOT NULL,
    resource TEXT NOT NULL,
    decision TEXT NOT NULL,
    outcome TEXT NOT NULL,
    request_id TEXT NOT NULL,
    detail TEXT NOT NULL,
    mac BLOB NOT NULL
) STRICT;

CREATE INDEX audit_by_time ON audit_events (time);
