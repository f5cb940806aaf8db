//! Schema migrations, embedded in the binary and applied in order when the
//! server starts (and when `init` or `restore` makes a database). A
//! database whose schema is newer than this binary knows is refused rather
//! than used half-understood. The other commands ([`Schema::Current`])
//! open a database only at this binary's version: a newer binary's admin
//! command must not migrate a database under the older server that is
//! serving it, which would then refuse to start again.

use crate::error::{Error, Result};
use sqlx::{PgPool, SqlitePool};

/// Every migration of the SQLite schema, in order. Append only.
const SQLITE_MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/sqlite/0001_secrets.sql")),
    (
        2,
        include_str!("../../migrations/sqlite/0002_policy_certificates_audit.sql"),
    ),
    (3, include_str!("../../migrations/sqlite/0003_rotation.sql")),
    (
        4,
        include_str!("../../migrations/sqlite/0004_rotation_leases.sql"),
    ),
    (
        5,
        include_str!("../../migrations/sqlite/0005_versions_by_age.sql"),
    ),
    (
        6,
        include_str!("../../migrations/sqlite/0006_audit_anchor.sql"),
    ),
    (
        7,
        include_str!("../../migrations/sqlite/0007_version_stages_without_rowid.sql"),
    ),
    (
        8,
        include_str!("../../migrations/sqlite/0008_rotation_run_revision.sql"),
    ),
    (
        9,
        include_str!("../../migrations/sqlite/0009_certificate_issuers.sql"),
    ),
    (
        10,
        include_str!("../../migrations/sqlite/0010_versions_by_key.sql"),
    ),
];

/// What opening a store does with a schema older than this binary's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    /// Brings it up to date (the server at start, `init`, `restore`).
    Migrate,
    /// Refuses it: the database is used only as this binary knows it.
    Current,
    /// Makes the schema of a database that has none (`init`), and refuses
    /// one that has any, at any version, leaving it as it is.
    New,
}

pub async fn migrate(pool: &SqlitePool) -> Result<()> {
    migrate_sqlite(pool, SQLITE_MIGRATIONS).await
}

/// Makes the schema of a database that has none; refuses one that has.
pub async fn create_sqlite(pool: &SqlitePool) -> Result<()> {
    require_none(applied_sqlite(pool).await?)?;
    migrate(pool).await
}

/// Makes the schema of a database that has none; refuses one that has,
/// checked under the migrations' lock (two `init`s at once: one makes it,
/// the other is refused, rather than both going on to add a master key).
pub async fn create_postgres(pool: &PgPool) -> Result<()> {
    require_none(applied_postgres(pool).await?)?;
    migrate_postgres_from(pool, true).await
}

fn require_none(applied: i64) -> Result<()> {
    if applied > 0 {
        return Err(Error::FailedPrecondition(format!(
            "the database already holds a rekey schema (version {applied}); init makes a new \
             installation in an empty database (to add a replica, copy that installation's \
             directory instead); nothing was changed"
        )));
    }
    Ok(())
}

/// Refuses a schema other than this binary's, changing nothing.
pub async fn require_current_sqlite(pool: &SqlitePool) -> Result<()> {
    require_current(applied_sqlite(pool).await?, newest(SQLITE_MIGRATIONS))
}

/// The newest migration applied; 0 without a schema.
async fn applied_sqlite(pool: &SqlitePool) -> Result<i64> {
    let exists: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM sqlite_schema \
         WHERE type = 'table' AND name = 'schema_migrations')",
    )
    .fetch_one(pool)
    .await?;
    let applied: Option<i64> = if exists {
        sqlx::query_scalar("SELECT MAX(version) FROM schema_migrations")
            .fetch_one(pool)
            .await?
    } else {
        None
    };
    Ok(applied.unwrap_or(0))
}

/// Refuses a schema other than this binary's, changing nothing.
pub async fn require_current_postgres(pool: &PgPool) -> Result<()> {
    require_current(applied_postgres(pool).await?, newest(POSTGRES_MIGRATIONS))
}

/// The newest migration applied; 0 without a schema.
async fn applied_postgres(pool: &PgPool) -> Result<i64> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('schema_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await?;
    let applied: Option<i64> = if exists {
        sqlx::query_scalar("SELECT MAX(version) FROM schema_migrations")
            .fetch_one(pool)
            .await?
    } else {
        None
    };
    Ok(applied.unwrap_or(0))
}

fn newest(migrations: &[(i64, &str)]) -> i64 {
    migrations.last().map_or(0, |(version, _)| *version)
}

