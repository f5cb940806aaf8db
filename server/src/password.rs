//! Random passwords with AWS's options, drawn from the operating system's
//! random generator with rejection sampling (every allowed character equally
//! likely). Used by `GetRandomPassword` and, later, the `password` rotator.

use crate::crypto::random_bytes;
use zeroize::Zeroizing;

pub const DEFAULT_LENGTH: u32 = 32;
pub const MAX_LENGTH: u32 = 4096;

const LOWERCASE: &str = "abcdefghijklmnopqrstuvwxyz";
const UPPERCASE: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";
const NUMBERS: &str = "0123456789";
/// AWS's punctuation set.
pub const PUNCTUATION: &str = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";

/// What a password must look like.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct PasswordPolicy {
    pub length: u32,
    pub exclude_characters: String,
    pub exclude_numbers: bool,
    pub exclude_punctuation: bool,
    pub exclude_uppercase: bool,
    pub exclude_lowercase: bool,
    pub include_space: bool,
    pub require_each_included_type: bool,
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        Self {
            length: DEFAULT_LENGTH,
            exclude_characters: String::new(),
            exclude_numbers: false,
            exclude_punctuation: false,
            exclude_uppercase: false,
            exclude_lowercase: false,
            include_space: false,
            require_each_included_type: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    #[error("password length {0} is out of range; it must be 1-{MAX_LENGTH}")]
    Length(u32),
    #[error("every character is excluded; allow at least one type of character")]
    NothingLeft,
    #[error(
        "only one character is left to make passwords of, so every password would be the same; \
         allow more characters"
    )]
    OneCharacter,
    #[error(
        "a password of {length} characters cannot include one of each of the {types} included types; \
         make it longer or set require_each_included_type to false"
    )]
    TooShortForEachType { length: u32, types: usize },
}

impl PasswordPolicy {
    /// The character types the policy includes, each without the excluded
    /// characters; a type left empty by the exclusions is not included.
    pub fn included_types(&self) -> Vec<Vec<char>> {
        let types = [
            (LOWERCASE, !self.exclude_lowercase),
            (UPPERCASE, !self.exclude_uppercase),
            (NUMBERS, !self.exclude_numbers),
            (PUNCTUATION, !self.exclude_punctuation),
            (" ", self.include_space),
        ];
        types
            .iter()
            .filter(|(_, included)| *included)
            .map(|(set, _)| {
                set.chars()
                    .filter(|c| !self.exclude_characters.contains(*c))
                    .collect::<Vec<char>>()
            })
            .filter(|set| !set.is_empty())
            .collect()
    }

    /// How hard a password of this policy is to guess, in bits: its
    /// length times the bits of one character drawn from all it may hold
    /// (an upper bound: one of each type, when required, takes a little).
    pub fn bits(&self) -> f64 {
        let alphabet: usize = self.included_types().iter().map(Vec::len).sum();
        if alphabet == 0 {
            return 0.0;
        }
        f64::from(self.length) * (alphabet as f64).log2()
    }

    pub fn check(&self) -> Result<Vec<Vec<char>>, PasswordError> {
        if !(1..=MAX_LENGTH).contains(&self.length) {
            return Err(PasswordError::Length(self.length));
        }
        let types = self.included_types();
        if types.is_empty() {
            return Err(PasswordError::NothingLeft);
        }
        if types.iter().map(Vec::len).sum::<usize>() < 2 {
            return Err(PasswordError::OneCharacter);
        }
        if self.require_each_included_type && (self.length as usize) < types.len() {
            return Err(PasswordError::TooShortForEachType {
                length: self.length,
                types: types.len(),
            });
        }
        Ok(types)
    }
}

/// Uniform random indices below a bound, from a buffer of OS randomness.
struct Randomness {
    buffer: Zeroizing<Vec<u8>>,
    used: usize,
}

impl Randomness {
    fn new() -> Self {
        Self {
            buffer: Zeroizing::new(vec![0; 1024]),
            used: 1024,
        }
    }

    fn next_u32(&mut self) -> u32 {
        if self.used + 4 > self.buffer.len() {
            random_bytes(&mut self.buffer);
            self.used = 0;
        }
        let bytes: [u8; 4] = [
            self.buffer[self.used],
            self.buffer[self.used + 1],
            self.buffer[self.used + 2],
            self.buffer[self.used + 3],
        ];
        self.used += 4;
        u32::from_le_bytes(bytes)
    }

    /// A uniform index in `0..bound` (rejection sampling: no modulo bias).
    fn below(&mut self, bound: usize) -> usize {
        let bound = bound as u32;
        let zone = u32::MAX - (u32::MAX % bound);
        loop {
            let candidate = self.next_u32();
            if candidate < zone {
                return (candidate % bound) as usize;
            }
        }
    }
}

