//! The intake log's payload: one accepted request, in a format of the log's own.
//!
//! A frame outlives the release that wrote it (an upgrade starts with the old release's
//! unflushed frames in the log), so the format is versioned and never follows
//! [`dash_domain::Event`] silently:
//!
//! - **Version 2** (current, for requests whose events name a type of their own): `[0x00][0x02]`
//!   then the postcard encoding of [`v2::Record`]: version 1's fields and each event's
//!   `event_type` (an option) after its payload.
//! - **Version 1** (current for every other request): `[0x00][0x01]` then the postcard encoding
//!   of [`v1::Record`]: the pipeline id, then the events, each `id`, `time_ms`, `received_ms`,
//!   `payload`.
//! - **Version 0** (releases before the tag): the same postcard body with no tag. Its first byte
//!   is the pipeline id's length, never 0, which is how the two are told apart.
//!
//! A release writes the oldest version that holds what a request carries: a request without
//! event types (every request but a provider's that names its type in a header) is written as
//! version 1, which the releases before version 2 still read, so a rolling upgrade or a
//! downgrade loses none of them.
//!
//! A later version adds a new tag and keeps decoding every earlier one; `tests/fixtures/` holds
//! frames each version wrote, and every later version must decode them
//! (`tests/record_fixtures.rs`). A frame of an unknown version (written by a newer release, then
//! downgraded) is refused with [`RecordError::UnknownVersion`], never guessed at.

use dash_domain::Event;
use serde::{Deserialize, Serialize};

/// The first byte of every versioned record (a version 0 record never starts with it).
const VERSIONED: u8 = 0x00;
/// The newest version this release writes.
pub const CURRENT_VERSION: u8 = 2;

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("intake record of version {0}, which this release does not know (written by a newer release?)")]
    UnknownVersion(u8),
    #[error("intake record of version {version} does not decode: {source}")]
    Malformed { version: u8, source: postcard::Error },
}

/// One accepted request: its pipeline and its events, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntakeRecord {
    pub pipeline: String,
    pub events: Vec<Event>,
}

/// Version 1's layout, frozen: change it only by adding a version 2 beside it.
mod v1 {
    use super::*;

    #[derive(Serialize)]
    pub(super) struct RecordRef<'a> {
        pub pipeline: &'a str,
        pub events: EventsRef<'a>,
    }

    pub(super) struct EventsRef<'a>(pub &'a [Event]);

    impl Serialize for EventsRef<'_> {
        fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            serializer.collect_seq(self.0.iter().map(|e| EventRef {
                id: &e.id,
                time_ms: e.time_ms,
                received_ms: e.received_ms,
                payload: &e.payload,
            }))
        }
    }

    #[derive(Serialize)]
    struct EventRef<'a> {
        id: &'a str,
        time_ms: i64,
        received_ms: i64,
        payload: &'a str,
    }

    #[derive(Deserialize)]
    pub(super) struct Record {
        pub pipeline: String,
        pub events: Vec<EventOwned>,
    }

    #[derive(Deserialize)]
    pub(super) struct EventOwned {
        pub id: String,
        pub time_ms: i64,
        pub received_ms: i64,
        pub payload: String,
    }

    pub(super) fn decode(body: &[u8], version: u8) -> Result<IntakeRecord, RecordError> {
        let record: Record = postcard::from_bytes(body).map_err(|source| RecordError::Malformed { version, source })?;
        Ok(IntakeRecord {
            pipeline: record.pipeline,
            events: record
                .events
                .into_iter()
                .map(|e| Event {
                    id: e.id,
                    time_ms: e.time_ms,
                    received_ms: e.received_ms,
                    payload: e.payload,
                    event_type: None,
                })
                .collect(),
        })
    }
}

/// Version 2's layout, frozen: version 1's with each event's type after its payload.
mod v2 {
    use super::*;

    #[derive(Serialize)]
    pub(super) struct RecordRef<'a> {
        pub pipeline: &'a str,
        pub events: EventsRef<'a>,
    }

    pub(super) struct EventsRef<'a>(pub &'a [Event]);

    impl Serialize for EventsRef<'_> {
        fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            serializer.collect_seq(self.0.iter().map(|e| EventRef {
                id: &e.id,
                time_ms: e.time_ms,
                received_ms: e.received_ms,
                payload: &e.payload,
                event_type: e.event_type.as_deref(),
            }))
        }
    }

    #[derive(Serialize)]
    struct EventRef<'a> {
        id: &'a str,
        time_ms: i64,
        received_ms: i64,
        payload: &'a str,
        event_type: Option<&'a str>,
    }

    #[derive(Deserialize)]
    struct Record {
        pipeline: String,
        events: Vec<EventOwned>,
    }

    #[derive(Deserialize)]
    struct EventOwned {
        id: String,
        time_ms: i64,
        received_ms: i64,
        payload: String,
        event_type: Option<String>,
    }

    pub(super) fn decode(body: &[u8]) -> Result<IntakeRecord, RecordError> {
        let record: Record =
            postcard::from_bytes(body).map_err(|source| RecordError::Malformed { version: 2, source })?;
        Ok(IntakeRecord {
            pipeline: record.pipeline,
            events: record
                .events
                .into_iter()
                .map(|e| Event {
                    id: e.id,
                    time_ms: e.time_ms,
                    received_ms: e.received_ms,
                    payload: e.payload,
                    event_type: e.event_type,
                })
                .collect(),
        })
    }
}

