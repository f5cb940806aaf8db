//! Checks of request fields that are not names (those parse in
//! `rekey_shared::names`): tokens, descriptions, tags, filters, sort orders.
//! Every refusal is `INVALID_ARGUMENT` with a message naming the field.

use crate::error::{Error, Result};
use crate::store::{FilterField, MAX_TAGS, SecretFilter, SortKey};
use rekey_shared::proto::{self, FilterKey, SortBy, SortOrder};
use rekey_shared::{KeyName, VersionId};

pub const MAX_DESCRIPTION_CHARS: usize = 2048;
const MAX_FILTERS: usize = 10;
const MAX_FILTER_VALUES: usize = 10;
const MAX_FILTER_VALUE_CHARS: usize = 512;

pub fn version_id_from_token(token: &str) -> Result<VersionId> {
    if token.is_empty() {
        Ok(VersionId::random())
    } else {
        VersionId::parse(token)
            .map_err(|error| Error::InvalidArgument(format!("client request token: {error}")))
    }
}

pub fn key_name_or_default(name: &str) -> Result<KeyName> {
    if name.is_empty() {
        Ok(KeyName::default_key())
    } else {
        Ok(KeyName::parse(name)?)
    }
}

pub fn check_description(description: &str) -> Result<()> {
    let length = description.chars().count();
    if length > MAX_DESCRIPTION_CHARS {
        return Err(Error::InvalidArgument(format!(
            "description is {length} characters long; the limit is {MAX_DESCRIPTION_CHARS}"
        )));
    }
    check_characters("description", description, &['\n', '\r', '\t'])
}

/// The most characters of an approval's or a rejection's comment.
pub const MAX_COMMENT_CHARS: usize = 2_000;

/// An approval's or a rejection's comment: at most [`MAX_COMMENT_CHARS`],
/// and no control character but tab, line feed and carriage return.
pub fn check_comment(comment: &str) -> Result<()> {
    let length = comment.chars().count();
    if length > MAX_COMMENT_CHARS {
        return Err(Error::InvalidArgument(format!(
            "comment is {length} characters long; the limit is {MAX_COMMENT_CHARS}"
        )));
    }
    check_characters("comment", comment, &['\n', '\r', '\t'])
}

/// Refuses control characters (NUL among them, which PostgreSQL's text
/// cannot hold) other than those `allowed`, naming the field and where.
fn check_characters(field: &str, text: &str, allowed: &[char]) -> Result<()> {
    match text
        .chars()
        .enumerate()
        .find(|(_, c)| c.is_control() && !allowed.contains(c))
    {
        Some((at, c)) => Err(Error::InvalidArgument(format!(
            "{field} holds a control character (U+{:04X}) at character {}",
            u32::from(c),
            at + 1
        ))),
        None => Ok(()),
    }
}

pub fn check_tag_key(key: &str) -> Result<()> {
    check_tag_key_allowing(key, &[])
}

/// A tag key's length, and its characters but those `allowed`.
fn check_tag_key_allowing(key: &str, allowed: &[char]) -> Result<()> {
    let length = key.chars().count();
    if !(1..=128).contains(&length) {
        return Err(Error::InvalidArgument(format!(
            "tag key {} is {length} characters long; it must be 1-128",
            rekey_shared::names::quoted_start(key)
        )));
    }
    check_characters("a tag key", key, allowed)
}

/// The keys of an UntagResource: at most as many as a secret carries tags,
/// each of a key's length, without NUL (which no stored key holds, and
/// PostgreSQL refuses). Not other control characters: a key stored before
/// they were refused can still be removed.
pub fn check_tag_keys(keys: &[String]) -> Result<()> {
    if keys.len() > MAX_TAGS {
        return Err(Error::InvalidArgument(format!(
            "{} tag keys given; a secret carries at most {MAX_TAGS} tags",
            keys.len()
        )));
    }
    let stored_before: Vec<char> = ('\u{1}'..='\u{1f}').chain('\u{7f}'..='\u{9f}').collect();
    keys.iter()
        .try_for_each(|key| check_tag_key_allowing(key, &stored_before))
}

