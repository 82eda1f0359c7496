//! Reading only what a pipeline's views name from an event. A batch parses every payload once
//! for all its views; building the whole document (a map per object, a string per key) and then
//! walking pointers through it cost more than all the views' counting together. Here the parse
//! walks the pointers' tokens as it reads and puts each value a pointer names into that
//! pointer's slot; everything else is skipped, its syntax checked all the same.

use std::fmt;
use std::ops::Range;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use crate::compute::Pointer;

/// The values a set of pointers finds in an event, by slot ([`Wanted::slot_of`]).
pub(crate) type Found = Vec<Option<Value>>;

/// The members a set of pointers walks through: a tree of their tokens, each pointer's end a
/// slot. Slots are numbered depth first, so the slots below a value are one range.
#[derive(Debug, Default, Clone)]
pub(crate) struct Wanted {
    root: Node,
    /// Each pointer's text and slot.
    slots: Vec<String>,
}

#[derive(Debug, Default, Clone)]
struct Node {
    /// A pointer ends here: the value is kept whole, in this slot.
    slot: Option<usize>,
    /// The slots of the pointers that go on below a value kept whole, with the rest of their way.
    within: Vec<(usize, Pointer)>,
    /// Tokens below this value, with the array index each names (where it names one).
    below: Vec<(String, Option<usize>, Node)>,
    /// The slots at or below this value.
    range: Range<usize>,
}

impl Wanted {
    /// The tree of `pointers` (texts; one slot per distinct text, a text that is not a pointer
    /// has a slot that stays empty).
    pub(crate) fn of<'p>(pointers: impl IntoIterator<Item = &'p str>) -> Self {
        let mut texts: Vec<String> = Vec::new();
        for text in pointers {
            if !texts.iter().any(|t| t == text) {
                texts.push(text.to_owned());
            }
        }
        // The tree first, each end marked with the text's position; then slots depth first.
        let mut root = Node::default();
        let mut ends: Vec<(Vec<String>, Pointer, usize)> = Vec::new();
        for (position, text) in texts.iter().enumerate() {
            let pointer = Pointer::parse(text);
            let Some(tokens) = pointer.tokens().map(|t| t.collect::<Vec<_>>()) else { continue };
            let mut at = &mut root;
            for (key, index) in &tokens {
                let i = match at.below.iter().position(|(k, _, _)| k == key) {
                    Some(i) => i,
                    None => {
                        at.below.push(((*key).to_owned(), *index, Node::default()));
                        at.below.len() - 1
                    }
                };
                at = &mut at.below[i].2;
            }
            at.slot = Some(position);
            let keys = tokens.iter().map(|(k, _)| (*k).to_owned()).collect();
            ends.push((keys, pointer.clone(), position));
        }
        let mut renumbered = vec![usize::MAX; texts.len()];
        let mut next = 0;
        root.number(&mut next, &mut renumbered);
        // Texts that are not pointers get the slots after the tree's.
        for slot in renumbered.iter_mut().filter(|s| **s == usize::MAX) {
            *slot = next;
            next += 1;
        }
        let mut slots = vec![String::new(); texts.len()];
        for (position, text) in texts.into_iter().enumerate() {
            slots[renumbered[position]] = text;
        }
        root.find_within(&[], &ends, &renumbered);
        Self { root, slots }
    }

    /// The slot of `pointer` (one of the texts the tree was made of).
    pub(crate) fn slot_of(&self, pointer: &str) -> usize {
        self.slots.iter().position(|text| text == pointer).expect("a pointer of the tree")
    }

    /// Parses `payload` into `found` (one value or `None` per slot). False when the payload is
    /// not JSON (then `found` means nothing).
    pub(crate) fn parse(&self, payload: &str, found: &mut Found) -> bool {
        found.clear();
        found.resize(self.slots.len(), None);
        let mut deserializer = serde_json::Deserializer::from_str(payload);
        (Seed { node: &self.root, found }).deserialize(&mut deserializer).is_ok() && deserializer.end().is_ok()
    }
}

