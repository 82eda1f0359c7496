//! From events to a view's changes: what a view reads from one event, and the changes of a
//! batch, per view, group and minute, with each view's groups bounded.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::Value;

use crate::sparse::{Found, Wanted};
use crate::spec::{Aggregate, BODY_TYPE, EVENT_TYPE, ViewSpec};
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

/// A JSON pointer (RFC 6901) split into its reference tokens once, so that looking it up in
/// each event allocates nothing (`Value::pointer` unescapes every token on every call). It finds
/// what `Value::pointer` finds.
#[derive(Debug, Clone, PartialEq)]
pub struct Pointer {
    /// `None`: not a pointer (text that neither is empty nor starts with '/'); finds nothing.
    tokens: Option<Vec<Token>>,
}

#[derive(Debug, Clone, PartialEq)]
struct Token {
    key: String,
    /// The array index the token names, where it names one ("0", "17"; not "+1" or "01").
    index: Option<usize>,
}

impl Pointer {
    pub fn parse(text: &str) -> Self {
        if text.is_empty() {
            return Self { tokens: Some(Vec::new()) };
        }
        let Some(rest) = text.strip_prefix('/') else { return Self { tokens: None } };
        let tokens = rest
            .split('/')
            .map(|raw| {
                let key = raw.replace("~1", "/").replace("~0", "~");
                let index = if key.starts_with('+') || (key.starts_with('0') && key.len() != 1) {
                    None
                } else {
                    key.parse().ok()
                };
                Token { key, index }
            })
            .collect();
        Self { tokens: Some(tokens) }
    }

    /// The pointer from `depth` tokens down: what is left of its way below a value it passes.
    pub(crate) fn below(&self, depth: usize) -> Self {
        Self { tokens: self.tokens.as_ref().map(|tokens| tokens[depth.min(tokens.len())..].to_vec()) }
    }

    /// Its tokens with the array index each names; `None` for text that is not a pointer.
    pub(crate) fn tokens(&self) -> Option<impl Iterator<Item = (&str, Option<usize>)>> {
        Some(self.tokens.as_ref()?.iter().map(|token| (token.key.as_str(), token.index)))
    }

    /// The value the pointer names in `value`.
    pub fn lookup<'v>(&self, value: &'v Value) -> Option<&'v Value> {
        let mut at = value;
        for token in self.tokens.as_ref()? {
            at = match at {
                Value::Object(map) => map.get(&token.key)?,
                Value::Array(items) => items.get(token.index?)?,
                _ => return None,
            };
        }
        Some(at)
    }
}

/// What `view` reads from one event: `None` when its filter leaves the event out, else the
/// event's group (before bounding) and its input. The reference reading, with `Value::pointer`;
/// a [`BatchCounter`] reads the same with its views' pointers parsed once.
/// The event's type, [`EVENT_TYPE`], reads the payload's `/type` here: the reference for events
/// without a type of their own.
pub fn extract<'a>(view: &ViewSpec, event: &'a Value) -> Option<(Cow<'a, str>, Input<'a>)> {
    let find = |name: &str| event.pointer(if name == EVENT_TYPE { BODY_TYPE } else { name });
    for (pointer, wanted) in &view.filter {
        if find(pointer) != Some(wanted) {
            return None;
        }
    }
    let group = view.group_by.as_deref().map(find);
    let field = view.field.as_deref().map(find);
    Some(reading(view.aggregate, group, field))
}

