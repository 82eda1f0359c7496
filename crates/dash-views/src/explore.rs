//! The field explorer: which JSON pointers recent events hold, of which types, how often, and a
//! few sample values, so a person can pick a field for a view without knowing the payloads.

use std::collections::{BTreeMap, HashSet};

use serde_json::Value;

/// Most pointers reported (the most frequent first).
pub const MAX_FIELDS: usize = 100;
/// Deepest pointer followed.
const MAX_DEPTH: usize = 4;
/// Samples kept per pointer, and their length.
const SAMPLES: usize = 3;
const SAMPLE_CHARS: usize = 40;

/// One pointer seen in recent events.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldStat {
    pub pointer: String,
    /// In how many of the events it appears.
    pub seen: usize,
    /// The JSON types it held (`number`, `string`, `boolean`, `null`, `object`, `array`).
    pub kinds: Vec<&'static str>,
    /// A few distinct values, as JSON text.
    pub samples: Vec<String>,
}

impl FieldStat {
    /// Whether it held numbers (and so suits `sum`, `avg`, percentiles).
    pub fn numeric(&self) -> bool {
        self.kinds.contains(&"number")
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Escapes one key as a JSON pointer segment (RFC 6901).
fn segment(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// Most distinct pointers looked at, whatever the payloads hold (a hostile one may hold a
/// hundred thousand keys): past it, only pointers already known are counted.
const MAX_TRACKED: usize = 10 * MAX_FIELDS;

fn walk(
    value: &Value,
    pointer: &mut String,
    depth: usize,
    seen: &mut BTreeMap<String, FieldStat>,
    once: &mut HashSet<String>,
) {
    let Value::Object(map) = value else { return };
    for (key, child) in map {
        let len = pointer.len();
        pointer.push('/');
        pointer.push_str(&segment(key));
        let known = seen.contains_key(pointer.as_str());
        if (known || seen.len() < MAX_TRACKED)
            && pointer.len() <= crate::spec::MAX_POINTER_LEN
            && !pointer.chars().any(char::is_control)
        {
            let stat = seen.entry(pointer.clone()).or_insert_with(|| FieldStat {
                pointer: pointer.clone(),
                seen: 0,
                kinds: Vec::new(),
                samples: Vec::new(),
            });
            if once.insert(pointer.clone()) {
                stat.seen += 1;
            }
            let k = kind(child);
            if !stat.kinds.contains(&k) {
                stat.kinds.push(k);
            }
            if !child.is_object() && !child.is_array() && stat.samples.len() < SAMPLES {
                let text: String = match child {
                    Value::String(s) => s.chars().take(SAMPLE_CHARS).collect(),
                    other => other.to_string().chars().take(SAMPLE_CHARS).collect(),
                };
                if !stat.samples.contains(&text) {
                    stat.samples.push(text);
                }
            }
            if depth + 1 < MAX_DEPTH {
                walk(child, pointer, depth + 1, seen, once);
            }
        }
        pointer.truncate(len);
    }
}

/// The pointers of `payloads` (JSON texts), most frequent first, then by pointer.
pub fn explore<'a>(payloads: impl IntoIterator<Item = &'a str>) -> (usize, Vec<FieldStat>) {
    let mut seen = BTreeMap::new();
    let mut events = 0;
    for payload in payloads {
        let Ok(value) = serde_json::from_str::<Value>(payload) else { continue };
        events += 1;
        let mut once = HashSet::new();
        walk(&value, &mut String::new(), 0, &mut seen, &mut once);
    }
    let mut fields: Vec<FieldStat> = seen.into_values().collect();
    fields.sort_by(|a, b| b.seen.cmp(&a.seen).then_with(|| a.pointer.cmp(&b.pointer)));
    fields.truncate(MAX_FIELDS);
    (events, fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_types_frequency_and_samples() {
        let payloads = [
            r#"{"type":"order","amount":12.5,"customer":{"id":"c1"},"a/b":1}"#,
            r#"{"type":"refund","amount":"3"}"#,
            r#"{"type":"order"}"#,
            "not json",
        ];
        let (events, fields) = explore(payloads);
        assert_eq!(events, 3);
        let by: BTreeMap<&str, &FieldStat> = fields.iter().map(|f| (f.pointer.as_str(), f)).collect();
        assert_eq!(fields[0].pointer, "/type");
        assert_eq!(by["/type"].seen, 3);
        assert_eq!(by["/type"].samples, ["order", "refund"]);
        assert_eq!(by["/amount"].kinds, ["number", "string"]);
        assert!(by["/amount"].numeric());
        assert_eq!(by["/customer/id"].seen, 1);
        assert!(by.contains_key("/a~1b"), "{fields:?}");
    }

    #[test]
    fn a_payload_of_many_keys_is_looked_at_in_bounded_time_and_memory() {
        let many: serde_json::Map<String, Value> = (0..200_000).map(|i| (format!("k{i}"), Value::from(i))).collect();
        let payload = Value::Object(many).to_string();
        let started = std::time::Instant::now();
        let (events, fields) = explore([payload.as_str(), r#"{"k1": 2}"#]);
        assert_eq!(events, 2);
        assert_eq!(fields.len(), MAX_FIELDS);
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?}", started.elapsed());
    }
}
