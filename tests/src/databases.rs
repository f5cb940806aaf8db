//! Real database servers for the rotator tests. PostgreSQL: a throwaway
//! cluster of our own (`initdb` into a temporary directory, SCRAM-SHA-256
//! authentication, a free port, every statement logged), because the
//! machine's PostgreSQL trusts every local connection and would prove
//! nothing. MariaDB/MySQL: the server `REKEY_TEST_MYSQL_URL` names, which
//! checks the passwords of the users a test creates.
//!
//! Each is found through an environment variable that `.ci/run` sets
//! (`REKEY_TEST_PG_BINDIR`, `REKEY_TEST_MYSQL_URL`, and for rekey's own
//! PostgreSQL storage `REKEY_TEST_POSTGRES_URL`). Unset: the test is
//! skipped with a notice. Set but unusable: the test fails.

use std::path::PathBuf;
use std::process::Command;
use tempfile::TempDir;

fn random_word() -> String {
    rekey_shared::VersionId::random()
        .into_string()
        .replace('-', "")[..10]
        .to_owned()
}

/// Runs `future` to completion on a runtime of its own, in a thread of its
/// own: callable from plain tests, from async tests and from `Drop`.
fn on_own_runtime<T: Send>(future: impl std::future::Future<Output = T> + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| tokio::runtime::Runtime::new().unwrap().block_on(future))
            .join()
            .unwrap()
    })
}

/// A CA's certificate, and a certificate it signed for 127.0.0.1 and
/// localhost with its key, in PEM.
fn database_certificates() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "rekey test database CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    (ca_pem, server.pem(), key.serialize_pem())
}

/// A PostgreSQL cluster that lives as long as this value.
#[derive(Debug)]
pub struct ThrowawayPostgres {
    dir: TempDir,
    bindir: PathBuf,
    pub port: u16,
    pub superuser_password: String,
    /// With TLS: the CA (PEM file) that signed the server's certificate.
    pub ca_file: Option<PathBuf>,
}

fn as_postgres(program: &std::path::Path) -> Command {
    let mut command = Command::new("runuser");
    command.args(["-u", "postgres", "--"]).arg(program);
    command
}

impl ThrowawayPostgres {
    /// `None` (skip) when `REKEY_TEST_PG_BINDIR` is unset.
    pub fn start() -> Option<Self> {
        Self::start_with(false)
    }