/// An event's group (before bounding) and input, from the values its view's pointers found:
/// `None` where the view names no such pointer, `Some(None)` where the event lacks the value.
fn reading<'a>(
    aggregate: Aggregate,
    group: Option<Option<&'a Value>>,
    field: Option<Option<&'a Value>>,
) -> (Cow<'a, str>, Input<'a>) {
    let group = match group {
        None => Cow::Borrowed(GROUP_ALL),
        Some(None) => Cow::Borrowed(GROUP_NONE),
        Some(Some(Value::String(s))) => cut(Cow::Borrowed(s.as_str())),
        Some(Some(other)) => cut(Cow::Owned(other.to_string())),
    };
    let input = match field {
        None => Input::Present,
        Some(value) => match (value, aggregate) {
            (None, _) => Input::Skipped,
            (Some(_), Aggregate::Count) => Input::Present,
            (Some(Value::String(s)), Aggregate::Distinct) => Input::Text(Cow::Borrowed(s.as_str())),
            (Some(other), Aggregate::Distinct) => Input::Text(Cow::Owned(other.to_string())),
            (Some(Value::Number(n)), _) => n.as_f64().filter(|v| v.is_finite()).map_or(Input::Skipped, Input::Number),
            (Some(_), _) => Input::Skipped,
        },
    };
    (group, input)
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
/// Each group has a slot, which is how [`ViewChanges`] finds its cells. The groups as stored are
/// shared (a clone costs nothing, so a store can keep them between batches); the ones first seen
/// since are the clone's own.
#[derive(Debug, Clone, Default)]
pub struct Groups {
    /// Each stored group's slot (after the reserved groups' slots).
    known: Arc<HashMap<String, usize>>,
    /// Each group first seen since, with its slot (after the stored ones').
    fresh: HashMap<String, usize>,
    /// Groups first seen since this was loaded, in order: to be recorded with the view's states.
    pub added: Vec<String>,
}

/// The reserved groups' slots, and the reserved groups by slot.
const SLOT_ALL: usize = 0;
const SLOT_NONE: usize = 1;
const SLOT_OTHER: usize = 2;
const RESERVED: [&str; 3] = [GROUP_ALL, GROUP_NONE, GROUP_OTHER];

impl Groups {
    pub fn new(known: impl IntoIterator<Item = String>) -> Self {
        let mut slots = HashMap::new();
        for name in known {
            let slot = RESERVED.len() + slots.len();
            slots.entry(name).or_insert(slot);
        }
        Self { known: Arc::new(slots), fresh: HashMap::new(), added: Vec::new() }
    }

    /// These groups with `added` stored too: what a store holds once a batch recorded them.
    pub fn with_added(&self, added: &[String]) -> Self {
        if added.is_empty() && self.fresh.is_empty() {
            return Self { known: self.known.clone(), fresh: HashMap::new(), added: Vec::new() };
        }
        let mut slots = (*self.known).clone();
        for name in self.added.iter().chain(added) {
            let slot = RESERVED.len() + slots.len();
            slots.entry(name.clone()).or_insert(slot);
        }
        Self { known: Arc::new(slots), fresh: HashMap::new(), added: Vec::new() }
    }

    /// The group `raw` is counted in, and its slot.
    pub fn assign<'a>(&mut self, raw: &'a str, max_groups: u32) -> (usize, &'a str) {
        if let Some(slot) = self.known.get(raw).or_else(|| self.fresh.get(raw)) {
            return (*slot, raw);
        }
        if let Some(slot) = RESERVED.iter().position(|reserved| *reserved == raw) {
            return (slot, raw);
        }
        if self.len() < max_groups as usize {
            let slot = RESERVED.len() + self.len();
            self.fresh.insert(raw.to_owned(), slot);
            self.added.push(raw.to_owned());
            (slot, raw)
        } else {
            (SLOT_OTHER, GROUP_OTHER)
        }
    }

    pub fn len(&self) -> usize {
        self.known.len() + self.fresh.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One view's changes from a set of events: a cell per (minute, group). Kept by group slot
/// ([`Groups`]), then by minute, so counting an event into a group it already has allocates
/// nothing and compares no names.
#[derive(Debug, Clone, Default)]
pub struct ViewChanges {
    by_slot: Vec<Option<(String, BTreeMap<i64, Cell>)>>,
}

impl ViewChanges {
    /// Counts one event (already parsed) at `time_ms` into the changes: the reference path,
    /// reading the event with [`extract`].
    pub fn add(&mut self, view: &ViewSpec, groups: &mut Groups, event: &Value, time_ms: i64) {
        let Some((raw, input)) = extract(view, event) else { return };
        let group = groups.assign(&raw, view.max_groups);
        self.count(view.aggregate, group, time_ms, &input);
    }

    /// Counts an event that is not a JSON object (or not JSON): every view skips it, in the
    /// group of a missing value.
    pub fn add_unreadable(&mut self, view: &ViewSpec, time_ms: i64) {
        if !view.filter.is_empty() {
            return;
        }
        let group = if view.group_by.is_some() { (SLOT_NONE, GROUP_NONE) } else { (SLOT_ALL, GROUP_ALL) };
        let input = if view.field.is_none() { Input::Present } else { Input::Skipped };
        self.count(view.aggregate, group, time_ms, &input);
    }

    /// Counts `input` into the cell of `group` (slot, name) and the minute holding `time_ms`.
    fn count(&mut self, aggregate: Aggregate, (slot, name): (usize, &str), time_ms: i64, input: &Input<'_>) {
        if slot >= self.by_slot.len() {
            self.by_slot.resize_with(slot + 1, || None);
        }
        let (_, minutes) = self.by_slot[slot].get_or_insert_with(|| (name.to_owned(), BTreeMap::new()));
        minutes.entry(minute_of(time_ms)).or_insert_with(|| Cell::empty(aggregate)).add(input);
    }

    fn groups(&self) -> impl Iterator<Item = &(String, BTreeMap<i64, Cell>)> {
        self.by_slot.iter().flatten()
    }

    pub fn is_empty(&self) -> bool {
        self.groups().next().is_none()
    }

    /// How many cells (minute, group) changed.
    pub fn len(&self) -> usize {
        self.groups().map(|(_, minutes)| minutes.len()).sum()
    }

    /// The changed cells' keys, by minute then group.
    pub fn keys(&self) -> Vec<(i64, &str)> {
        let mut keys: Vec<(i64, &str)> = self
            .groups()
            .flat_map(|(group, minutes)| minutes.keys().map(move |minute| (*minute, group.as_str())))
            .collect();
        keys.sort_unstable();
        keys
    }

    /// The changed cells, by minute then group.
    pub fn into_cells(self) -> Vec<((i64, String), Cell)> {
        let mut cells: Vec<((i64, String), Cell)> = self
            .by_slot
            .into_iter()
            .flatten()
            .flat_map(|(group, minutes)| minutes.into_iter().map(move |(minute, cell)| ((minute, group.clone()), cell)))
            .collect();
        cells.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        cells
    }

    /// What a coarser level gains from these changes: the cells of the minutes before `before`,
    /// merged into buckets of `width_ms` (aligned to the epoch), and every group into one
    /// ([`GROUP_ALL`]) when `merge_groups`. Empty when no minute is that early.
    pub fn rolled(&self, aggregate: Aggregate, width_ms: i64, merge_groups: bool, before: i64) -> ViewChanges {
        let mut rolled = ViewChanges::default();
        for (slot, entry) in self.by_slot.iter().enumerate() {
            let Some((name, minutes)) = entry else { continue };
            let (slot, name) = if merge_groups { (0, GROUP_ALL) } else { (slot, name.as_str()) };
            for (minute, cell) in minutes.range(..before) {
                if slot >= rolled.by_slot.len() {
                    rolled.by_slot.resize_with(slot + 1, || None);
                }
                let (_, buckets) = rolled.by_slot[slot].get_or_insert_with(|| (name.to_owned(), BTreeMap::new()));
                let bucket = minute.saturating_sub(minute.rem_euclid(width_ms));
                buckets.entry(bucket).or_insert_with(|| Cell::empty(aggregate)).merge(cell);
            }
        }
        rolled
    }

    /// The span of minutes changed: `[first, last + 1 minute)`.
    pub fn span(&self) -> Option<(i64, i64)> {
        let first = self.groups().filter_map(|(_, m)| m.keys().next()).min()?;
        let last = self.groups().filter_map(|(_, m)| m.keys().next_back()).max()?;
        Some((*first, last.saturating_add(60_000)))
    }
}

/// An event parsed whole: `None` for a payload that is not JSON. The reference reading; a
/// [`BatchCounter`] reads only the members its views name ([`crate::sparse`]), to the same
/// result (intake bounds nesting at 64 levels, well within a whole parse's 128).
pub fn parse_payload(payload: &str) -> Option<Value> {
    serde_json::from_str(payload).ok()
}

/// One view being counted: the slots of its pointers, its changes and its groups.
struct ViewCounter {
    name: String,
    spec: ViewSpec,
    filter: Vec<(usize, Value)>,
    group_by: Option<usize>,
    field: Option<usize>,
    changes: ViewChanges,
    groups: Groups,
}

impl ViewCounter {
    fn add(&mut self, found: &Found, time_ms: i64) {
        if !self.filter.iter().all(|(slot, wanted)| found[*slot].as_ref() == Some(wanted)) {
            return;
        }
        let group = self.group_by.map(|slot| found[slot].as_ref());
        let field = self.field.map(|slot| found[slot].as_ref());
        let (raw, input) = reading(self.spec.aggregate, group, field);
        let group = self.groups.assign(&raw, self.spec.max_groups);
        self.changes.count(self.spec.aggregate, group, time_ms, &input);
    }
}

/// What one view's share of a batch came to.
#[derive(Debug)]
pub struct CountedView {
    pub view: String,
    pub changes: ViewChanges,
    /// Groups first seen in these events: to be recorded with the view's states.
    pub new_groups: Vec<String>,
}

/// What a pipeline's views read from events: the members their pointers name. Made once per
/// set of views, so batches counting into them do not make it again ([`BatchCounter::with_reader`]).
#[derive(Debug, Clone)]
pub struct ViewReader {
    wanted: Arc<Wanted>,
    /// When a view names [`EVENT_TYPE`]: its slot, and the slot of the payload's `/type`, which
    /// it holds for events without a type of their own.
    type_slots: Option<(usize, usize)>,
}

impl ViewReader {
    pub fn new(views: &[(String, ViewSpec)]) -> Self {
        let named = || views.iter().flat_map(|(_, spec)| spec.filter.keys().chain(&spec.group_by).chain(&spec.field));
        let wants_type = named().any(|name| name == EVENT_TYPE);
        let pointers = named().map(String::as_str).chain(wants_type.then_some(BODY_TYPE));
        let wanted = Wanted::of(pointers);
        let type_slots = wants_type.then(|| (wanted.slot_of(EVENT_TYPE), wanted.slot_of(BODY_TYPE)));
        Self { wanted: Arc::new(wanted), type_slots }
    }

    /// Reads `payload` into `found`; false when it is not JSON.
    fn read(&self, payload: &str, event_type: Option<&str>, found: &mut Found) -> bool {
        if !self.wanted.parse(payload, found) {
            return false;
        }
        if let Some((slot, body_slot)) = self.type_slots {
            found[slot] = match event_type {
                Some(kind) => Some(Value::String(kind.to_owned())),
                None => found[body_slot].clone(),
            };
        }
        true
    }
}

/// A pipeline's views counting a batch of its events, an event at a time: each payload is read
/// once for all views (only the members they name, see [`crate::sparse`]), and memory grows
/// with the cells touched, not with the events.
pub struct BatchCounter {
    views: Vec<ViewCounter>,
    /// Every member the views read, and the values of the event being counted.
    reader: ViewReader,
    found: Found,
}

impl BatchCounter {
    /// `groups`: each view's groups as stored (views without an entry have none yet).
    pub fn new(views: &[(String, ViewSpec)], groups: HashMap<String, Groups>) -> Self {
        Self::with_reader(views, ViewReader::new(views), groups)
    }

    /// A counter reading with `reader`, which must have been made of the same `views`.
    pub fn with_reader(views: &[(String, ViewSpec)], reader: ViewReader, mut groups: HashMap<String, Groups>) -> Self {
        let wanted = &reader.wanted;
        let views = views
            .iter()
            .map(|(name, spec)| ViewCounter {
                name: name.clone(),
                spec: spec.clone(),
                filter: spec.filter.iter().map(|(pointer, value)| (wanted.slot_of(pointer), value.clone())).collect(),
                group_by: spec.group_by.as_deref().map(|pointer| wanted.slot_of(pointer)),
                field: spec.field.as_deref().map(|pointer| wanted.slot_of(pointer)),
                changes: ViewChanges::default(),
                groups: groups.remove(name).unwrap_or_default(),
            })
            .collect();
        Self { views, reader, found: Found::new() }
    }

    /// Counts one event (its time, payload and type of its own, if any) into every view.
    pub fn add(&mut self, time_ms: i64, payload: &str, event_type: Option<&str>) {
        if self.reader.read(payload, event_type, &mut self.found) {
            self.views.iter_mut().for_each(|view| view.add(&self.found, time_ms));
        } else {
            self.views.iter_mut().for_each(|view| view.changes.add_unreadable(&view.spec, time_ms));
        }
    }

    /// Each view that changed, with its changes and its new groups.
    pub fn finish(self) -> Vec<CountedView> {
        self.views
            .into_iter()
            .filter(|view| !view.changes.is_empty())
            .map(|view| CountedView { view: view.name, changes: view.changes, new_groups: view.groups.added })
            .collect()
    }
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
    fn a_parsed_pointer_finds_what_value_pointer_finds() {
        let doc = json!({
            "a": {"b": [10, {"c": "deep"}], "": "empty key", "x/y": 1, "m~n": 2, "01": "zero-one"},
            "list": ["first", "second"],
            "n": null
        });
        for text in [
            "",
            "/",
            "/a",
            "/a/b",
            "/a/b/0",
            "/a/b/1/c",
            "/a/b/2",
            "/a/b/01",
            "/a/b/+1",
            "/a/b/-",
            "/a/",
            "/a/x~1y",
            "/a/m~0n",
            "/a/01",
            "/list/1",
            "/list/0/x",
            "/n",
            "/n/x",
            "/missing",
            "a",
            "/a/b/1/c/d",
            "/list/18446744073709551616",
        ] {
            assert_eq!(Pointer::parse(text).lookup(&doc), doc.pointer(text), "{text:?}");
        }
    }

    #[test]
    fn a_batch_counter_counts_what_the_reference_counts() {
        let views: Vec<(String, ViewSpec)> = [
            json!({"aggregate": "count", "group_by": "/type", "max_groups": 2}),
            json!({"aggregate": "sum", "field": "/data/amount", "group_by": "/data/currency"}),
            json!({"aggregate": "p95", "field": "/data/items", "filter": {"/data/channel": "web"}}),
            json!({"aggregate": "distinct", "field": "/data/customer"}),
        ]
        .into_iter()
        .enumerate()
        .map(|(i, spec)| (format!("v{i}"), view(spec)))
        .collect();
        let payloads = [
            r#"{"type":"a","data":{"amount":5,"currency":"EUR","items":3,"channel":"web","customer":"c1"}}"#,
            r#"{"type":"b","data":{"amount":"5","currency":978,"items":1,"channel":"app","customer":7}}"#,
            r#"{"type":"c","data":{"channel":"web"}}"#,
            r#"{"type":{"nested":true},"data":[]}"#,
            r#"[1,2]"#,
            r#"not json"#,
            r#"{"type":"a","data":{"amount":1e308,"items":-2,"channel":"web","customer":"c1"}}"#,
        ];
        let mut counter = BatchCounter::new(&views, HashMap::new());
        let mut reference: Vec<(ViewChanges, Groups)> = views.iter().map(|_| Default::default()).collect();
        for (i, payload) in payloads.iter().enumerate() {
            let time = i as i64 * 40_000;
            counter.add(time, payload, None);
            for ((_, spec), (changes, groups)) in views.iter().zip(&mut reference) {
                match parse_payload(payload) {
                    Some(event) => changes.add(spec, groups, &event, time),
                    None => changes.add_unreadable(spec, time),
                }
            }
        }
        let counted = counter.finish();
        assert_eq!(counted.len(), views.len());
        for (got, (want, groups)) in counted.into_iter().zip(reference) {
            assert_eq!(got.new_groups, groups.added, "{}", got.view);
            assert_eq!(got.changes.into_cells(), want.into_cells(), "{}", got.view);
        }
    }

    #[test]
    fn the_event_type_is_its_own_else_the_payloads() {
        let views: Vec<(String, ViewSpec)> = vec![
            ("by_type".into(), view(json!({"aggregate": "count", "group_by": "$type"}))),
            ("pushes".into(), view(json!({"aggregate": "sum", "field": "/size", "filter": {"$type": "push"}}))),
        ];
        let mut counter = BatchCounter::new(&views, HashMap::new());
        counter.add(0, r#"{"size":3}"#, Some("push"));
        counter.add(0, r#"{"type":"push","size":4}"#, None);
        // A type of its own wins over the payload's.
        counter.add(0, r#"{"type":"push","size":5}"#, Some("issues"));
        counter.add(0, r#"{"size":6}"#, None);
        let counted = counter.finish();
        let by_type: Vec<(String, u64)> =
            counted[0].changes.clone().into_cells().into_iter().map(|((_, g), c)| (g, c.n)).collect();
        assert_eq!(by_type, [("(none)".into(), 1), ("issues".into(), 1), ("push".into(), 2)]);
        let pushes = counted[1].changes.clone().into_cells();
        assert_eq!(pushes.len(), 1);
        assert_eq!(pushes[0].1.n, 2);
        // The reference reading, for events without a type of their own, reads /type.
        assert_eq!(extract(&views[0].1, &json!({"type": "push"})).map(|(g, _)| g), Some(Cow::Borrowed("push")));
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
        let cells = changes.into_cells();
        let counts: Vec<(&str, u64)> = cells.iter().map(|((_, g), c)| (g.as_str(), c.n)).collect();
        assert_eq!(counts, [("(none)", 1), ("(other)", 2), ("a", 2), ("b", 1)]);
        assert_eq!(groups.added, ["a", "b"]);
    }

    #[test]
    fn stored_groups_are_shared_and_new_ones_are_a_clones_own() {
        let stored = Groups::new(["a".to_owned()]);
        let mut batch = stored.clone();
        assert_eq!(batch.assign("b", 3), (4, "b"));
        assert_eq!(batch.assign("a", 3), (3, "a"));
        assert_eq!(stored.len(), 1, "the stored groups are not changed by a batch's");
        let settled = stored.with_added(&batch.added);
        assert_eq!(settled.len(), 2);
        let mut next = settled.clone();
        assert_eq!(next.assign("b", 3), (4, "b"), "a group keeps its slot");
        assert_eq!(next.assign("c", 3), (5, "c"));
        assert_eq!(next.assign("d", 3), (2, GROUP_OTHER));
        assert!(next.added == ["c"] && settled.added.is_empty());
    }
}
