//! PostgreSQL: logins, a user's own password change, and an admin's change
//! (creating `user_clone` in the user's role on first use). Passwords go as
//! SCRAM-SHA-256 verifiers; statements are not logged.

use super::hashes::scram_sha256_verifier;
use super::{Boxed, CONNECT_TIMEOUT, Credentials, Dialect, LoginError, Session, describe};
use sqlx::postgres::{PgConnectOptions, PgSslMode};
use sqlx::{ConnectOptions, Connection, Executor, PgConnection};

async fn connect(
    credentials: &Credentials,
    doing: &str,
    session: &Session,
) -> Result<PgConnection, LoginError> {
    let address = credentials.address(Dialect::Postgres);
    let mut options = PgConnectOptions::new()
        .host(&credentials.host)
        .port(credentials.port.unwrap_or(5432))
        .username(&credentials.username)
        .password(&credentials.password)
        // Unless the value says "ssl": false, a certificate that names the
        // host and verifies (`Credentials::verified_tls`).
        .ssl_mode(if credentials.verified_tls() {
            PgSslMode::VerifyFull
        } else {
            PgSslMode::Prefer
        })
        .disable_statement_logging()
        // A statement that waits on a lock (another session's open
        // transaction on the role) ends on the server too, never to
        // commit after the step has given up on it.
        .options([
            ("statement_timeout", session.limit.as_millis().to_string()),
            ("lock_timeout", session.limit.as_millis().to_string()),
        ]);
    if let (true, Some(ca_file)) = (credentials.verified_tls(), &session.ca_file) {
        options = options.ssl_root_cert(ca_file);
    }
    if let Some(dbname) = &credentials.dbname {
        options = options.database(dbname);
    }
    match tokio::time::timeout(CONNECT_TIMEOUT, options.connect()).await {
        Err(_) => Err(LoginError::Unreachable(format!(
            "cannot connect to {address}: timed out"
        ))),
        Ok(Err(error)) => Err(describe(&error, &credentials.username, &address, doing)),
        Ok(Ok(connection)) => Ok(connection),
    }
}

fn quote(identifier: &str) -> String {
    // Identifiers are checked to be letters, digits and _ when parsed.
    format!("\"{identifier}\"")
}

pub fn check_login<'a>(credentials: &'a Credentials, session: &'a Session) -> Boxed<'a> {
    Box::pin(check_login_inner(credentials, session))
}

async fn check_login_inner(credentials: &Credentials, session: &Session) -> Result<(), LoginError> {
    let mut connection = connect(credentials, "log in", session).await?;
    let address = credentials.address(Dialect::Postgres);
    sqlx::query("SELECT 1")
        .execute(&mut connection)
        .await
        .map_err(|error| describe(&error, &credentials.username, &address, "run a query"))?;
    let _ = connection.close().await;
    Ok(())
}

pub fn change_own_password<'a>(
    credentials: &'a Credentials,
    new_password: &'a str,
    session: &'a Session,
) -> Boxed<'a> {
    Box::pin(change_own_password_inner(
        credentials,
        new_password,
        session,
    ))
}

async fn change_own_password_inner(
    credentials: &Credentials,
    new_password: &str,
    session: &Session,
) -> Result<(), LoginError> {
    let mut connection = connect(credentials, "log in", session).await?;
    let address = credentials.address(Dialect::Postgres);
    let verifier = scram_sha256_verifier(new_password);
    let alter = format!("ALTER ROLE CURRENT_USER PASSWORD '{verifier}'");
    connection.execute(alter.as_str()).await.map_err(|error| {
        describe(
            &error,
            &credentials.username,
            &address,
            "change its own password",
        )
    })?;
    let _ = connection.close().await;
    Ok(())
}

pub fn set_password_as_admin<'a>(
    admin: &'a Credentials,
    base: &'a str,
    target: &'a Credentials,
    session: &'a Session,
) -> Boxed<'a> {
    Box::pin(set_password_as_admin_inner(admin, base, target, session))
}

async fn set_password_as_admin_inner(
    admin: &Credentials,
    base: &str,
    target: &Credentials,
    session: &Session,
) -> Result<(), LoginError> {
    let mut connection = connect(admin, "log in as admin", session).await?;
    let address = admin.address(Dialect::Postgres);
    let verifier = scram_sha256_verifier(&target.password);
    let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_roles WHERE rolname = $1")
        .bind(&target.username)
        .fetch_optional(&mut connection)
        .await
        .map_err(|error| describe(&error, &admin.username, &address, "look up roles"))?;
    if exists.is_none() {
        // The clone: a login role in the user's role, so it has its grants.
        let create = format!(
            "CREATE ROLE {} WITH LOGIN PASSWORD '{verifier}' IN ROLE {}",
            quote(&target.username),
            quote(base)
        );
        connection
            .execute(create.as_str())
            .await
            .map_err(|error| describe(&error, &admin.username, &address, "create role"))?;
    } else {
        let alter = format!(
            "ALTER ROLE {} WITH PASSWORD '{verifier}'",
            quote(&target.username)
        );
        connection
            .execute(alter.as_str())
            .await
            .map_err(|error| describe(&error, &admin.username, &address, "alter role"))?;
    }
    let _ = connection.close().await;
    Ok(())
}
