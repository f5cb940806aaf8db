//! `rekeyd audit verify-archive`: one walk of the chain from the first
//! event, through the archive files in sequence order, to the last event
//! in the database. It needs the audit key, so the root key: it runs
//! locally, like `rekeyd keys`.
//!
//! Files may overlap (a round whose transaction did not commit leaves a
//! file the next round writes again, in part or whole): an event seen
//! before is compared with the copy already verified, not walked twice. A
//! hole is a finding. The walk must pass through the database's anchor
//! (the last archived event, sealed with the audit key) and then go on
//! into the database without a seam.

use super::file::{self, ArchiveFile};
use crate::audit::{AuditAnchor, Finding, StoredEvent, Verification, verify};
use crate::store::{AuditQuery, Store};
use std::collections::BTreeMap;
use std::path::Path;

/// What verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveReport {
    pub last: i64,
    pub archived: u64,
    pub files: usize,
    pub in_database: u64,
}

impl std::fmt::Display for ArchiveReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the audit log verifies from event 1 to {}: {} in {} archive file{}, {} in the database",
            self.last,
            self.archived,
            self.files,
            if self.files == 1 { "" } else { "s" },
            self.in_database
        )
    }
}

/// The walk over files and then the database: the chain's verification,
/// the archived events walked so far (whole, to compare overlapping copies
/// with; only while walking files, so memory stays bounded by them) and
/// where each event came from (to name it in a finding).
struct Walk<'a> {
    verification: Verification<'a>,
    anchor: Option<AuditAnchor>,
    recent: BTreeMap<i64, StoredEvent>,
    /// Whether walked events are kept in `recent` (files: yes; the
    /// database, which nothing comes after: no).
    keep: bool,
    /// Each source with the first and last event walked from it.
    sources: Vec<(String, i64, i64)>,
    walked: u64,
}

impl Walk<'_> {
    /// Starts a source: copies of events before `first` are not expected
    /// from here on.
    fn source(&mut self, name: &str, first: i64) {
        self.recent = self.recent.split_off(&first);
        self.sources.push((name.to_owned(), i64::MAX, 0));
    }

    fn push(&mut self, stored: StoredEvent) -> Result<(), String> {
        let name = self.sources.last().map(|s| s.0.clone()).unwrap_or_default();
        if stored.seq < self.verification.next_seq() {
            // A copy of an event walked already: it must be that event,
            // every field of it, not merely carry its MAC.
            return match self.recent.get(&stored.seq) {
                Some(walked) if *walked == stored => Ok(()),
                Some(_) => Err(format!(
                    "{name}: event {} differs from its copy verified before",
                    stored.seq
                )),
                None => Err(format!(
                    "{name}: event {} comes again where it cannot be compared",
                    stored.seq
                )),
            };
        }
        if let Some(anchor) = &self.anchor
            && anchor.seq == stored.seq
            && anchor.mac != stored.mac
        {
            return Err(format!(
                "{name}: event {} is not the last archived event the database's anchor names",
                stored.seq
            ));
        }
        if let Some(source) = self.sources.last_mut() {
            source.1 = source.1.min(stored.seq);
            source.2 = stored.seq;
        }
        if self.keep {
            self.recent.insert(stored.seq, stored.clone());
        }
        self.walked += 1;
        if self.verification.push(stored) {
            Ok(())
        } else {
            Err(self.failure())
        }
    }

    fn failure(&self) -> String {
        match &self.verification.finding {
            Some(finding) => named(&self.sources, finding),
            None => "the walk stopped without a finding".to_owned(),
        }
    }
}

/// `finding`, named with the source of its first bad event.
fn named(sources: &[(String, i64, i64)], finding: &Finding) -> String {
    let seq = finding.first_bad_seq();
    let source = sources
        .iter()
        .find(|(_, first, last)| (*first..=*last).contains(&seq))
        .or(sources.last())
        .map_or("the archive", |(name, _, _)| name.as_str());
    format!("{source}: {finding}")
}

