//! Rotation configurations, runs, their history and approvals. The
//! transitions that change secret data (finishing a run, ending one) move
//! stages and the run in one transaction.

use super::super::current_moved;
use super::super::rows::{
    CONFIG_COLUMNS, ConfigTimes, RUN_COLUMNS, RUN_REVISION, approval_row, config_row,
    config_save_refusal, history_row, run_row,
};
use super::{Store, Tx, is_unique_violation, read_stage_map, touch, write_stage_map};
use crate::audit::AuditEvent;
use crate::error::{Error, Result};
use crate::rotation::{
    ApprovalRecord, ConfigRecord, HistoryRecord, Outcome, Revert, RunRecord, ScheduleClaim,
};
use crate::stages;
use rekey_shared::{Stage, VersionId};

fn changed_meanwhile(run: &RunRecord) -> Error {
    Error::Aborted(format!(
        "rotation run {} changed meanwhile (an operator, or another replica); look at it again",
        run.id
    ))
}

/// Writes `run` over the row it was read from; refused (nothing written)
/// when someone wrote the row meanwhile.
async fn write_run(tx: &mut Tx<'_>, run: &RunRecord) -> Result<()> {
    // First the revision: it moves on only from the one this writer read.
    let claimed = sqlx::query(
        "INSERT INTO rotation_run_revisions (run_id, revision) VALUES (?1, ?2 + 1)
         ON CONFLICT (run_id) DO UPDATE SET revision = excluded.revision
         WHERE rotation_run_revisions.revision = ?2",
    )
    .bind(&run.id)
    .bind(run.revision)
    .execute(&mut **tx)
    .await?;
    if claimed.rows_affected() != 1 {
        return Err(changed_meanwhile(run));
    }
    let written = sqlx::query(
        "UPDATE rotation_runs SET phase = ?, step = ?, set_applied = ?, operator_go = ?, attempt = ?,
            next_attempt_at = ?, approval_requested_at = ?, outcome = ?, revert = ?, end_reason = ?,
            last_error = ?, updated_at = ?, ended_at = ?
         WHERE run_id = ?",
    )
    .bind(run.phase.as_str())
    .bind(run.step.as_str())
    .bind(run.set_applied)
    .bind(run.operator_go)
    .bind(run.attempt)
    .bind(run.next_attempt_at)
    .bind(run.approval_requested_at)
    .bind(run.outcome.map(Outcome::as_str))
    .bind(run.revert.as_str())
    .bind(&run.end_reason)
    .bind(&run.last_error)
    .bind(run.updated_at)
    .bind(run.ended_at)
    .bind(&run.id)
    .execute(&mut **tx)
    .await?;
    if written.rows_affected() != 1 {
        return Err(changed_meanwhile(run));
    }
    Ok(())
}

