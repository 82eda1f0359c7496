use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest pipeline id, in bytes.
const PIPELINE_ID_MAX: usize = 63;
/// Longest event id, in bytes.
pub(crate) const EVENT_ID_MAX: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidId(pub String);

/// A pipeline's id: a lowercase slug (`[a-z0-9][a-z0-9_-]*`, at most 63 bytes), safe in URLs and
/// as one token of a bus subject. It is derived from the pipeline's name at creation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PipelineId(String);

/// Whether `text` is a slug of at most `max_len` bytes: `[a-z0-9][a-z0-9_-]*`, the form of
/// every name Dash puts in a URL (pipeline ids, view and board names).
pub fn is_slug(text: &str, max_len: usize) -> bool {
    let valid = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_';
    text.len() <= max_len
        && text.as_bytes().first().is_some_and(|b| b.is_ascii_alphanumeric() && !b.is_ascii_uppercase())
        && text.bytes().all(valid)
}

impl PipelineId {
    pub fn parse(raw: &str) -> Result<Self, InvalidId> {
        if !is_slug(raw, PIPELINE_ID_MAX) {
            return Err(InvalidId(format!(
                "pipeline id must be 1 to {PIPELINE_ID_MAX} characters of a-z, 0-9, '-' or '_', starting with a letter or digit"
            )));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The id a pipeline named `name` gets: lowercase, runs of other characters folded to '-'.
    pub fn from_name(name: &str) -> Result<Self, InvalidId> {
        let mut slug = String::with_capacity(name.len());
        for c in name.trim().chars() {
            if c.is_ascii_alphanumeric() || c == '_' {
                slug.push(c.to_ascii_lowercase());
            } else if !slug.ends_with('-') && !slug.is_empty() {
                slug.push('-');
            }
        }
        let slug = slug.trim_end_matches('-');
        if slug.is_empty() {
            return Err(InvalidId("pipeline name must contain a letter or digit".into()));
        }
        Self::parse(slug)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for PipelineId {
    type Error = InvalidId;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<PipelineId> for String {
    fn from(value: PipelineId) -> Self {
        value.0
    }
}

impl fmt::Display for PipelineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An event's dedupe key within its pipeline: non-empty, at most 256 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EventId(String);

impl EventId {
    /// Checks an id a sender gave; the intake path keeps the string it already has.
    pub fn check(raw: &str) -> Result<(), InvalidId> {
        if raw.is_empty() || raw.len() > EVENT_ID_MAX {
            return Err(InvalidId(format!("event id must be 1 to {EVENT_ID_MAX} bytes")));
        }
        // Control characters (NUL above all) cannot be stored as text by every backend.
        if has_control(raw) {
            return Err(InvalidId("event id must not contain control characters".into()));
        }
        Ok(())
    }

    /// A fresh server-side id: UUIDv7, time-ordered so that index inserts stay local.
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7().to_string())
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// Longest pipeline name, in characters (its id, a slug of it, is never longer).
pub const PIPELINE_NAME_MAX: usize = PIPELINE_ID_MAX;
/// Longest text a lookup by id or name may be, in bytes.
const LOOKUP_KEY_MAX: usize = 4 * PIPELINE_NAME_MAX;

/// Checks a pipeline's display name: at most [`PIPELINE_NAME_MAX`] characters as sent (the bound
/// the API documents applies to what a client sends, blanks included), not blank once trimmed, no
/// control characters (which no store keeps the same way: PostgreSQL refuses NUL in text).
pub fn check_pipeline_name(name: &str) -> Result<(), InvalidId> {
    if name.trim().is_empty() || name.chars().count() > PIPELINE_NAME_MAX {
        return Err(InvalidId(format!("pipeline name must be 1 to {PIPELINE_NAME_MAX} characters")));
    }
    if has_control(name) {
        return Err(InvalidId("pipeline name must not contain control characters".into()));
    }
    Ok(())
}

/// Whether `text` could name or identify a pipeline at all; lookups of anything else find
/// nothing without asking a store (so NUL or a megabyte of text never reaches the database).
pub fn is_lookup_key(text: &str) -> bool {
    !text.is_empty() && text.len() <= LOOKUP_KEY_MAX && !has_control(text)
}

/// Whether `text` holds a Unicode control character (`char::is_control`: U+0000..=U+001F and
/// U+007F..=U+009F), scanning bytes: in UTF-8 the C1 range is 0xC2 followed by 0x80..=0x9F.
fn has_control(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.iter().enumerate().any(|(i, &b)| {
        b < 0x20 || b == 0x7f || (b == 0xc2 && bytes.get(i + 1).is_some_and(|next| (0x80..=0x9f).contains(next)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipeline_ids_from_names() {
        assert_eq!(PipelineId::from_name("Orders API").unwrap().as_str(), "orders-api");
        assert_eq!(PipelineId::from_name("  stripe__live!! ").unwrap().as_str(), "stripe__live");
        assert!(PipelineId::from_name("!!!").is_err());
        assert!(PipelineId::parse("Has.Dots").is_err());
        assert!(PipelineId::parse(&"a".repeat(64)).is_err());
        assert!(PipelineId::parse("-lead").is_err());
    }

    #[test]
    fn pipeline_names_and_lookup_keys() {
        assert!(check_pipeline_name(" Orders API ").is_ok());
        assert!(check_pipeline_name("nul\u{0}name").is_err());
        assert!(check_pipeline_name("tab\tname").is_err());
        assert!(check_pipeline_name("   ").is_err());
        assert!(check_pipeline_name(&"n".repeat(64)).is_err());
        assert!(check_pipeline_name(&format!("\u{a0}{}", "n".repeat(63))).is_err(), "counted as sent");
        assert!(check_pipeline_name(&"é".repeat(62)).is_ok(), "characters, not bytes");
        assert!(is_lookup_key("orders") && is_lookup_key("Orders API"));
        assert!(!is_lookup_key("a\u{0}b") && !is_lookup_key("") && !is_lookup_key(&"a".repeat(253)));
    }

    #[test]
    fn event_ids_are_bounded() {
        assert!(EventId::check("").is_err());
        assert!(EventId::check(&"x".repeat(257)).is_err());
        assert!(EventId::check(&"x".repeat(256)).is_ok());
        assert!(EventId::check("evt_1").is_ok());
        assert!(EventId::check("evt\u{0}1").is_err());
        assert!(EventId::check("evt\u{7f}").is_err());
        assert!(EventId::check("evt\u{85}").is_err());
        assert!(EventId::check("évt\u{a0}ü€").is_ok());
        assert_ne!(EventId::generate(), EventId::generate());
    }

    #[test]
    fn control_scan_agrees_with_char_is_control() {
        for c in (0..=0x10ffff).filter_map(char::from_u32) {
            assert_eq!(has_control(&format!("a{c}b")), c.is_control(), "{:#x}", c as u32);
        }
    }
}
