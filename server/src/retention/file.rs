//! Archive files: `audit-<first seq>-<last seq>.jsonl` (both zero-padded to
//! twelve digits, so names sort in order), one JSON object per line and
//! event, in the shape of `rekey audit --output json` plus what the chain
//! needs to be verified again: the time in milliseconds (`time_ms`; `time`
//! is RFC 3339 to the second, for people) and the event's MAC in hex.
//!
//! A file is written under a temporary name, synced, renamed and its
//! directory synced, so that it is whole and durable before the events
//! leave the database; writing the same range again gives the same file,
//! and a file of that name holding other events is never replaced. A line is
//! read back only if it is exactly what would be written for its event.

use crate::audit::{AuditEvent, StoredEvent, hex};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// One archived event as a line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    seq: i64,
    time: String,
    time_ms: i64,
    principal: String,
    peer: String,
    action: String,
    resource: String,
    decision: String,
    outcome: String,
    request_id: String,
    detail: String,
    mac: String,
}

pub fn file_name(first: i64, last: i64) -> String {
    format!("audit-{first:012}-{last:012}.jsonl")
}

/// The range an archive file's name says it holds.
pub fn range_of(name: &str) -> Option<(i64, i64)> {
    let range = name.strip_prefix("audit-")?.strip_suffix(".jsonl")?;
    let (first, last) = range.split_once('-')?;
    let digits = |text: &str| !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    if !digits(first) || !digits(last) {
        return None;
    }
    Some((first.parse().ok()?, last.parse().ok()?))
}

pub fn line(stored: &StoredEvent) -> String {
    let event = &stored.event;
    let line = Line {
        seq: stored.seq,
        time: rekey_shared::time::format_millis(event.time),
        time_ms: event.time,
        principal: event.principal.clone(),
        peer: event.peer.clone(),
        action: event.action.clone(),
        resource: event.resource.clone(),
        decision: event.decision.clone(),
        outcome: event.outcome.clone(),
        request_id: event.request_id.clone(),
        detail: event.detail.clone(),
        mac: hex(&stored.mac),
    };
    serde_json::to_string(&line).unwrap_or_default()
}

/// The event a line holds, or what is wrong with it. The line must be
/// exactly what [`line`] writes for that event: a field the chain does not
/// cover (the readable `time`) cannot be edited unnoticed.
pub fn parse_line(text: &str) -> Result<StoredEvent, String> {
    let line: Line = serde_json::from_str(text).map_err(|error| error.to_string())?;
    let mac = crate::keyring::decode_hex(&line.mac).map_err(|_| "mac is not hex")?;
    let stored = StoredEvent {
        seq: line.seq,
        event: AuditEvent {
            time: line.time_ms,
            principal: line.principal,
            peer: line.peer,
            action: line.action,
            resource: line.resource,
            decision: line.decision,
            outcome: line.outcome,
            request_id: line.request_id,
            detail: line.detail,
        },
        mac,
    };
    if self::line(&stored) != text {
        return Err(format!(
            "event {} is not written as rekeyd writes it (a field was changed)",
            stored.seq
        ));
    }
    Ok(stored)
}

/// Creates the archive directory (mode 0700) if it is not there.
pub fn create_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Writes `events` (in order, at least one) to their archive file in
/// `dir`, created (mode 0700) if needed; the file is mode 0600. Returns its
/// path once it and its directory entry are durable. Blocking.
pub fn write(dir: &Path, events: &[StoredEvent]) -> std::io::Result<PathBuf> {
    let (Some(first), Some(last)) = (events.first(), events.last()) else {
        return Err(std::io::Error::other("no events to archive"));
    };
    create_dir(dir)?;
    let name = file_name(first.seq, last.seq);
    let partial = dir.join(format!(".{name}.partial"));
    // A leftover of an interrupted round goes (a symbolic link, not what it
    // points at), and the file is made anew, never opened where it is: a
    // link planted under that name in a directory others can write would
    // otherwise have this write over what it points at (root.key, say).
    match std::fs::remove_file(&partial) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
        _ => {}
    }
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)?;
    let mut writer = std::io::BufWriter::new(&file);
    for event in events {
        writeln!(writer, "{}", line(event))?;
    }
    writer.flush()?;
    drop(writer);
    file.sync_all()?;
    let path = dir.join(&name);
    // Never over different events (another installation's archive in the
    // same directory, say): the same range again must be the same file.
    match std::fs::read(&path) {
        Ok(existing) if existing != std::fs::read(&partial)? => {
            let _ = std::fs::remove_file(&partial);
            return Err(std::io::Error::other(format!(
                "{} exists and holds other events; refusing to replace it",
                path.display()
            )));
        }
        Ok(_) | Err(_) => {}
    }
    std::fs::rename(&partial, &path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(path)
}

