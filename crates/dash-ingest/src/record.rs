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
        postcard::to_allocvec(self).expect("strings and integers always encode")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, postcard::Error> {
        postcard::from_bytes(bytes)
    }
}
