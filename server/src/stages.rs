//! The rules of stage labels, as a pure function over a secret's stage map
//! (stage → version). The store loads the map, applies a change here and
//! writes the result back in the same transaction.
//!
//! The rules (DESIGN, Concepts): a label is on at most one version; moving it
//! takes it off the other. `CURRENT` is on exactly one version of a secret
//! with a value and cannot be removed, only moved; when it moves, `PREVIOUS`
//! follows to the version it left. A version carries at most 20 labels.

use crate::error::{Error, Result};
use rekey_shared::names::{MAX_STAGES_PER_SECRET, MAX_STAGES_PER_VERSION};
use rekey_shared::{Stage, VersionId};
use std::collections::BTreeMap;

pub type StageMap = BTreeMap<Stage, VersionId>;

/// What a write of `after` over `before` must do: the stages no longer on
/// any version, and the stages now on a version they were not on.
pub fn changes<'a>(
    before: &'a StageMap,
    after: &'a StageMap,
) -> (Vec<&'a Stage>, Vec<(&'a Stage, &'a VersionId)>) {
    let removed = before
        .keys()
        .filter(|stage| !after.contains_key(*stage))
        .collect();
    let moved = after
        .iter()
        .filter(|(stage, version)| before.get(*stage) != Some(*version))
        .collect();
    (removed, moved)
}

/// Puts `stage` on `version`, taking it off any other version.
pub fn attach(map: &mut StageMap, stage: &Stage, version: &VersionId) {
    if stage.is_current()
        && let Some(previous) = map.get(stage).filter(|old| *old != version).cloned()
    {
        map.insert(Stage::previous(), previous);
    }
    map.insert(stage.clone(), version.clone());
}

/// Takes `stage` off whatever version has it.
pub fn remove(map: &mut StageMap, stage: &Stage) -> Result<()> {
    if stage.is_current() {
        return Err(Error::InvalidArgument(
            "CURRENT cannot be removed, only moved to another version".to_owned(),
        ));
    }
    map.remove(stage);
    Ok(())
}

/// The stages for a new version: the requested ones, or `CURRENT` when none
/// are requested; and `CURRENT` anyway when the secret has no value yet.
pub fn for_new_version(map: &mut StageMap, version: &VersionId, requested: &[Stage]) -> Result<()> {
    let before_labels = client_labels(map);
    let mut stages: Vec<Stage> = requested.to_vec();
    if stages.is_empty() || !map.contains_key(&Stage::current()) {
        stages.push(Stage::current());
    }
    stages.sort();
    stages.dedup();
    if stages.contains(&Stage::current()) && stages.contains(&Stage::previous()) {
        return Err(Error::InvalidArgument(
            "a new version cannot take both CURRENT and PREVIOUS: PREVIOUS follows CURRENT to \
             the version it leaves (a first value is CURRENT)"
                .to_owned(),
        ));
    }
    for stage in &stages {
        attach(map, stage, version);
    }
    check_limit(before_labels, map, version)
}

/// The labels a version carries, sorted.
pub fn stages_of(map: &StageMap, version: &VersionId) -> Vec<Stage> {
    map.iter()
        .filter(|(_, on)| *on == version)
        .map(|(stage, _)| stage.clone())
        .collect()
}

/// Labels other than `CURRENT`, `PREVIOUS` and `PENDING`: those clients
/// name, which [`MAX_STAGES_PER_SECRET`] bounds (the three that rotation
/// and every put move are never refused for it).
pub fn client_labels(map: &StageMap) -> usize {
    map.keys()
        .filter(|stage| {
            ![Stage::CURRENT, Stage::PREVIOUS, Stage::PENDING].contains(&stage.as_str())
        })
        .count()
}