/// An archive file found in a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveFile {
    pub name: String,
    pub path: PathBuf,
    pub first: i64,
    pub last: i64,
}

/// The archive files in `dir`, in sequence order (of two starting at the
/// same event, the longer first); other files are not looked at.
pub fn list(dir: &Path) -> std::io::Result<Vec<ArchiveFile>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if let Some((first, last)) = range_of(&name) {
            files.push(ArchiveFile {
                path: entry.path(),
                name,
                first,
                last,
            });
        }
    }
    files.sort_by_key(|file| (file.first, std::cmp::Reverse(file.last)));
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn stored(seq: i64) -> StoredEvent {
        StoredEvent {
            seq,
            event: AuditEvent {
                time: 1_764_336_467_123,
                detail: "quote \" and\nnewline".into(),
                ..AuditEvent::system("secrets:GetSecretValue", "a/b", "")
            },
            mac: vec![0, 1, 0xfe, 0xff],
        }
    }

    #[test]
    fn lines_round_trip_and_show_the_time_to_people() {
        let event = stored(42);
        let text = line(&event);
        assert!(!text.contains('\n'));
        assert!(text.contains("\"time\":\"2025-11-28T13:27:47Z\""), "{text}");
        assert!(text.contains("\"mac\":\"0001feff\""), "{text}");
        assert_eq!(parse_line(&text).unwrap(), event);
        assert!(parse_line("{\"seq\":1}").is_err());
        assert!(parse_line(&text.replace("0001feff", "0001fg")).is_err());
        // A character across a digit pair is an error, not a panic.
        assert!(parse_line(&text.replace("0001feff", "0é0")).is_err());
        // The readable time is not in the chain, but it cannot be edited.
        let edited = text.replace("2025-11-28T13:27:47Z", "2025-11-29T13:27:47Z");
        let error = parse_line(&edited).unwrap_err();
        assert!(error.contains("a field was changed"), "{error}");
    }

    #[test]
    fn a_file_with_other_events_is_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let events = vec![stored(1), stored(2)];
        let path = write(dir.path(), &events).unwrap();
        assert_eq!(write(dir.path(), &events).unwrap(), path);
        let mut other = events.clone();
        other[1].event.detail = "another installation's".to_owned();
        let error = write(dir.path(), &other).unwrap_err();
        assert!(error.to_string().contains("holds other events"), "{error}");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            events
                .iter()
                .map(|e| format!("{}\n", line(e)))
                .collect::<String>()
        );
    }

    #[test]
    fn names_sort_and_parse() {
        assert_eq!(file_name(1, 1200), "audit-000000000001-000000001200.jsonl");
        assert_eq!(range_of(&file_name(1201, 1530)), Some((1201, 1530)));
        assert_eq!(
            range_of(".audit-000000000001-000000000002.jsonl.partial"),
            None
        );
        assert_eq!(range_of("audit-1-x.jsonl"), None);
        assert_eq!(range_of("audit--2.jsonl"), None);
    }

    #[test]
    fn written_files_are_private_and_listed_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("archive");
        write(&archive, &[stored(5), stored(6)]).unwrap();
        write(&archive, &[stored(1), stored(2), stored(3)]).unwrap();
        let path = write(&archive, &[stored(1), stored(2)]).unwrap();
        std::fs::write(archive.join("notes.txt"), "not an archive").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = std::fs::metadata(&archive).unwrap().permissions().mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        let ranges: Vec<(i64, i64)> = list(&archive)
            .unwrap()
            .iter()
            .map(|file| (file.first, file.last))
            .collect();
        assert_eq!(ranges, [(1, 3), (1, 2), (5, 6)]);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2);
    }

    #[test]
    fn a_link_planted_under_the_partial_name_is_replaced_not_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("archive");
        create_dir(&archive).unwrap();
        let target = dir.path().join("root.key");
        std::fs::write(&target, "keep me").unwrap();
        let partial = archive.join(format!(".{}.partial", file_name(1, 2)));
        std::os::unix::fs::symlink(&target, &partial).unwrap();
        let path = write(&archive, &[stored(1), stored(2)]).unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");
        assert!(!std::fs::symlink_metadata(&path).unwrap().is_symlink());
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 2);
    }
}
