//! The `postgres` and `mysql` rotators: a database user's password, changed
//! by the user itself (single-user strategy) or, alternating between `user`
//! and `user_clone`, by an admin whose credentials are another secret. The
//! connection details come from the secret's own JSON value (`engine`,
//! `host`, `port`, `username`, `password`, `dbname`, `ssl`), as AWS's
//! templates store them.
//!
//! Passwords reach the database only as a SCRAM verifier (PostgreSQL) or a
//! native hash (MySQL/MariaDB), on connections whose statements sqlx does
//! not log. Errors name host, port and user, never a value.

mod hashes;
mod mysql;
mod postgres;

use super::Step;
use super::rotators::{Held, RotatorError, StepInput, StepOutput};
use crate::password::{self, PasswordPolicy};
use rekey_shared::SecretValue;
use serde::Deserialize;
use std::time::Duration;
use zeroize::Zeroizing;

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The least a database password's policy may give, in bits.
const MIN_BITS: f64 = 80.0;

/// Refuses a policy too weak for a database password: whoever may
/// configure rotation (the operator role, which may not read values) could
/// otherwise have a database take a password they can guess. Checked when
/// rotation is configured and when a password is made, not when a run of
/// a configuration from before is cancelled or reverted.
pub fn strong_enough(policy: &PasswordPolicy) -> Result<(), RotatorError> {
    let bits = policy.bits();
    if bits < MIN_BITS {
        return Err(RotatorError(format!(
            "a database password's policy must give at least {MIN_BITS} bits (its length times \
             log2 of the characters it draws from); this one gives {bits:.0}: make it longer or \
             allow more characters"
        )));
    }
    Ok(())
}
const CLONE_SUFFIX: &str = "_clone";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    Mysql,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    Single,
    Alternating,
}

impl Strategy {
    pub fn parse(text: &str) -> Result<Strategy, RotatorError> {
        match text {
            "" | "single" => Ok(Strategy::Single),
            "alternating" => Ok(Strategy::Alternating),
            other => Err(RotatorError(format!(
                "strategy {other:?} is not single or alternating"
            ))),
        }
    }
}

/// Connection details from a secret's JSON value.
#[derive(Clone, Deserialize)]
pub struct Credentials {
    #[serde(default)]
    pub engine: String,
    pub host: String,
    pub port: Option<u16>,
    pub username: String,
    pub password: String,
    #[serde(default)]
    pub dbname: Option<String>,
    /// TLS to the database: verified unless this is `false` (see
    /// [`Credentials::verified_tls`]).
    #[serde(default)]
    pub ssl: Option<bool>,
    #[serde(flatten)]
    pub rest: serde_json::Map<String, serde_json::Value>,
}

impl Drop for Credentials {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.password);
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// What is wrong with a JSON value, without quoting any of it: serde's
/// messages for a wrong type quote the value found ("invalid type: integer
/// `123456`"), which may be the password.
fn parse_problem(error: &serde_json::Error) -> String {
    let message = error.to_string();
    let message = message.split(" at line").next().unwrap_or_default();
    if message.starts_with("missing field") || message.starts_with("unknown field") {
        return message
            .split(", expected")
            .next()
            .unwrap_or_default()
            .to_owned();
    }
    match error.classify() {
        serde_json::error::Category::Syntax => "it is not valid JSON".to_owned(),
        serde_json::error::Category::Eof => "it ends early".to_owned(),
        _ => "a field is not of its type: host, username and password are strings, port a number"
            .to_owned(),
    }
}

impl Credentials {
    pub fn parse(value: Option<&SecretValue>, what: &str) -> Result<Credentials, RotatorError> {
        let text = match value {
            Some(SecretValue::Text(text)) => text,
            Some(SecretValue::Binary(_)) => {
                return Err(RotatorError(format!(
                    "{what} is binary; it must be a JSON object"
                )));
            }
            None => return Err(RotatorError(format!("{what} has no value"))),
        };
        let credentials: Credentials = serde_json::from_str(text).map_err(|error| {
            RotatorError(format!(
                "{what} is not a JSON object with host, username and password ({})",
                parse_problem(&error)
            ))
        })?;
        if !credentials
            .username
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
            || credentials.username.is_empty()
            || credentials.username.len() > 63
        {
            // Not quoted: the value is the secret's, and this message
            // reaches whoever configures or describes its rotation.
            return Err(RotatorError(format!(
                "{what}: the username must be 1-63 letters, digits or _"
            )));
        }
        Ok(credentials)
    }