/// The refusal of a schema newer than this binary's.
fn refuse_newer(applied: i64, newest_known: i64) -> Result<()> {
    if applied > newest_known {
        return Err(Error::FailedPrecondition(format!(
            "the database schema is at version {applied}, newer than this rekeyd knows \
             (version {newest_known}); run a newer rekeyd"
        )));
    }
    Ok(())
}

fn require_current(applied: i64, newest_known: i64) -> Result<()> {
    refuse_newer(applied, newest_known)?;
    if applied < newest_known {
        return Err(Error::FailedPrecondition(format!(
            "the database schema is at version {applied}, older than this rekeyd's \
             (version {newest_known}); only the server migrates it, when it starts: \
             restart rekeyd serve with this binary first, or run this command with \
             the rekeyd that serves the database"
        )));
    }
    Ok(())
}

/// Brings the schema up to the last of `migrations`.
async fn migrate_sqlite(pool: &SqlitePool, migrations: &[(i64, &str)]) -> Result<()> {
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version INTEGER PRIMARY KEY,
            applied_at INTEGER NOT NULL
        ) STRICT",
    )
    .execute(pool)
    .await?;
    let applied: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM schema_migrations")
        .fetch_one(pool)
        .await?;
    let applied = applied.unwrap_or(0);
    refuse_newer(applied, newest(migrations))?;
    for (version, sql) in migrations.iter().filter(|(v, _)| *v > applied) {
        let mut transaction = pool.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::raw_sql(sql).execute(&mut *transaction).await?;
        sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)")
            .bind(version)
            .bind(rekey_shared::time::now_millis())
            .execute(&mut *transaction)
            .await?;
        transaction.commit().await?;
        tracing::info!(version, "applied schema migration");
    }
    Ok(())
}

/// Every migration of the PostgreSQL schema, in order. Append only, and
/// additive, so that replicas of the previous release keep working while a
/// rolling upgrade is under way.
const POSTGRES_MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        include_str!("../../migrations/postgres/0001_secrets.sql"),
    ),
    (
        2,
        include_str!("../../migrations/postgres/0002_policy_certificates_audit.sql"),
    ),
    (
        3,
        include_str!("../../migrations/postgres/0003_rotation.sql"),
    ),
    (
        4,
        include_str!("../../migrations/postgres/0004_rotation_leases.sql"),
    ),
    (
        5,
        include_str!("../../migrations/postgres/0005_versions_by_age.sql"),
    ),
    (
        6,
        include_str!("../../migrations/postgres/0006_audit_anchor.sql"),
    ),
    (
        7,
        include_str!("../../migrations/postgres/0007_version_stages_without_rowid.sql"),
    ),
    (
        8,
        include_str!("../../migrations/postgres/0008_rotation_run_revision.sql"),
    ),
    (
        9,
        include_str!("../../migrations/postgres/0009_certificate_issuers.sql"),
    ),
    (
        10,
        include_str!("../../migrations/postgres/0010_versions_by_key.sql"),
    ),
];

/// The lock every replica takes while it migrates, so that two replicas
/// starting at once apply each migration once.
const MIGRATION_LOCK: i64 = 7000;

pub async fn migrate_postgres(pool: &PgPool) -> Result<()> {
    migrate_postgres_from(pool, false).await
}