/// A password that honours every option of `policy`.
pub fn generate(policy: &PasswordPolicy) -> Result<Zeroizing<String>, PasswordError> {
    let types = policy.check()?;
    let alphabet: Vec<char> = types.iter().flatten().copied().collect();
    let mut random = Randomness::new();
    let mut characters: Zeroizing<Vec<char>> =
        Zeroizing::new(Vec::with_capacity(policy.length as usize));
    if policy.require_each_included_type {
        for set in &types {
            characters.push(set[random.below(set.len())]);
        }
    }
    while characters.len() < policy.length as usize {
        characters.push(alphabet[random.below(alphabet.len())]);
    }
    // Fisher-Yates, so the required characters are not always in front.
    for index in (1..characters.len()).rev() {
        let other = random.below(index + 1);
        characters.swap(index, other);
    }
    Ok(Zeroizing::new(characters.iter().collect()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy_strategy() -> impl Strategy<Value = PasswordPolicy> {
        (
            1u32..200,
            proptest::collection::vec(proptest::char::range('!', '~'), 0..30),
            any::<[bool; 6]>(),
        )
            .prop_map(|(length, excluded, flags)| PasswordPolicy {
                length,
                exclude_characters: excluded.into_iter().collect(),
                exclude_numbers: flags[0],
                exclude_punctuation: flags[1],
                exclude_uppercase: flags[2],
                exclude_lowercase: flags[3],
                include_space: flags[4],
                require_each_included_type: flags[5],
            })
    }

    proptest! {
        #[test]
        fn every_password_honours_every_option(policy in policy_strategy()) {
            match generate(&policy) {
                Ok(password) => {
                    prop_assert_eq!(password.chars().count(), policy.length as usize);
                    for c in password.chars() {
                        prop_assert!(!policy.exclude_characters.contains(c), "excluded {:?}", c);
                        prop_assert!(!(policy.exclude_numbers && c.is_ascii_digit()));
                        prop_assert!(!(policy.exclude_uppercase && c.is_ascii_uppercase()));
                        prop_assert!(!(policy.exclude_lowercase && c.is_ascii_lowercase()));
                        prop_assert!(!(policy.exclude_punctuation && PUNCTUATION.contains(c)));
                        prop_assert!(c != ' ' || policy.include_space);
                    }
                    if policy.require_each_included_type {
                        for set in policy.included_types() {
                            prop_assert!(
                                password.chars().any(|c| set.contains(&c)),
                                "no character of {:?}", set
                            );
                        }
                    }
                }
                Err(PasswordError::NothingLeft) => {
                    prop_assert!(policy.included_types().is_empty());
                }
                Err(PasswordError::TooShortForEachType { types, .. }) => {
                    prop_assert!(policy.require_each_included_type);
                    prop_assert!((policy.length as usize) < types);
                }
                Err(PasswordError::OneCharacter) => {
                    let left: usize = policy.included_types().iter().map(Vec::len).sum();
                    prop_assert_eq!(left, 1);
                }
                Err(PasswordError::Length(_)) => prop_assert!(false, "length is in range"),
            }
        }
    }

    #[test]
    fn refusals() {
        let policy = |length| PasswordPolicy {
            length,
            ..PasswordPolicy::default()
        };
        // Every password the same: spaces only, or the one digit left.
        let spaces = PasswordPolicy {
            exclude_numbers: true,
            exclude_punctuation: true,
            exclude_uppercase: true,
            exclude_lowercase: true,
            include_space: true,
            ..PasswordPolicy::default()
        };
        assert_eq!(generate(&spaces).unwrap_err(), PasswordError::OneCharacter);
        let nine = PasswordPolicy {
            include_space: false,
            exclude_characters: "012345678".to_owned(),
            ..spaces.clone()
        };
        let nine = PasswordPolicy {
            exclude_numbers: false,
            ..nine
        };
        assert_eq!(generate(&nine).unwrap_err(), PasswordError::OneCharacter);
        assert_eq!(generate(&policy(0)).unwrap_err(), PasswordError::Length(0));
        assert_eq!(
            generate(&policy(5000)).unwrap_err(),
            PasswordError::Length(5000)
        );
        assert_eq!(generate(&policy(4096)).unwrap().len(), 4096);
        let nothing = PasswordPolicy {
            exclude_numbers: true,
            exclude_punctuation: true,
            exclude_uppercase: true,
            exclude_lowercase: true,
            ..PasswordPolicy::default()
        };
        assert_eq!(generate(&nothing).unwrap_err(), PasswordError::NothingLeft);
        let short = PasswordPolicy {
            length: 3,
            ..PasswordPolicy::default()
        };
        assert!(matches!(
            generate(&short).unwrap_err(),
            PasswordError::TooShortForEachType { types: 4, .. }
        ));
    }

    #[test]
    fn characters_are_spread_evenly() {
        // 62 letters and digits, 62,000 draws: each should appear about
        // 1,000 times; a biased generator would be far off.
        let policy = PasswordPolicy {
            length: 4000,
            exclude_punctuation: true,
            require_each_included_type: false,
            ..PasswordPolicy::default()
        };
        let mut counts = std::collections::HashMap::new();
        for _ in 0..16 {
            for c in generate(&policy).unwrap().chars() {
                *counts.entry(c).or_insert(0u32) += 1;
            }
        }
        assert_eq!(counts.len(), 62);
        for (c, count) in counts {
            assert!((700..1400).contains(&count), "{c:?} drawn {count} times");
        }
    }
}