    /// Whether the connection must be TLS with a certificate that names
    /// the host and verifies: unless the value says `"ssl": false`. A
    /// server that merely speaks TLS, or none, could be anyone's, and
    /// would be sent what a login sends (sqlx answers a request for the
    /// password in the clear) and the verifier or hash a step installs.
    pub fn verified_tls(&self) -> bool {
        self.ssl != Some(false)
    }

    /// The same credentials with another password: to log in as the same
    /// user at the same place, with a password an older value had.
    fn with_password(&self, password: &str) -> Credentials {
        let mut credentials = self.clone();
        zeroize::Zeroize::zeroize(&mut credentials.password);
        credentials.password = password.to_owned();
        credentials
    }

    /// Where this value's password goes: the address, as DNS compares
    /// names, and whether TLS there is verified. A password is sent only
    /// to the place of a value that holds it: whoever may write a value may
    /// point it anywhere, but not the passwords of the values before it.
    pub fn place(&self, dialect: Dialect) -> String {
        let tls = if self.verified_tls() {
            "verified TLS"
        } else {
            "TLS not verified"
        };
        format!("{} ({tls})", self.address(dialect).to_ascii_lowercase())
    }

    pub fn address(&self, dialect: Dialect) -> String {
        let port = self.port.unwrap_or(match dialect {
            Dialect::Postgres => 5432,
            Dialect::Mysql => 3306,
        });
        format!("{}:{port}", self.host)
    }

    /// The same credentials with another user name and password, as JSON.
    fn with(&self, username: &str, password: &str) -> Zeroizing<String> {
        let mut document = self.rest.clone();
        document.insert("engine".into(), self.engine.clone().into());
        document.insert("host".into(), self.host.clone().into());
        if let Some(port) = self.port {
            document.insert("port".into(), port.into());
        }
        document.insert("username".into(), username.into());
        document.insert("password".into(), password.into());
        if let Some(dbname) = &self.dbname {
            document.insert("dbname".into(), dbname.clone().into());
        }
        if let Some(ssl) = self.ssl {
            document.insert("ssl".into(), ssl.into());
        }
        let text = Zeroizing::new(serde_json::to_string(&document).unwrap_or_default());
        if let Some(serde_json::Value::String(password)) = document.get_mut("password") {
            zeroize::Zeroize::zeroize(password);
        }
        text
    }
}

/// A database operation's future, boxed with `Send` spelled out: sqlx's
/// executor traits otherwise defeat the compiler's higher-ranked inference
/// in the engine's futures.
pub type Boxed<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), LoginError>> + Send + 'a>>;

/// Why a login failed: the credentials (try others) or the way there.
#[derive(Debug)]
pub enum LoginError {
    Refused(String),
    Unreachable(String),
}

impl LoginError {
    fn message(self) -> String {
        match self {
            LoginError::Refused(message) | LoginError::Unreachable(message) => message,
        }
    }
}

/// The rotator of one configuration.
#[derive(Debug, Clone)]
pub struct DatabaseRotator {
    pub dialect: Dialect,
    pub strategy: Strategy,
    pub policy: PasswordPolicy,
    /// Alternating users: the user (and its clone) the admin may act on,
    /// as pinned when rotation was configured (`RotatorSettings::user`).
    pub user: String,
    /// Alternating users: the place (`Credentials::place`) the user's new
    /// passwords go to, as pinned when rotation was configured
    /// (`RotatorSettings::place`); empty (configured before places were
    /// pinned): the admin's place.
    pub place: String,
    /// The admin secret's CURRENT value (alternating users), loaded by the
    /// engine before each step.
    pub admin: Option<SecretValue>,
    pub session: Session,
}