/// Refuses a change that leaves `version` with too many labels, or that
/// adds a client's label to a secret whose versions carry as many as
/// allowed (`before_labels`: their count before the change; a secret over
/// the bound from before takes every change that does not add one).
pub fn check_limit(before_labels: usize, map: &StageMap, version: &VersionId) -> Result<()> {
    let count = stages_of(map, version).len();
    if count > MAX_STAGES_PER_VERSION {
        return Err(Error::InvalidArgument(format!(
            "version {version} would carry {count} stages; at most {MAX_STAGES_PER_VERSION} are allowed"
        )));
    }
    let labels = client_labels(map);
    if labels > MAX_STAGES_PER_SECRET && labels > before_labels {
        return Err(Error::InvalidArgument(format!(
            "the secret's versions would carry {labels} labels of your own; at most \
             {MAX_STAGES_PER_SECRET} are allowed across them (move or remove one: rekey stage \
             NAME STAGE --from VERSION)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(n: u8) -> VersionId {
        VersionId::parse(&format!("{n:0>32}")).unwrap()
    }

    fn s(name: &str) -> Stage {
        Stage::parse(name).unwrap()
    }

    fn map(entries: &[(&str, u8)]) -> StageMap {
        entries.iter().map(|(stage, n)| (s(stage), v(*n))).collect()
    }

    #[test]
    fn a_secret_carries_at_most_a_hundred_labels_of_its_clients() {
        let mut all: StageMap = (0..100u8)
            .map(|n| (s(&format!("L{n}")), v(n / 10)))
            .collect();
        check_limit(100, &all, &v(0)).unwrap();
        // Rotation's and every put's labels are never refused for it.
        for_new_version(&mut all, &v(11), &[s("PENDING")]).unwrap();
        for_new_version(&mut all, &v(12), &[]).unwrap();
        assert_eq!(client_labels(&all), 100);
        let mut more = all.clone();
        let refused = for_new_version(&mut more, &v(13), &[s("ONE-MORE")])
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("would carry 101 labels of your own; at most 100"),
            "{refused}"
        );
        // A secret over the bound from before takes what adds none.
        attach(&mut all, &s("ONE-MORE"), &v(12));
        for_new_version(&mut all, &v(14), &[]).unwrap();
    }

    #[test]
    fn a_write_touches_only_what_changed() {
        let before = map(&[
            ("AWSCURRENT", 1),
            ("AWSPREVIOUS", 0),
            ("keep", 1),
            ("gone", 0),
        ]);
        let after = map(&[("AWSCURRENT", 2), ("AWSPREVIOUS", 1), ("keep", 1)]);
        let (removed, moved) = changes(&before, &after);
        assert_eq!(removed, vec![&s("gone")]);
        assert_eq!(
            moved,
            vec![(&s("AWSCURRENT"), &v(2)), (&s("AWSPREVIOUS"), &v(1))]
        );
        assert_eq!(changes(&after, &after), (vec![], vec![]));
    }

    type Entries<'a> = &'a [(&'a str, u8)];

    #[test]
    fn new_versions() {
        // (before, requested stages for version 9, after)
        let cases: &[(Entries, &[&str], Entries)] = &[
            // The first version gets CURRENT whatever was asked.
            (&[], &[], &[("CURRENT", 9)]),
            (&[], &["PENDING"], &[("CURRENT", 9), ("PENDING", 9)]),
            // No stages: CURRENT moves, PREVIOUS follows.
            (&[("CURRENT", 1)], &[], &[("CURRENT", 9), ("PREVIOUS", 1)]),
            (
                &[("CURRENT", 2), ("PREVIOUS", 1)],
                &[],
                &[("CURRENT", 9), ("PREVIOUS", 2)],
            ),
            // PENDING leaves CURRENT where it is.
            (
                &[("CURRENT", 1)],
                &["PENDING"],
                &[("CURRENT", 1), ("PENDING", 9)],
            ),
            // A custom label moves off its old version.
            (
                &[("CURRENT", 1), ("blue", 1)],
                &["blue"],
                &[("CURRENT", 1), ("blue", 9)],
            ),
        ];
        for (before, requested, after) in cases {
            let mut stages = map(before);
            let requested: Vec<Stage> = requested.iter().map(|r| s(r)).collect();
            for_new_version(&mut stages, &v(9), &requested).unwrap();
            assert_eq!(stages, map(after), "{before:?} + {requested:?}");
        }
    }

    /// PREVIOUS with CURRENT on one new version left the version CURRENT
    /// left without a label (and so purgeable), against "PREVIOUS follows".
    #[test]
    fn a_new_version_takes_current_or_previous_not_both() {
        for (before, requested) in [
            (&[("CURRENT", 1)][..], &["CURRENT", "PREVIOUS"][..]),
            (&[][..], &["PREVIOUS"][..]),
        ] {
            let mut stages = map(before);
            let requested: Vec<Stage> = requested.iter().map(|r| s(r)).collect();
            let refused = for_new_version(&mut stages, &v(9), &requested).unwrap_err();
            assert!(
                matches!(&refused, Error::InvalidArgument(message) if message.contains("PREVIOUS follows CURRENT")),
                "{refused:?}"
            );
            assert_eq!(stages, map(before));
        }
        // PREVIOUS alone, beside a CURRENT that stays, is a label as any.
        let mut stages = map(&[("CURRENT", 2), ("PREVIOUS", 1)]);
        for_new_version(&mut stages, &v(9), &[s("PREVIOUS")]).unwrap();
        assert_eq!(stages, map(&[("CURRENT", 2), ("PREVIOUS", 9)]));
    }

    #[test]
    fn moving_current_to_the_version_it_is_on_changes_nothing() {
        let mut stages = map(&[("CURRENT", 2), ("PREVIOUS", 1)]);
        attach(&mut stages, &s("CURRENT"), &v(2));
        assert_eq!(stages, map(&[("CURRENT", 2), ("PREVIOUS", 1)]));
        // Moving CURRENT back to the PREVIOUS version swaps them.
        attach(&mut stages, &s("CURRENT"), &v(1));
        assert_eq!(stages, map(&[("CURRENT", 1), ("PREVIOUS", 2)]));
    }

    #[test]
    fn removal_and_limits() {
        let mut stages = map(&[("CURRENT", 1), ("blue", 2)]);
        assert!(remove(&mut stages, &s("CURRENT")).is_err());
        remove(&mut stages, &s("blue")).unwrap();
        assert_eq!(stages, map(&[("CURRENT", 1)]));
        let many: Vec<Stage> = (0..21).map(|i| s(&format!("label{i}"))).collect();
        let error = for_new_version(&mut stages, &v(3), &many).unwrap_err();
        assert!(error.to_string().contains("at most 20"), "{error}");
    }
}