impl Node {
    /// Numbers the slots depth first; `renumbered[position]` gets each end's slot.
    fn number(&mut self, next: &mut usize, renumbered: &mut [usize]) {
        let start = *next;
        if let Some(position) = self.slot {
            renumbered[position] = *next;
            self.slot = Some(*next);
            *next += 1;
        }
        for (_, _, node) in &mut self.below {
            node.number(next, renumbered);
        }
        self.range = start..*next;
    }

    /// For each value kept whole, the pointers that go on below it.
    fn find_within(&mut self, path: &[String], ends: &[(Vec<String>, Pointer, usize)], renumbered: &[usize]) {
        if self.slot.is_some() {
            for (keys, pointer, position) in ends {
                if keys.len() > path.len() && keys.starts_with(path) {
                    self.within.push((renumbered[*position], pointer.below(path.len())));
                }
            }
        }
        for (key, _, node) in &mut self.below {
            let mut deeper = path.to_vec();
            deeper.push(key.clone());
            node.find_within(&deeper, ends, renumbered);
        }
    }

    fn member(&self, key: &str) -> Option<&Node> {
        self.below.iter().find(|(k, _, _)| k == key).map(|(_, _, node)| node)
    }

    fn element(&self, index: usize) -> Option<&Node> {
        self.below.iter().find(|(_, i, _)| *i == Some(index)).map(|(_, _, node)| node)
    }

    /// One past the highest array index wanted.
    fn elements(&self) -> usize {
        self.below.iter().filter_map(|(_, i, _)| i.map(|i| i + 1)).max().unwrap_or(0)
    }
}

/// Reads one value at `node`, filling the slots at and below it.
struct Seed<'a> {
    node: &'a Node,
    found: &'a mut Found,
}

impl<'de> DeserializeSeed<'de> for Seed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        // A value read again (a duplicate member) replaces all that the earlier one filled.
        for slot in self.node.range.clone() {
            self.found[slot] = None;
        }
        match self.node.slot {
            Some(slot) => {
                let value: Value = serde::Deserialize::deserialize(deserializer)?;
                for (inner, rest) in &self.node.within {
                    self.found[*inner] = rest.lookup(&value).cloned();
                }
                self.found[slot] = Some(value);
                Ok(())
            }
            None => deserializer.deserialize_any(self),
        }
    }
}

/// A member's name, borrowed from the payload unless it holds escapes.
enum Key<'de> {
    Borrowed(&'de str),
    Owned(String),
}