/// How a step's sessions with the database go.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    /// How long a step may take (`rotation.database_timeout_seconds`);
    /// each session's statements are limited to it on the server too.
    pub limit: Duration,
    /// `rotation.database_ca_file`: a CA that databases (all but those
    /// whose value says `"ssl": false`) may present certificates of,
    /// beside the web's roots.
    pub ca_file: Option<std::path::PathBuf>,
}

impl DatabaseRotator {
    pub async fn run(&self, input: &StepInput<'_>) -> Result<StepOutput, RotatorError> {
        // The database server ends a statement at the limit (its error says
        // so); this is for a server that stops answering altogether.
        let backstop = self.session.limit + Duration::from_secs(5);
        tokio::time::timeout(backstop, self.step(input))
            .await
            .unwrap_or_else(|_| {
                Err(RotatorError(format!(
                    "{} did not finish within {} seconds and was stopped",
                    input.step,
                    backstop.as_secs()
                )))
            })
    }

    async fn step(&self, input: &StepInput<'_>) -> Result<StepOutput, RotatorError> {
        match (input.step, input.revert) {
            (Step::Create, _) => self.create(input),
            (Step::Set, _) => self.set(input).await.map(|held| StepOutput {
                held,
                ..StepOutput::default()
            }),
            (Step::Test, _) => {
                let target = Credentials::parse(input.pending, "the pending value")?;
                self.check_place(&target)?;
                self.login(&target)
                    .await
                    .map(|()| StepOutput::default())
                    .map_err(|error| RotatorError(error.message()))
            }
            (Step::Finish, _) => Ok(StepOutput::default()),
        }
    }

    /// Alternating users: refuses a value that names a user other than the
    /// one pinned at configuration or its clone. The value is written by
    /// whoever may put one; the admin acts on the user it names.
    fn check_user(&self, username: &str) -> Result<(), RotatorError> {
        if self.strategy != Strategy::Alternating {
            return Ok(());
        }
        let pinned = &self.user;
        if pinned.is_empty() {
            return Err(RotatorError(
                "this rotation was configured before alternating users pinned their database \
                 user; configure it again (rekey rotation configure) to pin it"
                    .to_owned(),
            ));
        }
        if username == pinned || username.strip_suffix(CLONE_SUFFIX) == Some(pinned) {
            return Ok(());
        }
        Err(RotatorError(format!(
            "the value names database user {username}, but this rotation switches {pinned} and \
             {pinned}{CLONE_SUFFIX}, as pinned when it was configured; the admin acts on no other \
             user (to switch another, configure rotation again)"
        )))
    }

    /// Alternating users: refuses a value that would send the user's new
    /// password anywhere but the place pinned at configuration (or, for a
    /// configuration from before places were pinned, the admin's). The
    /// admin installs the password where it logs in; a value naming
    /// another place would have testSecret log in there with it, and hand
    /// a password that works to whoever listens.
    fn check_place(&self, target: &Credentials) -> Result<(), RotatorError> {
        if self.strategy != Strategy::Alternating {
            return Ok(());
        }
        let pinned = if self.place.is_empty() {
            Credentials::parse(self.admin.as_ref(), "the admin secret")?.place(self.dialect)
        } else {
            self.place.clone()
        };
        let place = target.place(self.dialect);
        if place == pinned {
            return Ok(());
        }
        Err(RotatorError(format!(
            "the value sends user {}'s password to {place}, but this rotation sends it only to \
             {pinned}, as pinned when it was configured (to move the database, configure the \
             single strategy, then alternating users again)",
            target.username
        )))
    }

    fn create(&self, input: &StepInput<'_>) -> Result<StepOutput, RotatorError> {
        let current = Credentials::parse(input.current, "the CURRENT value")?;
        self.check_user(&current.username)?;
        self.check_place(&current)?;
        strong_enough(&self.policy)?;
        let password = password::generate(&self.policy)
            .map_err(|error| RotatorError(format!("the password policy: {error}")))?;
        let username = match self.strategy {
            Strategy::Single => current.username.clone(),
            Strategy::Alternating => match current.username.strip_suffix(CLONE_SUFFIX) {
                Some(base) => base.to_owned(),
                None => format!("{}{CLONE_SUFFIX}", current.username),
            },
        };
        // PostgreSQL would cut a longer name short, silently, and find no
        // role of the whole name the next time.
        let longest = match self.dialect {
            Dialect::Postgres => 63,
            Dialect::Mysql => 80,
        };
        if username.len() > longest {
            return Err(RotatorError(format!(
                "user {} is too long for alternating users: its clone {username} would be {} \
                 characters, and the database allows {longest}; use a user name of at most {}",
                current.username,
                username.len(),
                longest - CLONE_SUFFIX.len()
            )));
        }
        let value = current.with(&username, &password);
        Ok(StepOutput {
            new_value: Some(SecretValue::text(value.as_str())),
            log: format!("new password for {username}"),
            held: None,
        })
    }