    /// As [`Self::start`], taking TCP connections over TLS only, with a
    /// certificate for 127.0.0.1 and localhost from a CA of its own.
    pub fn start_with_tls() -> Option<Self> {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> Option<Self> {
        let Ok(bindir) = std::env::var("REKEY_TEST_PG_BINDIR") else {
            eprintln!("skipped: REKEY_TEST_PG_BINDIR is not set (.ci/run sets it)");
            return None;
        };
        let bindir = PathBuf::from(bindir);
        let dir = tempfile::Builder::new()
            .prefix("rekey-pg-")
            .tempdir()
            .unwrap();
        let status = Command::new("chown")
            .arg("postgres")
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "chown of the cluster directory failed");
        let superuser_password = format!("super-{}", random_word());
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, &superuser_password).unwrap();
        let _ = Command::new("chown").arg("postgres").arg(&pwfile).status();
        let data = dir.path().join("data");
        let initdb = as_postgres(&bindir.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
                "--no-sync",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .unwrap();
        assert!(
            initdb.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&initdb.stderr)
        );
        let mut options = format!(
            "-k {} -c listen_addresses=127.0.0.1 -c log_statement=all -c password_encryption=scram-sha-256",
            dir.path().display()
        );
        let ca_file = tls.then(|| {
            let (ca, certificate, key) = database_certificates();
            let ca_file = dir.path().join("ca.pem");
            std::fs::write(&ca_file, ca).unwrap();
            for (name, contents) in [("server.crt", certificate), ("server.key", key)] {
                let path = dir.path().join(name);
                std::fs::write(&path, contents).unwrap();
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
                let _ = Command::new("chown").arg("postgres").arg(&path).status();
            }
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all scram-sha-256\nhostssl all all 127.0.0.1/32 scram-sha-256\n",
            )
            .unwrap();
            options.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={0}/server.crt -c ssl_key_file={0}/server.key",
                dir.path().display()
            ));
            ca_file
        });
        // A free port, as far as one can tell before PostgreSQL binds it:
        // another test's server may take it in between, and then another
        // port is tried.
        let log = dir.path().join("server.log");
        let mut attempts = 0;
        let port = loop {
            attempts += 1;
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let started = as_postgres(&bindir.join("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(&log)
                .args([
                    "-o",
                    &format!("-p {port} {options}"),
                    "-w",
                    "-t",
                    "60",
                    "start",
                ])
                .output()
                .unwrap();
            if started.status.success() {
                break port;
            }
            let said = std::fs::read_to_string(&log).unwrap_or_default();
            assert!(
                attempts < 5 && said.contains("could not bind"),
                "pg_ctl start failed: {}\n{said}",
                String::from_utf8_lossy(&started.stderr)
            );
        };
        Some(Self {
            dir,
            bindir,
            port,
            superuser_password,
            ca_file,
        })
    }

    /// Runs SQL as the superuser; panics when it fails.
    pub fn sql(&self, sql: &str) {
        let output = self.psql().args(["-q", "-c", sql]).output().unwrap();
        assert!(
            output.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// The output of `sql` run as the superuser, unaligned, without headers.
    pub fn query(&self, sql: &str) -> String {
        let output = self.psql().args(["-At", "-c", sql]).output().unwrap();
        assert!(
            output.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// A superuser session that runs what is written to its standard input,
    /// and prints each statement's tag: for holding a transaction open.
    pub fn session(&self) -> std::process::Child {
        self.psql()
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    }

    fn psql(&self) -> Command {
        let mut command = Command::new(self.bindir.join("psql"));
        command.env("PGPASSWORD", &self.superuser_password).args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-v",
            "ON_ERROR_STOP=1",
        ]);
        command
    }

    /// Whether `user` logs in with `password` and may run `query`.
    pub fn can(&self, user: &str, password: &str, query: &str) -> bool {
        self.psql_as(user, password, query).status.success()
    }

    /// `psql` as `user` with `password`, running `query` (stopping at its
    /// first error, never asking for a password).
    fn psql_as(&self, user: &str, password: &str, query: &str) -> std::process::Output {
        Command::new(self.bindir.join("psql"))
            .env("PGPASSWORD", password)
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                user,
                "-d",
                "postgres",
                "-w",
                "-v",
                "ON_ERROR_STOP=1",
                "-q",
                "-c",
                query,
            ])
            .output()
            .unwrap()
    }

    /// Whether `user` logs in with `password`: false only when the server
    /// refuses the password (or the user), so that a server down or out of
    /// connections cannot pass for a refusal; anything else panics.
    pub fn logs_in(&self, user: &str, password: &str) -> bool {
        let output = self.psql_as(user, password, "SELECT 1");
        let stderr = String::from_utf8_lossy(&output.stderr);
        match output.status.success() {
            true => true,
            false if stderr.contains("password authentication failed") => false,
            false => panic!("{user} neither logged in nor was refused its password: {stderr}"),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for ThrowawayPostgres {
    fn drop(&mut self) {
        let _ = as_postgres(&self.bindir.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

/// The MariaDB/MySQL server of `REKEY_TEST_MYSQL_URL`, with users this
/// test created (dropped at the end).
#[derive(Debug)]
pub struct TestMysql {
    pub url: String,
    pub host: String,
    pub port: u16,
    users: std::sync::Mutex<Vec<String>>,
}

impl TestMysql {
    /// `None` (skip) when `REKEY_TEST_MYSQL_URL` is unset.
    pub fn connect() -> Option<Self> {
        let Ok(url) = std::env::var("REKEY_TEST_MYSQL_URL") else {
            eprintln!("skipped: REKEY_TEST_MYSQL_URL is not set (.ci/run sets it)");
            return None;
        };
        let rest = url.split("@").nth(1).unwrap_or("127.0.0.1:3306/test");
        let address = rest.split('/').next().unwrap_or("127.0.0.1:3306");
        let (host, port) = address.split_once(':').unwrap_or((address, "3306"));
        let mysql = Self {
            url: url.clone(),
            host: host.to_owned(),
            port: port.parse().unwrap(),
            users: Default::default(),
        };
        mysql.sql("SELECT 1");
        Some(mysql)
    }

    /// Runs SQL as the test's admin; panics when it fails.
    pub fn sql(&self, sql: &str) {
        if let Err(error) = self.try_sql(sql) {
            panic!("REKEY_TEST_MYSQL_URL is set, and {sql:?} failed on it: {error}")
        }
    }

    fn try_sql(&self, sql: &str) -> Result<(), sqlx::Error> {
        on_own_runtime(async {
            use sqlx::{Connection, Executor};
            let mut connection = sqlx::MySqlConnection::connect(&self.url).await?;
            let done = connection.execute(sql).await.map(drop);
            let _ = connection.close().await;
            done
        })
    }

    /// The first column of what `sql` returns, as text.
    pub fn query(&self, sql: &str) -> Vec<String> {
        on_own_runtime(async {
            use sqlx::{Connection, Row};
            let mut connection = sqlx::MySqlConnection::connect(&self.url).await.unwrap();
            let rows = sqlx::query(sql).fetch_all(&mut connection).await.unwrap();
            let _ = connection.close().await;
            rows.iter()
                .map(|row| {
                    row.try_get::<String, _>(0)
                        .or_else(|_| {
                            row.try_get::<Vec<u8>, _>(0)
                                .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                        })
                        .unwrap()
                })
                .collect()
        })
    }

    /// A new user of this test, with a unique name, and its password.
    pub fn create_user(&self, grants: &str) -> (String, String) {
        let user = format!("rk_{}", random_word());
        let password = format!("pw-{}", random_word());
        self.sql(&format!(
            "CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'"
        ));
        if !grants.is_empty() {
            self.sql(&format!("GRANT {grants} TO '{user}'@'%'"));
        }
        self.users.lock().unwrap().push(user.clone());
        (user, password)
    }

    /// Forgets a user the rotator will create (dropped at the end).
    pub fn adopt(&self, user: &str) {
        self.users.lock().unwrap().push(user.to_owned());
    }

    /// Whether `user` logs in with `password` and may run `query`.
    pub fn can(&self, user: &str, password: &str, query: &str) -> bool {
        let options = sqlx::mysql::MySqlConnectOptions::new()
            .host(&self.host)
            .port(self.port)
            .username(user)
            .password(password)
            .database("test");
        on_own_runtime(async {
            use sqlx::{ConnectOptions, Executor};
            match options.connect().await {
                Ok(mut connection) => connection.execute(query).await.is_ok(),
                Err(_) => false,
            }
        })
    }

    /// Whether `user` logs in with `password`: false only when the server
    /// refuses it access (error 1045), so that a server down or out of
    /// connections cannot pass for a refusal; anything else panics.
    pub fn logs_in(&self, user: &str, password: &str) -> bool {
        let options = sqlx::mysql::MySqlConnectOptions::new()
            .host(&self.host)
            .port(self.port)
            .username(user)
            .password(password)
            .database("test");
        on_own_runtime(async {
            use sqlx::{ConnectOptions, Connection};
            match options.connect().await {
                Ok(connection) => {
                    let _ = connection.close().await;
                    true
                }
                Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some("28000") => {
                    false
                }
                Err(error) => {
                    panic!("{user} neither logged in nor was refused access: {error}")
                }
            }
        })
    }
}

/// The test's users go, with the tables named after them (`test.USER_t`)
/// that a test failing half-way left; a failure here is reported, not a
/// panic (one while the test's own panic unwinds would abort the process
/// and lose that panic's report).
impl Drop for TestMysql {
    fn drop(&mut self) {
        let users = std::mem::take(&mut *self.users.lock().unwrap_or_else(|e| e.into_inner()));
        for user in users {
            for sql in [
                format!("DROP TABLE IF EXISTS test.{user}_t"),
                format!("DROP USER IF EXISTS '{user}'@'%', '{user}'@'localhost'"),
            ] {
                if let Err(error) = self.try_sql(&sql) {
                    eprintln!("cleaning up MariaDB: {sql}: {error}");
                }
            }
        }
    }
}

/// A fresh database on the PostgreSQL server `REKEY_TEST_POSTGRES_URL`
/// names, for rekey's own storage; dropped (with its connections) when
/// this value is, whether the test passed or not.
#[derive(Debug)]
pub struct StorageDatabase {
    admin_url: String,
    name: String,
    pub url: String,
}

impl StorageDatabase {
    /// `None` (skip) when `REKEY_TEST_POSTGRES_URL` is unset.
    pub fn create() -> Option<Self> {
        let Ok(admin_url) = std::env::var("REKEY_TEST_POSTGRES_URL") else {
            eprintln!("skipped: REKEY_TEST_POSTGRES_URL is not set (.ci/run sets it)");
            return None;
        };
        let name = format!("rekey_test_{}", random_word());
        let base = admin_url
            .rsplit_once('/')
            .map_or(admin_url.as_str(), |(base, _)| base);
        let database = Self {
            url: format!("{base}/{name}"),
            admin_url: admin_url.clone(),
            name,
        };
        database.admin_sql(&format!("CREATE DATABASE {}", database.name));
        Some(database)
    }

    /// Runs SQL in this database; panics when it fails.
    pub fn sql(&self, sql: &str) {
        run_postgres(&self.url, sql).unwrap();
    }

    fn admin_sql(&self, sql: &str) {
        run_postgres(&self.admin_url, sql)
            .unwrap_or_else(|error| panic!("REKEY_TEST_POSTGRES_URL is set but unusable: {error}"));
    }
}

/// One statement on its own connection, from any thread or runtime.
fn run_postgres(url: &str, sql: &str) -> Result<(), sqlx::Error> {
    on_own_runtime(async {
        use sqlx::{Connection, Executor};
        let mut connection = sqlx::PgConnection::connect(url).await?;
        connection.execute(sql).await?;
        connection.close().await
    })
}

impl Drop for StorageDatabase {
    fn drop(&mut self) {
        if let Err(error) = run_postgres(
            &self.admin_url,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        ) {
            eprintln!("could not drop test database {}: {error}", self.name);
        }
    }
}
