//! The `rekeyd` subcommands that change an installation directly, with
//! local access to its files: certificates, master keys, policy recovery.
//! Each change is audited as principal `rekeyd` and reaches a running
//! server through the database within seconds (see `sync`).

use crate::audit::AuditEvent;
use crate::certificates;
use crate::cli::{CertCommand, KeysCommand};
use crate::config::Loaded;
use crate::governance;
use crate::installation::{self, Opened};
use crate::pki::CertificateAuthority;
use crate::store::RevokeTarget;
use anyhow::Context;
use rekey_shared::KeyName;
use rekey_shared::time::format_millis;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

fn domain(error: crate::error::Error) -> anyhow::Error {
    anyhow::anyhow!("{error}")
}

pub async fn cert(loaded: &Loaded, command: CertCommand) -> anyhow::Result<()> {
    match command {
        CertCommand::Issue {
            name,
            roles,
            out,
            days,
        } => {
            certificates::check_principal(&name)?;
            let out = default_out(&name, out)?;
            anyhow::ensure!(
                !out.exists(),
                "{} exists; choose another --out or remove it",
                out.display()
            );
            // The CA key, then the roles (all in one policy version), then
            // the certificate: a missing key or an unknown role binds
            // nothing.
            let ca = CertificateAuthority::load(&loaded.dir)?;
            if !roles.is_empty() {
                let opened = installation::open(loaded).await?;
                let event = AuditEvent::local(
                    "policy:ApplyPolicy",
                    "*",
                    &format!("bind {name} to {}", roles.join(", ")),
                );
                let bound = governance::bind(&opened.store, &name, &roles, &event).await;
                opened.store.close().await;
                bound.map_err(domain)?;
            }
            let issued = certificates::issue(loaded, &ca, &name, days, &out).await?;
            println!(
                "issued an identity for {name} (serial {}, valid until {}) in {}{}",
                issued.serial,
                issued.not_after.date(),
                out.display(),
                if roles.is_empty() {
                    String::new()
                } else {
                    format!("; roles: {}", roles.join(", "))
                }
            );
            Ok(())
        }
        CertCommand::Renew { name, out, days } => {
            certificates::check_principal(&name)?;
            let out = default_out(&name, out)?;
            replaceable(&out, &name)?;
            let ca = CertificateAuthority::load(&loaded.dir)?;
            // Write beside, then replace: the old file stays usable until then.
            let fresh = out.with_extension("pem.new");
            let _ = std::fs::remove_file(&fresh);
            let issued = certificates::issue(loaded, &ca, &name, days, &fresh).await?;
            std::fs::rename(&fresh, &out)?;
            println!(
                "renewed {name}: serial {}, valid until {}, in {} (the old certificate stays valid \
                 until it expires; `rekeyd cert revoke SERIAL` ends it sooner)",
                issued.serial,
                issued.not_after.date(),
                out.display()
            );
            Ok(())
        }
        CertCommand::Revoke {
            target,
            serial,
            ca,
            issuer,
        } => {
            let target = match (&target, &serial) {
                (_, Some(serial)) if ca => RevokeTarget::CaSerial(serial),
                (_, Some(serial)) => RevokeTarget::Serial(serial),
                (Some(name), None) => RevokeTarget::Named(name),
                (None, None) => anyhow::bail!("give a NAME or --serial SERIAL"),
            };
            let issuer = match &issuer {
                Some(file) => {
                    let pem = std::fs::read_to_string(file)
                        .with_context(|| format!("reading {}", file.display()))?;
                    crate::pki::subject_of(&pem)
                        .with_context(|| format!("the issuer's certificate {}", file.display()))?
                }
                None => String::new(),
            };
            let revoked = certificates::revoke(loaded, target, &issuer).await?;
            println!(
                "revoked {} certificate(s): {}; running servers refuse them within seconds",
                revoked.len(),
                revoked.join(", ")
            );
            Ok(())
        }
        CertCommand::RenewServer { hosts, days } => {
            let ca = CertificateAuthority::load(&loaded.dir)?;
            let (issued, names) = certificates::renew_server(loaded, &ca, &hosts, days).await?;
            println!(
                "renewed the server certificate: serial {}, valid until {}, for {}; a running \
                 server serves it within seconds",
                issued.serial,
                issued.not_after.date(),
                names.join(", ")
            );
            Ok(())
        }
        CertCommand::List => {
            let now = rekey_shared::time::now_millis();
            println!(
                "{:<34} {:<24} {:<20} {:<20} STATE",
                "SERIAL", "PRINCIPAL", "ISSUED", "EXPIRES"
            );
            for record in certificates::list(loaded).await? {
                let state = match (record.revoked_at, record.not_after) {
                    (Some(_), _) => "revoked",
                    (None, Some(not_after)) if not_after < now => "expired",
                    _ => "valid",
                };
                let date = |millis: Option<i64>| millis.map_or("-".to_owned(), format_millis);
                println!(
                    "{:<34} {:<24} {:<20} {:<20} {state}",
                    record.serial,
                    if record.principal.is_empty() {
                        "-"
                    } else {
                        &record.principal
                    },
                    date(record.issued_at),
                    date(record.not_after),
                );
            }
            Ok(())
        }
    }
}