/// The most walks of one verification: a failed walk is made again when a
/// round of the running server's archiver moved the anchor while it walked.
const TRIES: usize = 10;

/// Verifies the archive files in `dir` and the database of `store` as one
/// chain; the error names the first bad event and where it is. The anchor,
/// the files and the database are read at different moments: a walk that
/// failed while the anchor moved (the server archived meanwhile) is done
/// again, so a round that commits mid-walk is not reported as removed
/// events, and a log archived throughout every walk is an error that says
/// so, not a finding. With `checkpoint` (an event's sequence number and
/// MAC, as the server's log printed it), the chain must hold that event
/// with that MAC: a tail cut off the database is found too.
pub async fn verify_archive(
    store: &Store,
    dir: &Path,
    checkpoint: Option<(i64, Vec<u8>)>,
) -> anyhow::Result<ArchiveReport> {
    let anchor = || async {
        store
            .audit_anchor()
            .await
            .map_err(|error| anyhow::anyhow!("{error}"))
    };
    let mut before = anchor().await?;
    for _ in 0..TRIES {
        let walked = walk_all(store, dir, before.clone(), checkpoint.clone()).await;
        let now = anchor().await?;
        if walked.is_ok() || now == before {
            return walked;
        }
        before = now;
    }
    anyhow::bail!(
        "no walk of it finished under one archive anchor: the server archived throughout \
         {TRIES} walks; verify it again once archiving has caught up"
    )
}

/// One walk over the files and the database, from `anchor` (as read
/// before it).
async fn walk_all(
    store: &Store,
    dir: &Path,
    anchor: Option<AuditAnchor>,
    checkpoint: Option<(i64, Vec<u8>)>,
) -> anyhow::Result<ArchiveReport> {
    if let Some(anchor) = &anchor
        && !store.audit_key().anchor_verifies(anchor)
    {
        anyhow::bail!(
            "the database: {}",
            Finding::AnchorForged { seq: anchor.seq }
        );
    }
    let files = match file::list(dir) {
        Ok(files) => files,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound && anchor.is_none() => {
            Vec::new()
        }
        Err(error) => anyhow::bail!(
            "cannot read the archive directory {}: {error}",
            dir.display()
        ),
    };
    let mut walk = Walk {
        verification: verify(store.audit_key(), checkpoint),
        anchor: anchor.clone(),
        recent: BTreeMap::new(),
        keep: true,
        sources: Vec::new(),
        walked: 0,
    };
    for archive in &files {
        walk_file(&mut walk, archive).map_err(anyhow::Error::msg)?;
    }
    let archived = walk.walked;
    let archive_head = walk.verification.next_seq() - 1;
    let anchor_seq = anchor.as_ref().map_or(0, |anchor| anchor.seq);
    if archive_head < anchor_seq {
        anyhow::bail!(
            "the archive ends at event {archive_head}, but the database says events up to \
             {anchor_seq} were archived: archive files are missing from {}",
            dir.display()
        );
    }
    walk.source("the database", anchor_seq + 1);
    walk.keep = false;
    // From the lowest number on: an event numbered 0 or below (which no
    // append makes) is found too.
    let mut after_seq = i64::MIN;
    loop {
        let page = store
            .audit_events(&AuditQuery {
                after_seq,
                limit: 1000,
                ..AuditQuery::default()
            })
            .await
            .map_err(|error| anyhow::anyhow!("{error}"))?;
        let Some(last) = page.last() else { break };
        after_seq = last.seq;
        for stored in page {
            if stored.seq <= anchor_seq {
                anyhow::bail!(
                    "the database: {}",
                    Finding::BeforeAnchor {
                        seq: stored.seq,
                        anchor: anchor_seq
                    }
                );
            }
            walk.push(stored).map_err(anyhow::Error::msg)?;
        }
    }
    let in_database = walk.walked - archived;
    let (finding, last, _) = walk.verification.finish();
    if let Some(finding) = finding {
        anyhow::bail!(named(&walk.sources, &finding));
    }
    Ok(ArchiveReport {
        last,
        archived,
        files: files.len(),
        in_database,
    })
}

