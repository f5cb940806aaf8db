//! `SecretValue`: a secret's plaintext, held in zeroizing memory and never
//! printed. Its `Debug` shows the kind and length only.

use std::fmt;
use zeroize::Zeroizing;

/// The largest value a version may hold, in bytes (as AWS's 64 KiB).
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// One version's value: UTF-8 text or binary.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretValue {
    Text(Zeroizing<String>),
    Binary(Zeroizing<Vec<u8>>),
}

impl SecretValue {
    pub fn text(value: impl Into<String>) -> Self {
        Self::Text(Zeroizing::new(value.into()))
    }

    pub fn binary(value: impl Into<Vec<u8>>) -> Self {
        Self::Binary(Zeroizing::new(value.into()))
    }

    /// Builds a value from the pair of optional fields the API carries,
    /// refusing both at once and values over [`MAX_VALUE_BYTES`]. `None`
    /// when neither is set.
    pub fn from_fields(
        text: Option<String>,
        binary: Option<Vec<u8>>,
    ) -> Result<Option<Self>, ValueError> {
        let value = match (text, binary) {
            (Some(_), Some(_)) => return Err(ValueError::Both),
            (Some(text), None) => Self::text(text),
            (None, Some(binary)) => Self::binary(binary),
            (None, None) => return Ok(None),
        };
        if value.len() > MAX_VALUE_BYTES {
            return Err(ValueError::TooLarge(value.len()));
        }
        Ok(Some(value))
    }

    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Text(text) => text.as_bytes(),
            Self::Binary(bytes) => bytes,
        }
    }

    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    pub fn is_empty(&self) -> bool {
        self.as_bytes().is_empty()
    }

    pub fn is_binary(&self) -> bool {
        matches!(self, Self::Binary(_))
    }

    /// The two API fields (`secret_string`, `secret_binary`) for this value.
    /// The copies leave zeroizing memory: use them only to build a message.
    pub fn to_fields(&self) -> (Option<String>, Option<Vec<u8>>) {
        match self {
            Self::Text(text) => (Some(text.as_str().to_owned()), None),
            Self::Binary(bytes) => (None, Some(bytes.to_vec())),
        }
    }

    /// Compares in time independent of where the values differ.
    pub fn same_as(&self, other: &Self) -> bool {
        let (a, b) = (self.as_bytes(), other.as_bytes());
        self.is_binary() == other.is_binary()
            && a.len() == b.len()
            && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.is_binary() { "binary" } else { "text" };
        write!(f, "SecretValue({kind}, {} bytes, <redacted>)", self.len())
    }
}

/// Why a value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("give either secret_string or secret_binary, not both")]
    Both,
    #[error("the value is {0} bytes; the limit is {MAX_VALUE_BYTES} bytes (64 KiB)")]
    TooLarge(usize),
}

/// Wipes the value a response carries (its text or its bytes): for a
/// response whose value was printed or copied and is about to be dropped,
/// which prost's plain `String` and `Vec` would otherwise leave in freed
/// memory.
pub fn wipe_response(response: &mut crate::proto::GetSecretValueResponse) {
    use zeroize::Zeroize;
    if let Some(text) = response.secret_string.as_mut() {
        text.zeroize();
    }
    if let Some(bytes) = response.secret_binary.as_mut() {
        bytes.zeroize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_checked() {
        assert_eq!(
            SecretValue::from_fields(Some("a".into()), Some(vec![1])),
            Err(ValueError::Both)
        );
        assert_eq!(SecretValue::from_fields(None, None), Ok(None));
        let big = vec![0u8; MAX_VALUE_BYTES + 1];
        assert_eq!(
            SecretValue::from_fields(None, Some(big)),
            Err(ValueError::TooLarge(MAX_VALUE_BYTES + 1))
        );
        let exact = "x".repeat(MAX_VALUE_BYTES);
        assert!(SecretValue::from_fields(Some(exact), None).is_ok());
    }

    #[test]
    fn debug_is_redacted_and_comparison_is_by_kind_and_bytes() {
        let value = SecretValue::text("hunter2");
        assert_eq!(
            format!("{value:?}"),
            "SecretValue(text, 7 bytes, <redacted>)"
        );
        assert!(value.same_as(&SecretValue::text("hunter2")));
        assert!(!value.same_as(&SecretValue::text("hunter3")));
        assert!(!value.same_as(&SecretValue::binary(b"hunter2".to_vec())));
    }
}