/// Whether `cert renew` may write over `out`: nothing there yet, or an
/// identity file of `name`. A mistyped `--out` (the root key's file, say)
/// was replaced whatever it held.
fn replaceable(out: &Path, name: &str) -> anyhow::Result<()> {
    if std::fs::symlink_metadata(out).is_err() {
        return Ok(());
    }
    // Whose it is, by its first certificate only: an identity that cannot
    // be used (its key not its certificate's, its mode too open) is one
    // renewing mends.
    let holder = std::fs::read(out)
        .map_err(|error| format!("it cannot be read: {error}"))
        .and_then(|bytes| {
            CertificateDer::pem_slice_iter(&bytes)
                .next()
                .ok_or_else(|| "it holds no certificate".to_owned())?
                .map_err(|error| format!("its certificate does not parse: {error}"))
        })
        .and_then(|der| {
            crate::principal::peer_certificate(&der)
                .map(|peer| peer.principal.to_string())
                .map_err(|refusal| refusal.to_string())
        });
    match holder {
        Ok(holder) if holder == name => Ok(()),
        Ok(holder) => anyhow::bail!(
            "{} is the identity of {holder}, not of {name}; renew writes only over the identity \
             it renews (or give --out a new file)",
            out.display()
        ),
        Err(reason) => anyhow::bail!(
            "{} is not an identity file of {name} ({reason}); renew writes only over the \
             identity it renews (or give --out a new file)",
            out.display()
        ),
    }
}

fn default_out(name: &str, out: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match out {
        Some(out) => Ok(out),
        None if name.starts_with("spiffe://") => {
            anyhow::bail!("a spiffe:// principal needs --out FILE")
        }
        None => Ok(PathBuf::from(format!("{name}.pem"))),
    }
}

pub async fn recover(
    loaded: &Loaded,
    principal: &str,
    replace_unreadable: bool,
) -> anyhow::Result<()> {
    let opened = installation::open(loaded).await?;
    let recovered = governance::recover(&opened.store, principal, replace_unreadable).await;
    opened.store.close().await;
    let recovered = recovered.map_err(domain)?;
    println!(
        "policy version {}: {principal} is bound to the role {} (allow everything); running servers apply it within seconds",
        recovered.version, recovered.role
    );
    if !recovered.unbound.is_empty() {
        println!(
            "roles with deny statements taken off {principal}'s binding: {}",
            recovered.unbound.join(", ")
        );
    }
    if let Some(unreadable) = &recovered.unreadable {
        println!(
            "the {unreadable}: nobody else may do anything until a policy is applied (rekey \
             policy history shows the versions before)"
        );
    }
    Ok(())
}

pub async fn keys(loaded: &Loaded, command: KeysCommand) -> anyhow::Result<()> {
    let opened = installation::open(loaded).await?;
    let result = run_keys(&opened, command).await;
    opened.store.close().await;
    result
}