    async fn login(&self, credentials: &Credentials) -> Result<(), LoginError> {
        match self.dialect {
            Dialect::Postgres => postgres::check_login(credentials, &self.session).await,
            Dialect::Mysql => mysql::check_login(credentials, &self.session).await,
        }
    }

    /// Installs the target credentials (the pending value; CURRENT's when
    /// reverting). A single user's is a no-op when they already log in;
    /// alternating users' always goes through the admin, which also makes
    /// a clone's grants whole (a step that failed after creating the clone
    /// left it logging in with fewer).
    async fn set(&self, input: &StepInput<'_>) -> Result<Option<Held>, RotatorError> {
        let target = Credentials::parse(input.pending, "the value to install")?;
        match self.strategy {
            Strategy::Single => {
                let candidates = match self.login(&target).await {
                    Ok(()) => return Ok(Some(Held::Pending)),
                    Err(LoginError::Unreachable(message)) => return Err(RotatorError(message)),
                    Err(LoginError::Refused(message)) => {
                        let candidates = self.older_logins(input, &target);
                        if candidates.is_empty() {
                            return Err(RotatorError(format!(
                                "{message}, and no CURRENT or PREVIOUS value of user {} sends \
                                 its password to {} to log in with and change it",
                                target.username,
                                target.place(self.dialect)
                            )));
                        }
                        candidates
                    }
                };
                let mut last = String::new();
                for (held, credentials) in candidates {
                    let result = match self.dialect {
                        Dialect::Postgres => {
                            postgres::change_own_password(
                                &credentials,
                                &target.password,
                                &self.session,
                            )
                            .await
                        }
                        Dialect::Mysql => {
                            mysql::change_own_password(
                                &credentials,
                                &target.password,
                                &self.session,
                            )
                            .await
                        }
                    };
                    match result {
                        Ok(()) => return Ok(held),
                        Err(LoginError::Refused(message)) => last = message,
                        Err(LoginError::Unreachable(message)) => return Err(RotatorError(message)),
                    }
                }
                Err(RotatorError(format!(
                    "cannot log in as {} with the CURRENT or PREVIOUS password ({last})",
                    target.username
                )))
            }
            // setSecret changed the other user's password, never this
            // one's: a revert changes no password (it would set the one a
            // writer of CURRENT chose), it only tests that CURRENT logs in.
            Strategy::Alternating if input.revert => {
                self.check_place(&target)?;
                self.login(&target)
                    .await
                    .map(|()| None)
                    .map_err(|error| RotatorError(error.message()))
            }
            Strategy::Alternating => {
                self.check_user(&target.username)?;
                self.check_place(&target)?;
                let admin = Credentials::parse(self.admin.as_ref(), "the admin secret")?;
                let base = target
                    .username
                    .strip_suffix(CLONE_SUFFIX)
                    .unwrap_or(&target.username)
                    .to_owned();
                let result = match self.dialect {
                    Dialect::Postgres => {
                        postgres::set_password_as_admin(&admin, &base, &target, &self.session).await
                    }
                    Dialect::Mysql => {
                        mysql::set_password_as_admin(&admin, &base, &target, &self.session).await
                    }
                };
                result
                    .map(|()| None)
                    .map_err(|error| RotatorError(error.message()))
            }
        }
    }
}

