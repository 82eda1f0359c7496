//! The intake log's payload: one accepted request.

use dash_domain::Event;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct IntakeRecord {
    pub pipeline: String,
    pub events: Vec<Event>,
}

impl IntakeRecord {
    pub fn encode(&self) -> Vec<u8> {
        // Sized up front: a 1000-event record would otherwise be copied by a dozen regrowths.
        postcard::to_extend(self, Vec::with_capacity(self.encoded_len_bound()))
            .expect("strings and integers always encode")
    }

    /// At least the encoded length: each string with its varint length (at most 5 bytes for
    /// any length below 4 GiB) and each i64 as a zigzag varint (at most 10 bytes).
    fn encoded_len_bound(&self) -> usize {
        5 + self.pipeline.len()
            + 5
            + self.events.iter().map(|e| 5 + e.id.len() + 10 + 10 + 5 + e.payload.len()).sum::<usize>()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, postcard::Error> {
        postcard::from_bytes(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_within_its_size_bound() {
        let event = |id: &str, time_ms: i64| Event {
            id: id.to_owned(),
            time_ms,
            received_ms: i64::MAX,
            payload: format!(r#"{{"id":"{id}","pad":"{}"}}"#, "x".repeat(300)),
        };
        let record = IntakeRecord {
            pipeline: "orders".into(),
            events: vec![event("a", 0), event(&"é".repeat(128), i64::MIN), event("c", 1_763_900_000_000)],
        };
        let bytes = record.encode();
        assert!(bytes.len() <= record.encoded_len_bound(), "{} > {}", bytes.len(), record.encoded_len_bound());
        assert_eq!(IntakeRecord::decode(&bytes).unwrap(), record);
    }
}