/// Walks one file's lines, which must hold the range its name says.
fn walk_file(walk: &mut Walk<'_>, archive: &ArchiveFile) -> Result<(), String> {
    let name = &archive.name;
    let text =
        std::fs::read_to_string(&archive.path).map_err(|error| format!("{name}: {error}"))?;
    walk.source(name, archive.first);
    let mut previous = None;
    for (index, line) in text.lines().enumerate() {
        let stored = file::parse_line(line)
            .map_err(|error| format!("{name} line {}: {error}", index + 1))?;
        let expected = previous.map_or(archive.first, |seq: i64| seq + 1);
        if stored.seq != expected {
            return Err(format!(
                "{name} line {}: event {} where event {expected} belongs",
                index + 1,
                stored.seq
            ));
        }
        previous = Some(stored.seq);
        walk.push(stored)?;
    }
    if previous != Some(archive.last) {
        return Err(format!(
            "{name}: ends at event {}, but its name says it holds events {} to {}",
            previous.unwrap_or(archive.first - 1),
            archive.first,
            archive.last
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditKey, test_chain};
    use crate::crypto::{Key, RootKey};

    /// Walks the files made of `ranges` (1-based, inclusive) of `events`.
    fn walk_files(
        key: &AuditKey,
        events: &[StoredEvent],
        ranges: &[(usize, usize)],
        change: impl Fn(&mut Vec<StoredEvent>),
    ) -> Result<(u64, i64), String> {
        let dir = tempfile::tempdir().unwrap();
        for (first, last) in ranges {
            let mut part = events[first - 1..*last].to_vec();
            change(&mut part);
            file::write(dir.path(), &part).unwrap();
        }
        let mut walk = Walk {
            verification: verify(key, None),
            anchor: None,
            recent: BTreeMap::new(),
            keep: true,
            sources: Vec::new(),
            walked: 0,
        };
        for archive in file::list(dir.path()).unwrap() {
            walk_file(&mut walk, &archive)?;
        }
        let walked = walk.walked;
        match walk.verification.finish() {
            (None, last, _) => Ok((walked, last)),
            (Some(finding), _, _) => Err(named(&walk.sources, &finding)),
        }
    }

    #[test]
    fn overlapping_files_are_walked_once_and_holes_are_found() {
        let key = AuditKey::derive(&RootKey::new(Key::generate()));
        let events = test_chain(&key, 9);
        let same = |_: &mut Vec<StoredEvent>| {};
        assert_eq!(
            walk_files(&key, &events, &[(1, 3), (1, 5), (4, 7), (8, 9)], same),
            Ok((9, 9))
        );
        let hole = walk_files(&key, &events, &[(1, 3), (6, 9)], same).unwrap_err();
        assert!(hole.contains("events 4 to 5 were removed"), "{hole}");
        // A copy with the genuine MAC but an edited field, in a file that
        // sorts after the genuine one: still a difference.
        let edited = walk_files(&key, &events, &[(1, 5), (1, 3)], |part| {
            if part.len() == 3 {
                part[1].event.detail = "edited".to_owned();
            }
        })
        .unwrap_err();
        assert!(edited.contains("event 2 differs from its copy"), "{edited}");
        // A copy that differs from the one verified before.
        let differs = walk_files(&key, &events, &[(1, 5), (4, 6)], |part| {
            if part[0].seq == 4 {
                part[0].mac = vec![0; 32];
            }
        })
        .unwrap_err();
        assert!(differs.contains("event 4 differs"), "{differs}");
        let altered = walk_files(&key, &events, &[(1, 4), (5, 9)], |part| {
            if part[0].seq == 5 {
                part[1].event.detail = "edited".into();
            }
        })
        .unwrap_err();
        assert_eq!(
            altered,
            format!("{}: event 6 was altered", file::file_name(5, 9))
        );
    }
}
