//! MariaDB (and MySQL for logins only): logins, a user's own password
//! change, and an admin's change (creating `user_clone` with the user's
//! grants on first use). Password changes are refused on MySQL
//! (`require_mariadb`).
//! Passwords go as `mysql_native_password` hashes; statements are not
//! logged.

use super::hashes::mysql_native_hash;
use super::{Boxed, CONNECT_TIMEOUT, Credentials, Dialect, LoginError, Session, describe};
use sqlx::mysql::{MySqlConnectOptions, MySqlSslMode};
use sqlx::{ConnectOptions, Connection, Executor, MySqlConnection, Row};

async fn connect(
    credentials: &Credentials,
    doing: &str,
    session: &Session,
) -> Result<MySqlConnection, LoginError> {
    let address = credentials.address(Dialect::Mysql);
    let mut options = MySqlConnectOptions::new()
        .host(&credentials.host)
        .port(credentials.port.unwrap_or(3306))
        .username(&credentials.username)
        .password(&credentials.password)
        .ssl_mode(if credentials.verified_tls() {
            MySqlSslMode::VerifyIdentity
        } else {
            MySqlSslMode::Preferred
        })
        .disable_statement_logging();
    if let (true, Some(ca_file)) = (credentials.verified_tls(), &session.ca_file) {
        options = options.ssl_ca(ca_file);
    }
    if let Some(dbname) = &credentials.dbname {
        options = options.database(dbname);
    }
    match tokio::time::timeout(CONNECT_TIMEOUT, options.connect()).await {
        Err(_) => Err(LoginError::Unreachable(format!(
            "cannot connect to {address}: timed out"
        ))),
        Ok(Err(error)) => Err(describe(&error, &credentials.username, &address, doing)),
        Ok(Ok(mut connection)) => {
            // A statement that waits on a lock ends on the server too, never
            // to commit after the step has given up on it (a variable both
            // MySQL and MariaDB know, in seconds).
            let seconds = session.limit.as_secs().max(1);
            connection
                .execute(format!("SET SESSION lock_wait_timeout = {seconds}").as_str())
                .await
                .map_err(|error| describe(&error, &credentials.username, &address, doing))?;
            Ok(connection)
        }
    }
}

/// Refuses to change a password on a server that is not MariaDB. The
/// statements here give the password as its `mysql_native_password` hash
/// (`SET PASSWORD = '*…'`, `IDENTIFIED BY PASSWORD '*…'`): MariaDB takes
/// that as the hash, but MySQL 5.7.6 and later take the quoted text of
/// `SET PASSWORD` as the password itself, which would lock the user out,
/// and MySQL 8 has no `IDENTIFIED BY PASSWORD`. Nothing is changed there.
async fn require_mariadb(
    connection: &mut MySqlConnection,
    user: &str,
    address: &str,
) -> Result<(), LoginError> {
    let version: String = sqlx::query_scalar("SELECT VERSION()")
        .fetch_one(&mut *connection)
        .await
        .map_err(|error| describe(&error, user, address, "read the server's version"))?;
    if version.contains("MariaDB") {
        return Ok(());
    }
    Err(LoginError::Unreachable(format!(
        "{address} is MySQL {version}, not MariaDB: the mysql rotator sets passwords as \
         MariaDB hashes, which MySQL would take as the password itself; nothing was changed"
    )))
}

pub fn check_login<'a>(credentials: &'a Credentials, session: &'a Session) -> Boxed<'a> {
    Box::pin(check_login_inner(credentials, session))
}