/// Brings the schema up to date under the migrations' lock; with
/// `only_new`, refuses (changing nothing) a database that has one.
async fn migrate_postgres_from(pool: &PgPool, only_new: bool) -> Result<()> {
    let mut transaction = pool.begin().await?;
    // Read committed whatever the database's default, as the writers'
    // transactions: under repeatable read the snapshot would predate the
    // lock, and a second replica would not see the first one's migrations.
    sqlx::raw_sql("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
        .execute(&mut *transaction)
        .await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *transaction)
        .await?;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version BIGINT PRIMARY KEY,
            applied_at BIGINT NOT NULL
        )",
    )
    .execute(&mut *transaction)
    .await?;
    let applied: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM schema_migrations")
        .fetch_one(&mut *transaction)
        .await?;
    let applied = applied.unwrap_or(0);
    if only_new {
        require_none(applied)?;
    }
    refuse_newer(applied, newest(POSTGRES_MIGRATIONS))?;
    for (version, sql) in POSTGRES_MIGRATIONS.iter().filter(|(v, _)| *v > applied) {
        sqlx::raw_sql(sql).execute(&mut *transaction).await?;
        sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)")
            .bind(version)
            .bind(rekey_shared::time::now_millis())
            .execute(&mut *transaction)
            .await?;
        tracing::info!(version, "applied schema migration");
    }
    transaction.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn both_backends_have_the_same_schema_versions() {
        let versions = |migrations: &[(i64, &str)]| -> Vec<i64> {
            migrations.iter().map(|(version, _)| *version).collect()
        };
        assert_eq!(versions(SQLITE_MIGRATIONS), versions(POSTGRES_MIGRATIONS));
        assert!(
            versions(SQLITE_MIGRATIONS)
                .iter()
                .enumerate()
                .all(|(i, v)| *v == i as i64 + 1)
        );
    }

    /// Version 7 rebuilds `version_stages`: a store made at version 6 keeps
    /// every stage on the version it was on, and the rebuilt table still
    /// ties each stage to a version of its secret.
    #[tokio::test]
    async fn the_rebuilt_stages_table_keeps_every_stage_and_its_constraint() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("store.db").display()
        );
        let pool = SqlitePool::connect(&url).await.unwrap();
        migrate_sqlite(&pool, &SQLITE_MIGRATIONS[..6])
            .await
            .unwrap();
        sqlx::raw_sql(
            "INSERT INTO secrets (id, name, key_name, created_at, changed_at)
                 VALUES ('s1', 'app/one', 'default', 0, 0);
             INSERT INTO versions (secret_id, version_id, seq, created_at, created_by, is_binary,
                                   ciphertext, wrapped_data_key, key_name, key_version)
                 VALUES ('s1', 'v1', 1, 0, 'test', 0, x'00', x'00', 'default', 1),
                        ('s1', 'v2', 2, 0, 'test', 0, x'00', x'00', 'default', 1);
             INSERT INTO version_stages (secret_id, stage, version_id)
                 VALUES ('s1', 'CURRENT', 'v2'), ('s1', 'PREVIOUS', 'v1'), ('s1', 'canary', 'v2');",
        )
        .execute(&pool)
        .await
        .unwrap();

        migrate(&pool).await.unwrap();
        let stages = || async {
            sqlx::query_as::<_, (String, String)>(
                "SELECT stage, version_id FROM version_stages ORDER BY stage",
            )
            .fetch_all(&pool)
            .await
            .unwrap()
        };
        let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
            list.iter()
                .map(|(stage, version)| ((*stage).to_owned(), (*version).to_owned()))
                .collect()
        };
        assert_eq!(
            stages().await,
            pairs(&[("CURRENT", "v2"), ("PREVIOUS", "v1"), ("canary", "v2")])
        );
        let definition: String =
            sqlx::query_scalar("SELECT sql FROM sqlite_schema WHERE name = 'version_stages'")
                .fetch_one(&pool)
                .await
                .unwrap();
        assert!(
            definition.ends_with("STRICT, WITHOUT ROWID"),
            "{definition}"
        );
        // Stored in its key's tree: the table has no rowid to select.
        let error = sqlx::query("SELECT rowid FROM version_stages")
            .execute(&pool)
            .await
            .unwrap_err();
        assert!(error.to_string().contains("no such column"), "{error}");
        // A stage on a version that does not exist is refused; a version's
        // deletion takes its stages with it.
        let error = sqlx::query(
            "INSERT INTO version_stages (secret_id, stage, version_id) VALUES ('s1', 'x', 'v9')",
        )
        .execute(&pool)
        .await
        .unwrap_err();
        assert!(error.to_string().contains("FOREIGN KEY"), "{error}");
        sqlx::query("DELETE FROM versions WHERE version_id = 'v1'")
            .execute(&pool)
            .await
            .unwrap();
        assert_eq!(
            stages().await,
            pairs(&[("CURRENT", "v2"), ("canary", "v2")])
        );
    }

    /// Only the server migrates: the check the other commands make refuses
    /// a database without a schema, one at an older version and one at a
    /// newer version, saying which, and changes nothing.
    #[tokio::test]
    async fn a_command_refuses_a_schema_other_than_its_own_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("store.db").display()
        );
        let pool = SqlitePool::connect(&url).await.unwrap();
        let refusal = || async { require_current_sqlite(&pool).await.unwrap_err().to_string() };
        let error = refusal().await;
        assert!(
            error.contains("at version 0, older than this rekeyd's (version 10)"),
            "{error}"
        );

        migrate_sqlite(&pool, &SQLITE_MIGRATIONS[..6])
            .await
            .unwrap();
        let error = refusal().await;
        assert!(
            error.contains("at version 6, older than this rekeyd's (version 10)")
                && error.contains("only the server migrates it"),
            "{error}"
        );
        let applied: i64 = sqlx::query_scalar("SELECT MAX(version) FROM schema_migrations")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(applied, 6);

        migrate(&pool).await.unwrap();
        require_current_sqlite(&pool).await.unwrap();

        sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES (11, 0)")
            .execute(&pool)
            .await
            .unwrap();
        let error = refusal().await;
        assert!(
            error.contains("at version 11, newer than this rekeyd knows (version 10)"),
            "{error}"
        );
    }
}