async fn run_keys(opened: &Opened, command: KeysCommand) -> anyhow::Result<()> {
    let Opened { store, keyring } = opened;
    match command {
        KeysCommand::Create { name } => {
            let name = KeyName::parse(&name)?;
            if keyring.exists(store, &name).await.map_err(domain)? {
                anyhow::bail!(
                    "master key {name} already exists; `rekeyd keys rotate {name}` adds a version"
                );
            }
            let event = AuditEvent::local("keys:Manage", &format!("key:{name}"), "created");
            keyring
                .create_version(store, &name, &event)
                .await
                .map_err(domain)?;
            println!("created master key {name}");
        }
        KeysCommand::Rotate { name } => {
            let name = KeyName::parse(&name)?;
            if !keyring.exists(store, &name).await.map_err(domain)? {
                return Err(domain(crate::keyring::missing_key(&name)));
            }
            let event = AuditEvent::local("keys:Manage", &format!("key:{name}"), "rotated");
            let version = keyring
                .create_version(store, &name, &event)
                .await
                .map_err(domain)?;
            println!(
                "master key {name} is at version {version}; new data keys are wrapped under it. \
                 `rekeyd keys rewrap {name}` moves the existing ones"
            );
        }
        KeysCommand::Retire { name, version } => {
            let name = KeyName::parse(&name)?;
            let event = AuditEvent::local(
                "keys:Manage",
                &format!("key:{name}"),
                &format!("retired version {version}"),
            );
            store
                .retire_master_key(name.as_str(), version, &event)
                .await
                .map_err(domain)?;
            println!("retired version {version} of master key {name}");
        }
        KeysCommand::List => {
            println!("{:<24} {:>7}  CREATED", "NAME", "VERSION");
            for key in store.list_master_keys().await.map_err(domain)? {
                println!(
                    "{:<24} {:>7}  {}",
                    key.name,
                    key.version,
                    format_millis(key.created_at)
                );
            }
        }
        KeysCommand::Rewrap { name } => {
            let index = store.master_key_index().await.map_err(domain)?;
            let names: Vec<String> = match name {
                Some(name) => {
                    let name = KeyName::parse(&name)?;
                    anyhow::ensure!(
                        index.contains_key(name.as_str()),
                        "master key {name} does not exist"
                    );
                    vec![name.into_string()]
                }
                None => index.keys().cloned().collect(),
            };
            for name in names {
                rewrap(opened, &KeyName::parse(&name)?).await?;
            }
        }
    }
    Ok(())
}

/// Re-wraps, in batches, every data key under an older version of `name`
/// than the newest. Safe beside a running server: each row is updated only
/// if it still holds the key it was read with. Interrupted, it resumes
/// where it stopped when run again.
async fn rewrap(opened: &Opened, name: &KeyName) -> anyhow::Result<()> {
    const BATCH: u32 = 200;
    let Opened { store, keyring } = opened;
    let to = keyring.for_encryption(store, name).await.map_err(domain)?;
    let newest = to.reference.version;
    let total = store
        .count_to_rewrap(name.as_str(), newest)
        .await
        .map_err(domain)?;
    let interactive = std::io::stderr().is_terminal();
    let mut done = 0i64;
    let progress = |done: i64| {
        let percent = if total == 0 { 100 } else { done * 100 / total };
        let bar: String = (0..20)
            .map(|i| if i * 5 < percent { '#' } else { '.' })
            .collect();
        let line = format!("rewrapping {name}: [{bar}] {done}/{total} data keys ({percent}%)");
        let mut stderr = std::io::stderr();
        if interactive {
            let _ = write!(stderr, "\r{line}");
        } else {
            let _ = writeln!(stderr, "{line}");
        }
    };
    progress(0);
    let event = AuditEvent::local("keys:Manage", &format!("key:{name}"), "");
    keyring
        .rewrap_all(store, &to, BATCH, &event, |rewrapped| {
            done += i64::try_from(rewrapped).unwrap_or(i64::MAX);
            progress(done.min(total));
        })
        .await
        .map_err(domain)?;
    if interactive {
        eprintln!();
    }
    println!("master key {name}: every data key is wrapped under version {newest}");
    Ok(())
}