async fn write_history(tx: &mut Tx<'_>, run_id: &str, entries: &[HistoryRecord]) -> Result<()> {
    for entry in entries {
        sqlx::query(
            "INSERT INTO rotation_history (run_id, seq, at, step, event, attempt, principal, detail)
             VALUES (?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM rotation_history WHERE run_id = ?1),
                     ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .bind(run_id)
        .bind(entry.at)
        .bind(entry.step.as_str())
        .bind(&entry.event)
        .bind(entry.attempt)
        .bind(&entry.principal)
        .bind(&entry.detail)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

impl Store {
    /// Saves `config` over `read`, the configuration the request read
    /// (`None`: there was none), unless the stored one changed since; one
    /// that changes how runs go (`frozen`) is refused while a run is under
    /// way. Both checks run in the write, so no run or schedule claim can
    /// slip between them and the save.
    pub async fn save_rotation_config(
        &self,
        config: &ConfigRecord,
        read: Option<&ConfigRecord>,
        frozen: bool,
        event: &AuditEvent,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        let stored: Option<ConfigTimes> = sqlx::query_as(
            "SELECT configured_at, next_rotation_at, last_rotated_at FROM rotation_configs
             WHERE secret_id = ?",
        )
        .bind(&config.secret_id)
        .fetch_optional(&mut *tx)
        .await?;
        let run_under_way = frozen
            && sqlx::query_scalar::<_, bool>(
                "SELECT EXISTS (SELECT 1 FROM rotation_runs
                                WHERE secret_id = ? AND ended_at IS NULL)",
            )
            .bind(&config.secret_id)
            .fetch_one(&mut *tx)
            .await?;
        if let Some(refusal) = config_save_refusal(stored, read, run_under_way) {
            return Err(refusal);
        }
        tx.changes_no_value();
        let steps: Vec<&str> = config.approval_steps.iter().map(|s| s.as_str()).collect();
        sqlx::query(&format!(
            "INSERT OR REPLACE INTO rotation_configs ({CONFIG_COLUMNS})
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .bind(&config.secret_id)
        .bind(&config.rotator)
        .bind(&config.schedule)
        .bind(&config.window)
        .bind(steps.join(","))
        .bind(config.approvals_required)
        .bind(&config.approver_role)
        .bind(&config.approval_expiry)
        .bind(&config.settings)
        .bind(config.enabled)
        .bind(&config.configured_by)
        .bind(config.configured_at)
        .bind(config.next_rotation_at)
        .bind(config.last_rotated_at)
        .execute(&mut *tx)
        .await?;
        self.commit_audited(tx, event).await
    }

    pub async fn rotation_config(&self, secret_id: &str) -> Result<Option<ConfigRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {CONFIG_COLUMNS} FROM rotation_configs WHERE secret_id = ?"
        ))
        .bind(secret_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(config_row).transpose()
    }

    /// Enabled configurations due by `now` whose secret has no active run
    /// and is not scheduled for deletion.
    pub async fn due_rotations(&self, now: i64) -> Result<Vec<ConfigRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {} FROM rotation_configs c JOIN secrets s ON s.id = c.secret_id
             WHERE c.enabled = 1 AND c.next_rotation_at IS NOT NULL AND c.next_rotation_at <= ?
               AND s.deletion_date IS NULL
               AND NOT EXISTS (SELECT 1 FROM rotation_runs r
                               WHERE r.secret_id = c.secret_id AND r.ended_at IS NULL)",
            CONFIG_COLUMNS
                .split(", ")
                .map(|column| format!("c.{column}"))
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(config_row).collect()
    }

    /// Starts a run; refused while the secret has another active run. A
    /// scheduled run's `claim` moves its schedule on in the same
    /// transaction: false, and nothing written, when another process
    /// claimed that due time.
    pub async fn insert_run(
        &self,
        run: &RunRecord,
        history: &[HistoryRecord],
        claim: Option<ScheduleClaim>,
        event: &AuditEvent,
    ) -> Result<bool> {
        let mut tx = self.write().await?;
        let secret: Option<(Option<i64>, Option<String>)> = sqlx::query_as(
            "SELECT s.deletion_date, (SELECT v.version_id FROM version_stages v
                                      WHERE v.secret_id = s.id AND v.stage = 'CURRENT')
             FROM secrets s WHERE s.id = ?",
        )
        .bind(&run.secret_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((None, current)) = secret else {
            return Err(Error::FailedPrecondition(
                "the secret is deleted, or scheduled for deletion (restore it to rotate it)"
                    .to_owned(),
            ));
        };
        if current.as_deref() != Some(run.current_at_start.as_str()) {
            return Err(current_moved());
        }
        if let Some(claim) = claim {
            let claimed = sqlx::query(
                "UPDATE rotation_configs SET next_rotation_at = ?
             WHERE secret_id = ? AND next_rotation_at = ?",
            )
            .bind(claim.next)
            .bind(&run.secret_id)
            .bind(claim.due_at)
            .execute(&mut *tx)
            .await?;
            if claimed.rows_affected() != 1 {
                return Ok(false);
            }
        }
        tx.changes_no_value();
        let inserted = sqlx::query(&format!(
            "INSERT INTO rotation_runs ({RUN_COLUMNS})
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .bind(&run.id)
        .bind(&run.secret_id)
        .bind(run.manual)
        .bind(run.scheduled)
        .bind(&run.initiator)
        .bind(run.phase.as_str())
        .bind(run.step.as_str())
        .bind(run.set_applied)
        .bind(run.operator_go)
        .bind(run.attempt)
        .bind(run.next_attempt_at)
        .bind(run.approval_requested_at)
        .bind(&run.current_at_start)
        .bind(run.outcome.map(Outcome::as_str))
        .bind(run.revert.as_str())
        .bind(&run.end_reason)
        .bind(&run.last_error)
        .bind(run.created_at)
        .bind(run.updated_at)
        .bind(run.ended_at)
        .execute(&mut *tx)
        .await;
        match inserted {
            Err(error) if is_unique_violation(&error) => {
                return Err(Error::FailedPrecondition(
                    "a rotation of this secret is already running; show it with `rekey rotation show`"
                        .to_owned(),
                ));
            }
            other => {
                other?;
            }
        }
        write_history(&mut tx, &run.id, history).await?;
        self.commit_audited(tx, event).await?;
        Ok(true)
    }

    /// Persists a run's new state with its history, audited when `event` is
    /// given.
    pub async fn update_run(
        &self,
        run: &mut RunRecord,
        history: &[HistoryRecord],
        event: Option<&AuditEvent>,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        tx.changes_no_value();
        write_run(&mut tx, run).await?;
        write_history(&mut tx, &run.id, history).await?;
        match event {
            Some(event) => self.commit_audited(tx, event).await?,
            None => tx.commit().await?,
        }
        run.revision += 1;
        Ok(())
    }

    /// finishSecret: CURRENT moves to the run's version (PREVIOUS follows,
    /// PENDING goes), the run ends as succeeded, the configuration records
    /// the rotation: one transaction. `Ok(false)` when CURRENT is no longer
    /// where the run started (nothing changes; the run is abandoned).
    pub async fn finish_run(
        &self,
        run: &mut RunRecord,
        history: &[HistoryRecord],
        event: &AuditEvent,
    ) -> Result<bool> {
        let mut tx = self.write().await?;
        tx.changes_secret(&run.secret_id);
        let mut map = read_stage_map(&mut tx, &run.secret_id).await?;
        let before = map.clone();
        let current = map.get(&Stage::current()).map(|v| v.as_str().to_owned());
        if current.as_deref() != Some(run.current_at_start.as_str()) {
            return Ok(false);
        }
        let version =
            VersionId::parse(&run.id).map_err(|error| Error::internal("run token", error))?;
        stages::attach(&mut map, &Stage::current(), &version);
        if map.get(&pending()) == Some(&version) {
            map.remove(&pending());
        }
        write_stage_map(&mut tx, &run.secret_id, &before, &map).await?;
        touch(&mut tx, &run.secret_id, run.updated_at).await?;
        write_run(&mut tx, run).await?;
        write_history(&mut tx, &run.id, history).await?;
        // The next rotation from the schedule as it is now, in this
        // transaction: one configured while the run went on is not undone
        // by what the run read at its start.
        let configured: Option<(String, bool)> =
            sqlx::query_as("SELECT schedule, enabled FROM rotation_configs WHERE secret_id = ?")
                .bind(&run.secret_id)
                .fetch_optional(&mut *tx)
                .await?;
        let next_rotation = configured.and_then(|(schedule, enabled)| {
            crate::rotation::schedule::next_after_rotation(&schedule, enabled, run.updated_at)
        });
        sqlx::query(
            "UPDATE rotation_configs SET last_rotated_at = ?, next_rotation_at = ? WHERE secret_id = ?",
        )
        .bind(run.updated_at)
        .bind(next_rotation)
        .bind(&run.secret_id)
        .execute(&mut *tx)
        .await?;
        self.commit_audited(tx, event).await?;
        run.revision += 1;
        Ok(true)
    }

    /// Ends a run without success: PENDING comes off the run's version
    /// (unless its revert failed), in the same transaction as the run's
    /// end.
    pub async fn end_run(
        &self,
        run: &mut RunRecord,
        history: &[HistoryRecord],
        event: &AuditEvent,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        tx.changes_secret(&run.secret_id);
        let mut map = read_stage_map(&mut tx, &run.secret_id).await?;
        let before = map.clone();
        // After a revert that failed, the target may hold the run's value:
        // PENDING stays on it, so that the one value that may work there
        // is found by a stage, not by searching the versions.
        if run.revert != Revert::Failed
            && map.get(&pending()).map(|v| v.as_str()) == Some(run.id.as_str())
        {
            map.remove(&pending());
            write_stage_map(&mut tx, &run.secret_id, &before, &map).await?;
        }
        write_run(&mut tx, run).await?;
        write_history(&mut tx, &run.id, history).await?;
        self.commit_audited(tx, event).await?;
        run.revision += 1;
        Ok(())
    }

    pub async fn run(&self, run_id: &str) -> Result<Option<RunRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS}, {RUN_REVISION} FROM rotation_runs WHERE run_id = ?"
        ))
        .bind(run_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(run_row).transpose()
    }

    /// On a reader: a put that moves CURRENT asks this every time.
    pub async fn active_run(&self, secret_id: &str) -> Result<Option<RunRecord>> {
        self.readers.active_run(secret_id.to_owned()).await
    }

    /// A secret's runs, newest first.
    pub async fn runs_of(&self, secret_id: &str, limit: u32) -> Result<Vec<RunRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS}, {RUN_REVISION} FROM rotation_runs WHERE secret_id = ?
             ORDER BY created_at DESC, run_id LIMIT ?"
        ))
        .bind(secret_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(run_row).collect()
    }

    /// Every run (or every active one), newest first.
    pub async fn all_runs(&self, active_only: bool, limit: u32) -> Result<Vec<RunRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS}, {RUN_REVISION} FROM rotation_runs WHERE (? = 0 OR ended_at IS NULL)
             ORDER BY created_at DESC, run_id LIMIT ?"
        ))
        .bind(active_only)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(run_row).collect()
    }

    /// How many runs there are of each phase and outcome.
    pub async fn rotation_run_counts(&self) -> Result<Vec<(String, Option<String>, i64)>> {
        Ok(sqlx::query_as(
            "SELECT phase, outcome, COUNT(*) FROM rotation_runs GROUP BY phase, outcome",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn is_run_token(&self, token: &str) -> Result<bool> {
        let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM rotation_runs WHERE run_id = ?")
            .bind(token)
            .fetch_optional(&self.pool)
            .await?;
        Ok(found.is_some())
    }

    pub async fn history(&self, run_id: &str) -> Result<Vec<HistoryRecord>> {
        let rows = sqlx::query(
            "SELECT at, step, event, attempt, principal, detail FROM rotation_history
             WHERE run_id = ? ORDER BY seq",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(history_row).collect()
    }

    /// Records an approval; a principal's second approval of the same step
    /// changes nothing (`Ok(false)`).
    pub async fn add_approval(
        &self,
        run_id: &str,
        approval: &ApprovalRecord,
        history: &[HistoryRecord],
        event: &AuditEvent,
    ) -> Result<bool> {
        let mut tx = self.write().await?;
        tx.changes_no_value();
        let inserted = sqlx::query(
            "INSERT INTO rotation_approvals (run_id, step, principal, at, comment) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(run_id)
        .bind(approval.step.as_str())
        .bind(&approval.principal)
        .bind(approval.at)
        .bind(&approval.comment)
        .execute(&mut *tx)
        .await;
        match inserted {
            Err(error) if is_unique_violation(&error) => return Ok(false),
            other => {
                other?;
            }
        }
        write_history(&mut tx, run_id, history).await?;
        self.commit_audited(tx, event).await?;
        Ok(true)
    }

    pub async fn approvals(&self, run_id: &str) -> Result<Vec<ApprovalRecord>> {
        let rows = sqlx::query(
            "SELECT step, principal, at, comment FROM rotation_approvals WHERE run_id = ? ORDER BY at",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(approval_row).collect()
    }

    /// The secret a run belongs to, by id (a run outlives renames: there are none).
    pub async fn secret_by_id(
        &self,
        secret_id: &str,
    ) -> Result<Option<crate::store::SecretRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {} FROM secrets WHERE id = ?",
            super::super::rows::SECRET_COLUMNS
        ))
        .bind(secret_id)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            None => Ok(None),
            Some(row) => {
                let mut secret = super::secret_row(&row)?;
                secret.tags = self.tags(&secret.id).await?;
                Ok(Some(secret))
            }
        }
    }
}

fn pending() -> Stage {
    Stage::parse(Stage::PENDING).unwrap_or_else(|_| Stage::current())
}