impl Key<'_> {
    fn as_str(&self) -> &str {
        match self {
            Key::Borrowed(text) => text,
            Key::Owned(text) => text,
        }
    }
}

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E>(self, text: &'de str) -> Result<Key<'de>, E> {
                Ok(Key::Borrowed(text))
            }
            fn visit_str<E>(self, text: &str) -> Result<Key<'de>, E> {
                Ok(Key::Owned(text.to_owned()))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// A value no pointer ends at: only what is below it is read; a scalar (which no pointer goes
/// below) fills nothing.
impl<'de> Visitor<'de> for Seed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<Key<'de>>()? {
            match self.node.member(key.as_str()) {
                Some(node) => map.next_value_seed(Seed { node, found: self.found })?,
                None => map.next_value::<IgnoredAny>().map(|_| ())?,
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let wanted = self.node.elements();
        let mut index = 0;
        loop {
            let more = match self.node.element(index).filter(|_| index < wanted) {
                Some(node) => seq.next_element_seed(Seed { node, found: self.found })?.is_some(),
                None => seq.next_element::<IgnoredAny>()?.is_some(),
            };
            if !more {
                return Ok(());
            }
            index += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const DOC: &str = r#"{"a": {"b": [10, {"c": "deep", "skip": [1, {"x": null}]}], "": "empty key", "x/y": 1,
        "m~n": 2, "01": "zero-one", "s": "text"}, "list": ["first", "second", "third"], "n": null, "dup": 1,
        "esc\"aped": {"k": true}, "dup": 2, "big": 18446744073709551615, "f": -1.5e3,
        "twice": {"p": 1, "q": 2}, "twice": {"q": 3}}"#;

    fn found_by(texts: &[&str], payload: &str) -> Option<Vec<Option<Value>>> {
        let wanted = Wanted::of(texts.iter().copied());
        let mut found = Found::new();
        if !wanted.parse(payload, &mut found) {
            return None;
        }
        Some(texts.iter().map(|text| found[wanted.slot_of(text)].clone()).collect())
    }

    #[test]
    fn each_slot_holds_what_the_pointer_finds_in_the_full_document() {
        let full: Value = serde_json::from_str(DOC).unwrap();
        let texts = [
            "/a/b/1/c",
            "/a/b/0",
            "/a/b/2",
            "/a/b/01",
            "/a/x~1y",
            "/a/m~0n",
            "/a/01",
            "/a/",
            "/list/2",
            "/list/0/x",
            "/n",
            "/n/x",
            "/dup",
            "/esc\"aped/k",
            "/big",
            "/f",
            "/a/s/t",
            "/missing",
            "/a/b/1/skip/1/x",
            "/twice/p",
            "/twice/q",
            "/a",
            "/a/b/1",
            "",
            "not a pointer",
        ];
        let want: Vec<Option<Value>> = texts.iter().map(|t| full.pointer(t).cloned()).collect();
        // Each pointer alone, then all of them together (values kept whole with pointers below).
        for (text, want) in texts.iter().zip(&want) {
            assert_eq!(found_by(&[text], DOC).unwrap(), std::slice::from_ref(want), "{text:?} alone");
        }
        assert_eq!(found_by(&texts, DOC).unwrap(), want, "all together");
    }

    /// A JSON text as a sender may write it: members may repeat.
    #[derive(Debug, Clone)]
    enum Text {
        Scalar(&'static str),
        Array(Vec<Text>),
        Object(Vec<(&'static str, Text)>),
    }

    impl Text {
        fn render(&self) -> String {
            match self {
                Text::Scalar(s) => (*s).to_owned(),
                Text::Array(items) => format!("[{}]", items.iter().map(Text::render).collect::<Vec<_>>().join(",")),
                Text::Object(members) => format!(
                    "{{{}}}",
                    members
                        .iter()
                        .map(|(k, v)| format!("{}:{}", Value::from(*k), v.render()))
                        .collect::<Vec<_>>()
                        .join(",")
                ),
            }
        }
    }

    const KEYS: [&str; 7] = ["a", "b", "0", "1", "x/y", "m~n", ""];
    const TOKENS: [&str; 9] = ["a", "b", "0", "1", "x~1y", "m~0n", "", "01", "2"];

    fn text() -> impl Strategy<Value = Text> {
        let scalar =
            proptest::sample::select(vec!["1", "-2.5", "\"s\"", "null", "true", "\"a\\\"b\""]).prop_map(Text::Scalar);
        scalar.prop_recursive(4, 40, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Text::Array),
                proptest::collection::vec((proptest::sample::select(KEYS.to_vec()), inner), 0..5)
                    .prop_map(Text::Object),
            ]
        })
    }

    fn pointer() -> impl Strategy<Value = String> {
        proptest::collection::vec(proptest::sample::select(TOKENS.to_vec()), 0..4)
            .prop_map(|tokens| tokens.iter().map(|t| format!("/{t}")).collect())
    }

    proptest! {
        #[test]
        fn slots_equal_pointers_into_the_whole_document(
            doc in text(),
            pointers in proptest::collection::vec(pointer(), 1..6),
        ) {
            let payload = doc.render();
            let whole: Value = serde_json::from_str(&payload).unwrap();
            let texts: Vec<&str> = pointers.iter().map(String::as_str).collect();
            let found = found_by(&texts, &payload).unwrap();
            for (text, got) in texts.iter().zip(found) {
                prop_assert_eq!(got.as_ref(), whole.pointer(text), "{} in {}", text, payload);
            }
        }
    }

    #[test]
    fn what_is_not_json_is_refused_even_where_no_view_looks() {
        for text in [r#"{"a": 1, "b": [1, 2}"#, r#"{"a": 1} trailing"#, "", r#"{"a": 1, "b": tru}"#, "[1, 2"] {
            assert_eq!(found_by(&["/a"], text), None, "{text:?}");
        }
        assert_eq!(found_by(&["/a", "/0"], "[1, 2]"), Some(vec![None, Some(Value::from(1))]));
        assert_eq!(found_by(&["/a"], "7"), Some(vec![None]));
    }
}
