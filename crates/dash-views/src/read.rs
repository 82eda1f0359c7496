//! From stored minutes to what people read: a series of buckets, and groups ranked.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::spec::Aggregate;
use crate::state::Cell;

/// One bucket of a view's series.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ViewPoint {
    /// Bucket start, unix ms.
    pub t: i64,
    /// `None` when nothing was counted (the average of no values, say).
    pub value: Option<f64>,
    /// Events counted.
    pub n: u64,
    /// Events whose field was missing or not a number.
    pub skipped: u64,
}

/// One group over a range.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupTotal {
    pub group: String,
    pub value: Option<f64>,
    pub n: u64,
    pub skipped: u64,
    /// This group's part of the total: of the value for `count` and `sum`, of the events
    /// counted for the other aggregates.
    pub share: f64,
}

/// Merges stored minutes `(minute, cell)` into dense buckets of `bucket_ms` over `[from, to)`.
pub fn bucket(aggregate: Aggregate, from: i64, to: i64, bucket_ms: i64, minutes: &[(i64, Cell)]) -> Vec<ViewPoint> {
    let mut cells: BTreeMap<i64, Cell> = BTreeMap::new();
    for (minute, cell) in minutes {
        if *minute < from || *minute >= to {
            continue;
        }
        let t = from + (minute - from) / bucket_ms * bucket_ms;
        cells.entry(t).or_insert_with(|| Cell::empty(aggregate)).merge(cell);
    }
    let mut points = Vec::new();
    let mut t = from;
    while t < to {
        let point = match cells.get(&t) {
            Some(cell) => ViewPoint { t, value: cell.value(aggregate), n: cell.n, skipped: cell.skipped },
            None => ViewPoint { t, value: Cell::empty(aggregate).value(aggregate), n: 0, skipped: 0 },
        };
        points.push(point);
        t = t.saturating_add(bucket_ms);
    }
    points
}

/// Every group over a range, largest first (by value, then by events counted, then by name).
pub fn rank_groups(aggregate: Aggregate, cells: HashMap<String, Cell>) -> Vec<GroupTotal> {
    let total_value: f64 =
        if aggregate.additive() { cells.values().filter_map(|c| c.value(aggregate)).sum() } else { 0.0 };
    let total_n: u64 = cells.values().map(|c| c.n).sum();
    let mut groups: Vec<GroupTotal> = cells
        .into_iter()
        .map(|(group, cell)| {
            let value = cell.value(aggregate);
            let share = if aggregate.additive() {
                if total_value != 0.0 { value.unwrap_or(0.0) / total_value } else { 0.0 }
            } else if total_n > 0 {
                cell.n as f64 / total_n as f64
            } else {
                0.0
            };
            GroupTotal { group, value, n: cell.n, skipped: cell.skipped, share }
        })
        .collect();
    groups.sort_by(|a, b| {
        let (va, vb) = (a.value.unwrap_or(f64::NEG_INFINITY), b.value.unwrap_or(f64::NEG_INFINITY));
        vb.total_cmp(&va).then(b.n.cmp(&a.n)).then_with(|| a.group.cmp(&b.group))
    });
    groups
}
