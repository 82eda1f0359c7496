//! Views: live aggregates of what is inside a pipeline's events.
//!
//! A view ([`ViewSpec`]) aggregates one field (`count`, `sum`, `avg`, `min`, `max`, `distinct`,
//! percentiles) of a pipeline's events, optionally filtered and per group, one state ([`Cell`])
//! per group and minute. States merge, so a coarser bucket, a range or a total is a merge of
//! minutes, and a batch's changes ([`ViewChanges`]) merge into the stored states in the batch's
//! own transaction (see `dash-store`).
//!
//! **Architecture invariant:** this crate does no I/O. Given the same events in the same order
//! it computes the same states, which is what makes a view comparable with a computation from
//! scratch over the raw events.

mod compute;
mod explore;
mod read;
mod sparse;
mod spec;
mod state;

pub use compute::{
    BatchCounter, CountedView, GROUP_ALL, GROUP_NONE, GROUP_OTHER, Groups, MAX_GROUP_LEN, Pointer, ViewChanges,
    ViewReader, extract, minute_of, parse_payload,
};
pub use explore::{FieldStat, explore};
pub use read::{GroupTotal, ViewPoint, bucket, rank_groups};
pub use spec::{
    Aggregate, DEFAULT_MAX_GROUPS, EVENT_TYPE, InvalidView, MAX_GROUPS_LIMIT, MAX_VIEWS_PER_PIPELINE, ViewSpec,
    check_view_name,
};
pub use state::{Accumulator, Cell, DISTINCT_ERROR, Input, QUANTILE_RELATIVE_ERROR, STATE_VERSION, UnreadableState};
