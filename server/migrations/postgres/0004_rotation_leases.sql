-- Leases on rotation work: the process driving a secret's run renews its
-- lease while it works; another replica takes the run over once it lapses.
-- Additive: a previous release ignores the table.

CREATE TABLE rotation_leases (
    secret_id TEXT PRIMARY KEY REFERENCES secrets (id) ON DELETE CASCADE,
    owner TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
