//! Where a value comes from: `--value` (visible to other local users, so it
//! warns), `--value-file FILE` (`-` for standard input), `--binary-file FILE`,
//! or standard input when a command needs a value and none was named. Bytes
//! are taken exactly as given: no trailing newline is removed.

use clap::Args;
use rekey_shared::SecretValue;
use rekey_shared::value::MAX_VALUE_BYTES;
use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use zeroize::Zeroizing;

#[derive(Debug, Args)]
#[group(multiple = false)]
pub struct ValueSource {
    /// The value as an argument (other local users can see it in the process list).
    #[arg(long, value_name = "TEXT")]
    pub value: Option<String>,
    /// Read a UTF-8 value from FILE (`-` for standard input).
    #[arg(long, value_name = "FILE")]
    pub value_file: Option<PathBuf>,
    /// Read a binary value from FILE (`-` for standard input).
    #[arg(long, value_name = "FILE")]
    pub binary_file: Option<PathBuf>,
}

fn read_source(path: &PathBuf) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    let bytes = read_limited(path)?;
    if bytes.len() > MAX_VALUE_BYTES {
        let origin = if path.as_os_str() == "-" {
            "standard input".to_owned()
        } else {
            path.display().to_string()
        };
        anyhow::bail!(
            "{origin} holds more than {MAX_VALUE_BYTES} bytes; the limit is {MAX_VALUE_BYTES} bytes (64 KiB)"
        );
    }
    Ok(bytes)
}

fn read_limited(path: &PathBuf) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    // Room for all it may read: growing would free copies unwiped.
    let mut bytes = Zeroizing::new(Vec::with_capacity(MAX_VALUE_BYTES + 1));
    if path.as_os_str() == "-" {
        std::io::stdin()
            .take(MAX_VALUE_BYTES as u64 + 1)
            .read_to_end(&mut bytes)?;
    } else {
        std::fs::File::open(path)
            .map_err(|error| anyhow::anyhow!("cannot read {}: {error}", path.display()))?
            .take(MAX_VALUE_BYTES as u64 + 1)
            .read_to_end(&mut bytes)?;
    }
    Ok(bytes)
}

fn text(bytes: Zeroizing<Vec<u8>>, origin: &str) -> anyhow::Result<SecretValue> {
    match std::str::from_utf8(&bytes) {
        Ok(text) => Ok(SecretValue::text(text)),
        Err(_) => anyhow::bail!("{origin} is not UTF-8 text; use --binary-file for binary values"),
    }
}

impl ValueSource {
    /// The value named by the flags, if any.
    pub fn named(&self) -> anyhow::Result<Option<SecretValue>> {
        if let Some(value) = &self.value {
            eprintln!(
                "rekey: warning: a value given with --value is visible to other local users; \
                 prefer --value-file or standard input"
            );
            return Ok(Some(SecretValue::text(value.as_str())));
        }
        if let Some(path) = &self.value_file {
            return text(read_source(path)?, &path.display().to_string()).map(Some);
        }
        if let Some(path) = &self.binary_file {
            return Ok(Some(SecretValue::binary(read_source(path)?.to_vec())));
        }
        Ok(None)
    }

    /// The value named by the flags, or standard input when it is not a
    /// terminal.
    pub fn required(&self) -> anyhow::Result<SecretValue> {
        if let Some(value) = self.named()? {
            return Ok(value);
        }
        if std::io::stdin().is_terminal() {
            anyhow::bail!(
                "give a value with --value-file FILE, --binary-file FILE, --value TEXT, or on standard input"
            );
        }
        let bytes = read_source(&PathBuf::from("-"))?;
        // Standard input nobody named that holds nothing (`< /dev/null`
        // under cron, a forgotten flag) is not taken as an empty value.
        if bytes.is_empty() {
            anyhow::bail!(
                "standard input is empty; give a value with --value-file FILE, --binary-file \
                 FILE or --value TEXT (an empty value: --value-file - with empty input)"
            );
        }
        text(bytes, "standard input")
    }
}
