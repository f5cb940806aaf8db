-- A revoked serial names its issuer: serials are unique per issuer only,
-- and revoking one CA's certificate must not refuse another CA's of the
-- same serial. '' is any issuer: the rows from before, and a serial
-- revoked without naming its issuer. The table is made again for its new
-- primary key (SQLite cannot change one in place), in the migration's
-- transaction. A previous release writes rows of issuer '' and reads
-- every row as any issuer's: it refuses more, never less.

CREATE TABLE certificates_by_issuer (
    serial TEXT NOT NULL,
    -- The issuer's DER name in hex; '' for any issuer.
    issuer TEXT NOT NULL DEFAULT '',
    -- Empty for a serial revoked without having been issued here.
    principal TEXT NOT NULL,
    issued_at INTEGER,
    not_after INTEGER,
    revoked_at INTEGER,
    revoked_by TEXT,
    PRIMARY KEY (serial, issuer)
) STRICT;

INSERT INTO certificates_by_issuer (serial, principal, issued_at, not_after, revoked_at, revoked_by)
    SELECT serial, principal, issued_at, not_after, revoked_at, revoked_by FROM certificates;

DROP TABLE certificates;

ALTER TABLE certificates_by_issuer RENAME TO certificates;

CREATE INDEX certificates_by_principal ON certificates (principal);