async fn check_login_inner(credentials: &Credentials, session: &Session) -> Result<(), LoginError> {
    let mut connection = connect(credentials, "log in", session).await?;
    let address = credentials.address(Dialect::Mysql);
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
    let address = credentials.address(Dialect::Mysql);
    require_mariadb(&mut connection, &credentials.username, &address).await?;
    let hash = mysql_native_hash(new_password);
    connection
        .execute(format!("SET PASSWORD = '{hash}'").as_str())
        .await
        .map_err(|error| {
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
    let address = admin.address(Dialect::Mysql);
    require_mariadb(&mut connection, &admin.username, &address).await?;
    let hash = mysql_native_hash(&target.password);
    let lookup =
        |error: sqlx::Error| describe(&error, &admin.username, &address, "read mysql.user");
    let hosts: Vec<String> =
        sqlx::query("SELECT CAST(Host AS CHAR) AS host FROM mysql.user WHERE User = ?")
            .bind(base)
            .fetch_all(&mut connection)
            .await
            .map_err(lookup)?
            .iter()
            .filter_map(|row| row.try_get::<String, _>("host").ok())
            .collect();
    if hosts.is_empty() {
        return Err(LoginError::Unreachable(format!(
            "user {base} does not exist at {address}"
        )));
    }
    // Every host the user has: a user is one account per host, and each
    // logs in with the password of its own.
    for host in &hosts {
        set_at_host(&mut connection, admin, base, target, host, &hash, &address).await?;
    }
    let _ = connection.close().await;
    Ok(())
}

/// Installs `hash` for `target`'s user at `host`, creating it with the
/// grants and account options of `base` at that host.
async fn set_at_host(
    connection: &mut MySqlConnection,
    admin: &Credentials,
    base: &str,
    target: &Credentials,
    host: &str,
    hash: &str,
    address: &str,
) -> Result<(), LoginError> {
    let exists: Option<i32> =
        sqlx::query_scalar("SELECT 1 FROM mysql.user WHERE User = ? AND Host = ?")
            .bind(&target.username)
            .bind(host)
            .fetch_optional(&mut *connection)
            .await
            .map_err(|error| describe(&error, &admin.username, address, "read mysql.user"))?;
    // Host names come from the server; in statements, as string literals.
    let host_literal = literal(host);
    let user = &target.username;
    let (statement, doing) = if exists.is_none() {
        (
            format!("CREATE USER '{user}'@{host_literal} IDENTIFIED BY PASSWORD '{hash}'"),
            "create user",
        )
    } else {
        (
            format!("ALTER USER '{user}'@{host_literal} IDENTIFIED BY PASSWORD '{hash}'"),
            "alter user",
        )
    };
    connection
        .execute(statement.as_str())
        .await
        .map_err(|error| describe(&error, &admin.username, address, doing))?;
    // The same grants as the user, every time: GRANT is idempotent, and a
    // step that failed between CREATE USER and its grants (or a grant the
    // user got since) is made whole on the next.
    let show = format!("SHOW GRANTS FOR '{base}'@{host_literal}");
    let grants: Vec<String> = connection
        .fetch_all(show.as_str())
        .await
        .map_err(|error| describe(&error, &admin.username, address, "read grants"))?
        .iter()
        .filter_map(|row| row.try_get::<String, _>(0).ok())
        .collect();
    for grant in grants {
        let grant = without_credentials(&grant);
        let cloned = grant
            .replace(&format!("`{base}`@"), &format!("`{user}`@"))
            .replace(&format!("'{base}'@"), &format!("'{user}'@"));
        // The bare USAGE line grants nothing (the clone exists), and only
        // an admin with GRANT OPTION may say it.
        if cloned == grant || is_bare_usage(&cloned) {
            continue;
        }
        connection
            .execute(cloned.as_str())
            .await
            .map_err(|error| describe(&error, &admin.username, address, "grant"))?;
    }
    Ok(())
}

/// `text` as a MariaDB string literal: quotes doubled, backslashes escaped
/// (which, under the default SQL mode, start an escape).
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "''"))
}

/// A line of `SHOW GRANTS` without its `IDENTIFIED ...` clause (`BY
/// PASSWORD '*hash'`, `VIA plugin USING '...'`), which would give the clone
/// the user's credentials; what follows it (`REQUIRE SSL`, `WITH
/// MAX_USER_CONNECTIONS 5`) is kept, so the clone is held to the same.
fn without_credentials(grant: &str) -> String {
    let Some(start) = grant.find(" IDENTIFIED ") else {
        return grant.to_owned();
    };
    let rest = &grant[start + 1..];
    // The clause ends where REQUIRE or WITH begins outside a quoted string.
    let mut quoted = false;
    let mut end = rest.len();
    for (at, c) in rest.char_indices() {
        match c {
            '\'' => quoted = !quoted,
            ' ' if !quoted
                && (rest[at..].starts_with(" REQUIRE ") || rest[at..].starts_with(" WITH ")) =>
            {
                end = at;
                break;
            }
            _ => {}
        }
    }
    format!("{}{}", &grant[..start], &rest[end..])
}

/// `GRANT USAGE ON *.* TO user@host` and nothing more.
fn is_bare_usage(grant: &str) -> bool {
    grant.starts_with("GRANT USAGE ON *.* TO ")
        && !grant.contains(" REQUIRE ")
        && !grant.contains(" WITH ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_lose_their_credentials_and_keep_their_options() {
        for (line, kept) in [
            (
                "GRANT USAGE ON *.* TO `app`@`%` IDENTIFIED BY PASSWORD '*AB12'",
                "GRANT USAGE ON *.* TO `app`@`%`",
            ),
            (
                "GRANT USAGE ON *.* TO `app`@`%` IDENTIFIED BY PASSWORD '*AB12' REQUIRE SSL WITH MAX_USER_CONNECTIONS 5",
                "GRANT USAGE ON *.* TO `app`@`%` REQUIRE SSL WITH MAX_USER_CONNECTIONS 5",
            ),
            (
                "GRANT USAGE ON *.* TO `app`@`%` IDENTIFIED VIA ed25519 USING 'x WITH y' OR unix_socket WITH GRANT OPTION",
                "GRANT USAGE ON *.* TO `app`@`%` WITH GRANT OPTION",
            ),
            (
                "GRANT SELECT ON `test`.* TO `app`@`%`",
                "GRANT SELECT ON `test`.* TO `app`@`%`",
            ),
        ] {
            assert_eq!(without_credentials(line), kept);
        }
        assert!(is_bare_usage("GRANT USAGE ON *.* TO `app_clone`@`%`"));
        assert!(!is_bare_usage(
            "GRANT USAGE ON *.* TO `app_clone`@`%` REQUIRE SSL"
        ));
    }

    #[test]
    fn hosts_are_quoted_as_literals() {
        assert_eq!(literal("10.0.%"), "'10.0.%'");
        assert_eq!(literal("a'b\\"), "'a''b\\\\'");
    }
}
