//! From events to a view's changes: what a view reads from one event, and the changes of a
//! batch, per view, group and minute, with each view's groups bounded.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};

use serde_json::Value;

use crate::spec::{Aggregate, ViewSpec};
use crate::state::{Cell, Input};

/// The group of events whose `group_by` value is missing.
pub const GROUP_NONE: &str = "(none)";
/// The group of values that came after a view had its `max_groups`.
pub const GROUP_OTHER: &str = "(other)";
/// The group of a view without `group_by`.
pub const GROUP_ALL: &str = "";
/// Longest group name kept; longer values are cut (on a character boundary).
pub const MAX_GROUP_LEN: usize = 128;

/// The minute holding `ms` (saturating at the far past).
pub fn minute_of(ms: i64) -> i64 {
    ms.saturating_sub(ms.rem_euclid(60_000))
}

/// What `view` reads from one event: `None` when its filter leaves the event out, else the
/// event's group (before bounding) and its input.
pub fn extract<'a>(view: &ViewSpec, event: &'a Value) -> Option<(Cow<'a, str>, Input<'a>)> {
    for (pointer, wanted) in &view.filter {
        if event.pointer(pointer) != Some(wanted) {
            return None;
        }
    }
    let group = match &view.group_by {
        None => Cow::Borrowed(GROUP_ALL),
        Some(pointer) => match event.pointer(pointer) {
            None => Cow::Borrowed(GROUP_NONE),
            Some(Value::String(s)) => cut(Cow::Borrowed(s.as_str())),
            Some(other) => cut(Cow::Owned(other.to_string())),
        },
    };
    let input = match (&view.field, view.aggregate) {
        (None, _) => Input::Present,
        (Some(pointer), aggregate) => match (event.pointer(pointer), aggregate) {
            (None, _) => Input::Skipped,
            (Some(_), Aggregate::Count) => Input::Present,
            (Some(Value::String(s)), Aggregate::Distinct) => Input::Text(Cow::Borrowed(s.as_str())),
            (Some(other), Aggregate::Distinct) => Input::Text(Cow::Owned(other.to_string())),
            (Some(Value::Number(n)), _) => n.as_f64().filter(|v| v.is_finite()).map_or(Input::Skipped, Input::Number),
            (Some(_), _) => Input::Skipped,
        },
    };
    Some((group, input))
}

/// A group name of at most [`MAX_GROUP_LEN`] bytes.
fn cut(name: Cow<'_, str>) -> Cow<'_, str> {
    if name.len() <= MAX_GROUP_LEN {
        return name;
    }
    let mut end = MAX_GROUP_LEN;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(name[..end].to_owned())
}

/// A view's groups so far: values beyond `max_groups` go to [`GROUP_OTHER`]. The reserved
/// groups ([`GROUP_NONE`], [`GROUP_OTHER`], [`GROUP_ALL`]) do not count towards the bound.
#[derive(Debug, Clone, Default)]
pub struct Groups {
    known: HashSet<String>,
    /// Groups first seen since this was loaded: to be recorded with the view's states.
    pub added: Vec<String>,
}

impl Groups {
    pub fn new(known: impl IntoIterator<Item = String>) -> Self {
        Self { known: known.into_iter().collect(), added: Vec::new() }
    }

    /// The group `raw` is counted in.
    pub fn assign<'a>(&mut self, raw: &'a str, max_groups: u32) -> &'a str {
        if raw == GROUP_NONE || raw == GROUP_ALL || raw == GROUP_OTHER || self.known.contains(raw) {
            return raw;
        }
        if self.known.len() < max_groups as usize {
            self.known.insert(raw.to_owned());
            self.added.push(raw.to_owned());
            raw
        } else {
            GROUP_OTHER
        }
    }

    pub fn len(&self) -> usize {
        self.known.len()
    }

    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }
}

/// One view's changes from a set of events: a cell per (minute, group).
#[derive(Debug, Clone, Default)]
pub struct ViewChanges {
    pub cells: BTreeMap<(i64, String), Cell>,
}

