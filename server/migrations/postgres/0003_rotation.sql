-- Rotation: each secret's configuration, its runs (one active at a time),
-- their history and approvals.

CREATE TABLE rotation_configs (
    secret_id TEXT PRIMARY KEY REFERENCES secrets (id) ON DELETE CASCADE,
    rotator TEXT NOT NULL,
    schedule TEXT NOT NULL DEFAULT '',
    window_text TEXT NOT NULL DEFAULT '',
    approval_steps TEXT NOT NULL DEFAULT '',
    approvals_required BIGINT NOT NULL DEFAULT 0,
    approver_role TEXT NOT NULL DEFAULT '',
    approval_expiry TEXT NOT NULL DEFAULT '',
    -- JSON of the password policy, the JSON field and database settings.
    settings TEXT NOT NULL DEFAULT '{}',
    enabled BOOLEAN NOT NULL,
    configured_by TEXT NOT NULL,
    configured_at BIGINT NOT NULL,
    next_rotation_at BIGINT,
    last_rotated_at BIGINT
);

CREATE INDEX rotation_configs_due ON rotation_configs (next_rotation_at) WHERE enabled;

CREATE TABLE rotation_runs (
    run_id TEXT PRIMARY KEY,
    secret_id TEXT NOT NULL REFERENCES secrets (id) ON DELETE CASCADE,
    manual BOOLEAN NOT NULL,
    scheduled BOOLEAN NOT NULL,
    initiator TEXT NOT NULL,
    phase TEXT NOT NULL,
    step TEXT NOT NULL,
    set_applied BOOLEAN NOT NULL,
    operator_go BOOLEAN NOT NULL,
    attempt BIGINT NOT NULL,
    next_attempt_at BIGINT,
    approval_requested_at BIGINT,
    current_at_start TEXT NOT NULL,
    outcome TEXT,
    revert TEXT NOT NULL,
    end_reason TEXT NOT NULL,
    last_error TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    ended_at BIGINT
);

-- One active run per secret.
CREATE UNIQUE INDEX rotation_runs_one_active ON rotation_runs (secret_id) WHERE ended_at IS NULL;
CREATE INDEX rotation_runs_by_secret ON rotation_runs (secret_id, created_at);

CREATE TABLE rotation_history (
    run_id TEXT NOT NULL REFERENCES rotation_runs (run_id) ON DELETE CASCADE,
    seq BIGINT NOT NULL,
    at BIGINT NOT NULL,
    step TEXT NOT NULL,
    event TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    principal TEXT NOT NULL,
    detail TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);

CREATE TABLE rotation_approvals (
    run_id TEXT NOT NULL REFERENCES rotation_runs (run_id) ON DELETE CASCADE,
    step TEXT NOT NULL,
    principal TEXT NOT NULL,
    at BIGINT NOT NULL,
    comment TEXT NOT NULL,
    PRIMARY KEY (run_id, step, principal)
);