impl IntakeRecord {
    /// Encodes `events` of `pipeline` in the oldest version that holds them: 2 when an event
    /// names a type of its own, else 1.
    pub fn encode_parts(pipeline: &str, events: &[Event]) -> Vec<u8> {
        // Sized up front: a 1000-event record would otherwise be copied by a dozen regrowths.
        let mut out = Vec::with_capacity(encoded_len_bound(pipeline, events));
        if events.iter().any(|e| e.event_type.is_some()) {
            out.extend_from_slice(&[VERSIONED, 2]);
            postcard::to_extend(&v2::RecordRef { pipeline, events: v2::EventsRef(events) }, out)
        } else {
            out.extend_from_slice(&[VERSIONED, 1]);
            postcard::to_extend(&v1::RecordRef { pipeline, events: v1::EventsRef(events) }, out)
        }
        .expect("strings and integers always encode")
    }

    pub fn encode(&self) -> Vec<u8> {
        Self::encode_parts(&self.pipeline, &self.events)
    }

    /// Decodes a record of any version this release knows.
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        match bytes {
            [VERSIONED, 1, body @ ..] => v1::decode(body, 1),
            [VERSIONED, 2, body @ ..] => v2::decode(body),
            [VERSIONED, version, ..] => Err(RecordError::UnknownVersion(*version)),
            [VERSIONED] => Err(RecordError::UnknownVersion(0)),
            // Version 0: the untagged body of the first releases, laid out as version 1's.
            body => v1::decode(body, 0),
        }
    }
}

/// At least the encoded length: the tag, each string with its varint length (at most 5 bytes
/// for any length below 4 GiB), each i64 as a zigzag varint (at most 10 bytes) and each option's
/// tag.
fn encoded_len_bound(pipeline: &str, events: &[Event]) -> usize {
    2 + 5
        + pipeline.len()
        + 5
        + events
            .iter()
            .map(|e| {
                5 + e.id.len() + 10 + 10 + 5 + e.payload.len() + 1 + e.event_type.as_ref().map_or(0, |t| 5 + t.len())
            })
            .sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> IntakeRecord {
        let event = |id: &str, time_ms: i64| Event {
            id: id.to_owned(),
            time_ms,
            received_ms: i64::MAX,
            payload: format!(r#"{{"id":"{id}","pad":"{}"}}"#, "x".repeat(300)),
            event_type: None,
        };
        IntakeRecord {
            pipeline: "orders".into(),
            events: vec![event("a", 0), event(&"é".repeat(128), i64::MIN), event("c", 1_763_900_000_000)],
        }
    }

    #[test]
    fn round_trips_within_its_size_bound() {
        let record = sample();
        let bytes = record.encode();
        let bound = encoded_len_bound(&record.pipeline, &record.events);
        assert!(bytes.len() <= bound, "{} > {bound}", bytes.len());
        assert_eq!(&bytes[..2], &[VERSIONED, 1], "no event names a type: the version every release reads");
        assert_eq!(IntakeRecord::decode(&bytes).unwrap(), record);
    }

    #[test]
    fn events_with_types_of_their_own_take_version_2() {
        let mut record = sample();
        record.events[1].event_type = Some("pull_request".into());
        let bytes = record.encode();
        assert!(bytes.len() <= encoded_len_bound(&record.pipeline, &record.events));
        assert_eq!(&bytes[..2], &[VERSIONED, CURRENT_VERSION]);
        assert_eq!(IntakeRecord::decode(&bytes).unwrap(), record);
    }

    #[test]
    fn the_untagged_version_0_body_decodes() {
        let record = sample();
        let bytes = record.encode();
        assert_eq!(IntakeRecord::decode(&bytes[2..]).unwrap(), record);
    }

    #[test]
    fn an_unknown_version_is_refused_not_guessed() {
        let mut bytes = sample().encode();
        bytes[1] = 9;
        assert!(matches!(IntakeRecord::decode(&bytes), Err(RecordError::UnknownVersion(9))));
        assert!(matches!(IntakeRecord::decode(&[VERSIONED]), Err(RecordError::UnknownVersion(_))));
        assert!(matches!(IntakeRecord::decode(&[]), Err(RecordError::Malformed { version: 0, .. })));
    }
}