impl DatabaseRotator {
    /// A single user's logins to change its password with: the user with
    /// each password it may still have (CURRENT's, PREVIOUS's, a reverted
    /// run's), each only where its own value sends it: the target's place,
    /// its TLS as verified. A password is not sent where another value
    /// says, since whoever may write a value may name any place (a
    /// listener of theirs, TLS off) and start a rotation: the database's
    /// real password, now PREVIOUS, would go there.
    fn older_logins(
        &self,
        input: &StepInput<'_>,
        target: &Credentials,
    ) -> Vec<(Option<Held>, Credentials)> {
        let place = target.place(self.dialect);
        [
            (Some(Held::Current), input.current),
            (Some(Held::Previous), input.previous),
            (None, input.replacing),
        ]
        .into_iter()
        .filter_map(|(held, candidate)| {
            let older = Credentials::parse(candidate, "a value").ok()?;
            (older.username == target.username && older.place(self.dialect) == place)
                .then(|| (held, target.with_password(&older.password)))
        })
        .collect()
    }
}

/// What alternating users pin when rotation is configured, as the secret's
/// CURRENT value (`value`) names them: the database user they switch with
/// its clone (its user name, without the clone's suffix), and the place
/// its passwords go (`Credentials::place`).
pub fn pinned(
    value: Option<&SecretValue>,
    dialect: Dialect,
) -> Result<(String, String), RotatorError> {
    let current = Credentials::parse(value, "the secret's CURRENT value")?;
    let user = current
        .username
        .strip_suffix(CLONE_SUFFIX)
        .unwrap_or(&current.username)
        .to_owned();
    Ok((user, current.place(dialect)))
}

fn tls_failed(address: &str, error: &dyn std::fmt::Display) -> LoginError {
    LoginError::Unreachable(format!(
        "TLS with {address} failed: {error} (the database's certificate must name the host and \
         verify against the web's roots or the CA in rotation.database_ca_file; only a value \
         with \"ssl\": false is sent to a database without verified TLS)"
    ))
}

/// An operator's sentence for a database error: no statement, no value.
pub fn describe(error: &sqlx::Error, user: &str, address: &str, doing: &str) -> LoginError {
    match error {
        // sqlx gives rustls's refusal of a certificate as an I/O error.
        sqlx::Error::Io(io)
            if io
                .get_ref()
                .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some()) =>
        {
            tls_failed(address, io)
        }
        sqlx::Error::Io(io) => {
            LoginError::Unreachable(format!("cannot connect to {address}: {io}"))
        }
        sqlx::Error::Tls(tls) => tls_failed(address, tls),
        sqlx::Error::PoolTimedOut => {
            LoginError::Unreachable(format!("cannot connect to {address}: timed out"))
        }
        sqlx::Error::Database(db) => {
            let code = db.code().map(|code| code.into_owned()).unwrap_or_default();
            // MySQL quotes the statement from where it could not parse it
            // ("... near 'PASSWORD '*6BB4...'' at line 1"): a password hash.
            let message = db.message();
            let message = message.split(" near '").next().unwrap_or_default();
            // Statement or lock timeout (PostgreSQL), lock wait timeout
            // (MySQL, MariaDB, whose SQLSTATE for it is the generic HY000):
            // the session's time limit passed.
            if matches!(code.as_str(), "57014" | "55P03") || message.contains("Lock wait timeout") {
                return LoginError::Unreachable(format!(
                    "{address} gave up waiting to {doing} at the step's time limit \
                     (rotation.database_timeout_seconds): another session may hold a lock on \
                     the user, in an open transaction"
                ));
            }
            match code.as_str() {
                // MariaDB answers a GRANT it refuses with the same SQLSTATE
                // as a failed login (1045, 28000): not a login, not refused.
                "28P01" | "28000" if doing.starts_with("log in") => LoginError::Refused(format!(
                    "authentication failed for user {user} at {address}"
                )),
                "28P01" | "28000" => LoginError::Unreachable(format!(
                    "permission denied to {doing} (user {user} at {address}): {message}"
                )),
                "42501" | "1227" | "1044" | "1142" | "42000" => LoginError::Unreachable(format!(
                    "permission denied to {doing} (user {user} at {address}): {message}"
                )),
                _ => LoginError::Unreachable(format!("{address} refused to {doing}: {message}")),
            }
        }
        other => LoginError::Unreachable(format!("cannot {doing} at {address}: {other}")),
    }
}

#[cfg(test)]
mod tests;