impl ViewChanges {
    /// Counts one event (already parsed) at `time_ms` into the changes.
    pub fn add(&mut self, view: &ViewSpec, groups: &mut Groups, event: &Value, time_ms: i64) {
        let Some((raw, input)) = extract(view, event) else { return };
        let group = groups.assign(&raw, view.max_groups);
        let key = (minute_of(time_ms), group.to_owned());
        self.cells.entry(key).or_insert_with(|| Cell::empty(view.aggregate)).add(&input);
    }

    /// Counts an event that is not a JSON object (or not JSON): every view skips it, in the
    /// group of a missing value.
    pub fn add_unreadable(&mut self, view: &ViewSpec, time_ms: i64) {
        if !view.filter.is_empty() {
            return;
        }
        let group = if view.group_by.is_some() { GROUP_NONE } else { GROUP_ALL };
        let input = if view.field.is_none() { Input::Present } else { Input::Skipped };
        let key = (minute_of(time_ms), group.to_owned());
        self.cells.entry(key).or_insert_with(|| Cell::empty(view.aggregate)).add(&input);
    }

    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    /// The span of minutes changed: `[first, last + 1 minute)`.
    pub fn span(&self) -> Option<(i64, i64)> {
        let first = self.cells.keys().next()?.0;
        let last = self.cells.keys().map(|(m, _)| *m).max()?;
        Some((first, last.saturating_add(60_000)))
    }
}

/// A pipeline's events parsed once for all its views: `None` for a payload that is not JSON.
pub fn parse_payload(payload: &str) -> Option<Value> {
    serde_json::from_str(payload).ok()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn view(json: Value) -> ViewSpec {
        ViewSpec::from_json(json).unwrap()
    }

    #[test]
    fn extraction_follows_filter_group_and_field() {
        let v = view(
            json!({"aggregate": "sum", "field": "/amount", "group_by": "/currency", "filter": {"/type": "order"}}),
        );
        let e = json!({"type": "order", "amount": 12.5, "currency": "EUR"});
        assert_eq!(extract(&v, &e), Some((Cow::Borrowed("EUR"), Input::Number(12.5))));
        assert_eq!(extract(&v, &json!({"type": "refund", "amount": 1})), None);
        assert_eq!(
            extract(&v, &json!({"type": "order", "amount": "12"})),
            Some((Cow::Borrowed(GROUP_NONE), Input::Skipped))
        );
        assert_eq!(
            extract(&v, &json!({"type": "order", "currency": 978})),
            Some((Cow::Owned("978".to_owned()), Input::Skipped))
        );
        let d = view(json!({"aggregate": "distinct", "field": "/customer"}));
        assert_eq!(extract(&d, &json!({"customer": 7})), Some((Cow::Borrowed(""), Input::Text("7".into()))));
        let long = "é".repeat(100);
        let g = view(json!({"aggregate": "count", "group_by": "/k"}));
        let event = json!({ "k": long });
        let (group, _) = extract(&g, &event).unwrap();
        assert!(group.len() <= MAX_GROUP_LEN && group.chars().all(|c| c == 'é'));
    }

    #[test]
    fn groups_are_bounded() {
        let v = view(json!({"aggregate": "count", "group_by": "/k", "max_groups": 2}));
        let mut groups = Groups::default();
        let mut changes = ViewChanges::default();
        for k in ["a", "b", "c", "a", "d"] {
            changes.add(&v, &mut groups, &json!({ "k": k }), 0);
        }
        changes.add(&v, &mut groups, &json!({}), 0);
        let counts: Vec<(&str, u64)> = changes.cells.iter().map(|((_, g), c)| (g.as_str(), c.n)).collect();
        assert_eq!(counts, [("(none)", 1), ("(other)", 2), ("a", 2), ("b", 1)]);
        assert_eq!(groups.added, ["a", "b"]);
    }
}