/// Tags as (key, value) pairs; a key given twice keeps its last value.
pub fn check_tags(tags: &[proto::Tag]) -> Result<Vec<(String, String)>> {
    if tags.len() > MAX_TAGS {
        return Err(Error::InvalidArgument(format!(
            "{} tags given; a secret carries at most {MAX_TAGS}",
            tags.len()
        )));
    }
    let mut checked: Vec<(String, String)> = Vec::with_capacity(tags.len());
    for tag in tags {
        check_tag_key(&tag.key)?;
        let value_length = tag.value.chars().count();
        if value_length > 256 {
            return Err(Error::InvalidArgument(format!(
                "the value of tag {:?} is {value_length} characters long; the limit is 256",
                tag.key
            )));
        }
        check_characters(&format!("the value of tag {:?}", tag.key), &tag.value, &[])?;
        checked.retain(|(key, _)| *key != tag.key);
        checked.push((tag.key.clone(), tag.value.clone()));
    }
    Ok(checked)
}

/// The API's filters as store filters: values split into those to include
/// and those (`!`-prefixed) to exclude.
pub fn filters(filters: &[proto::Filter]) -> Result<Vec<SecretFilter>> {
    if filters.len() > MAX_FILTERS {
        return Err(Error::InvalidArgument(format!(
            "{} filters given; at most {MAX_FILTERS} are allowed",
            filters.len()
        )));
    }
    filters
        .iter()
        .map(|filter| {
            let field = match FilterKey::try_from(filter.key) {
                Ok(FilterKey::Name) => FilterField::Name,
                Ok(FilterKey::TagKey) => FilterField::TagKey,
                Ok(FilterKey::TagValue) => FilterField::TagValue,
                Ok(FilterKey::Description) => FilterField::Description,
                Ok(FilterKey::All) => FilterField::All,
                Ok(FilterKey::Tag) => FilterField::Tag,
                Ok(FilterKey::Unspecified) | Err(_) => {
                    return Err(Error::InvalidArgument(format!(
                        "filter key {} is not one of name, tag-key, tag-value, description, all, tag",
                        filter.key
                    )));
                }
            };
            if filter.values.is_empty() || filter.values.len() > MAX_FILTER_VALUES {
                return Err(Error::InvalidArgument(format!(
                    "a filter takes 1-{MAX_FILTER_VALUES} values; {} given",
                    filter.values.len()
                )));
            }
            let mut include = Vec::new();
            let mut exclude = Vec::new();
            for value in &filter.values {
                if value.chars().count() > MAX_FILTER_VALUE_CHARS {
                    return Err(Error::InvalidArgument(format!(
                        "a filter value is longer than {MAX_FILTER_VALUE_CHARS} characters"
                    )));
                }
                check_characters("a filter value", value, &[])?;
                if field == FilterField::Tag && !value.trim_start_matches('!').contains('=') {
                    return Err(Error::InvalidArgument(format!(
                        "tag filter {value:?} is not KEY=VALUE"
                    )));
                }
                match value.strip_prefix('!') {
                    Some(negated) => exclude.push(negated.to_owned()),
                    None => include.push(value.clone()),
                }
            }
            Ok(SecretFilter {
                field,
                include,
                exclude,
            })
        })
        .collect()
}

pub fn sort(by: i32, order: i32) -> Result<(SortKey, bool)> {
    let key = match SortBy::try_from(by) {
        Ok(SortBy::Unspecified | SortBy::Name) => SortKey::Name,
        Ok(SortBy::Created) => SortKey::Created,
        Ok(SortBy::Changed) => SortKey::Changed,
        Err(_) => return Err(Error::InvalidArgument(format!("sort_by {by} is unknown"))),
    };
    let descending = match SortOrder::try_from(order) {
        Ok(SortOrder::Unspecified | SortOrder::Asc) => false,
        Ok(SortOrder::Desc) => true,
        Err(_) => {
            return Err(Error::InvalidArgument(format!(
                "sort_order {order} is unknown"
            )));
        }
    };
    Ok((key, descending))
}

/// Six random letters and digits, to make a secret's id from its name.
pub fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut suffix = String::with_capacity(6);
    let mut byte = [0u8; 1];
    while suffix.len() < 6 {
        crate::crypto::random_bytes(&mut byte);
        // 248 = 4 × 62: reject the rest so every character is equally likely.
        if byte[0] < 248 {
            suffix.push(ALPHABET[usize::from(byte[0]) % ALPHABET.len()] as char);
        }
    }
    suffix
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_comment_may_span_lines_but_hold_no_other_control_character() {
        check_comment("looks right\n\tship it").unwrap();
        assert!(matches!(
            check_comment("x\0"),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            check_comment("\u{1b}[2J"),
            Err(Error::InvalidArgument(_))
        ));
        assert!(check_comment(&"y".repeat(MAX_COMMENT_CHARS)).is_ok());
        assert!(check_comment(&"y".repeat(MAX_COMMENT_CHARS + 1)).is_err());
    }
}
