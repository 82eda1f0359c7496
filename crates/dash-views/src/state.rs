//! A view's state for one group and one minute: mergeable, so coarser buckets, ranges and
//! totals are merges of minutes, and a batch's changes merge into what is stored.

use cardinality_estimator::CardinalityEstimator;
use serde::{Deserialize, Serialize};
use sketches_ddsketch::{Config, DDSketch};

use crate::spec::Aggregate;

/// The relative error of percentiles (DDSketch, α = 1 %): a reported p95 of 200 ms means the
/// true p95 lies within 198–202 ms.
pub const QUANTILE_RELATIVE_ERROR: f64 = 0.01;
/// The standard error of `distinct` once it exceeds a few hundred values (HyperLogLog with 2¹²
/// registers: 1.04/√4096); below that it is counted exactly, up to hash collisions.
pub const DISTINCT_ERROR: f64 = 0.0163;

/// Format of stored states; a state of another version is refused, never guessed at. A state
/// of a later version (written by a newer release during a rolling upgrade) is told apart from
/// a damaged one ([`UnreadableState::Newer`]), so it can be left alone rather than dropped.
pub const STATE_VERSION: u8 = 1;

/// What one group's events of one minute (or of any merged span) add up to.
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    /// Events counted (that passed the filter and had a usable field).
    pub n: u64,
    /// Events that passed the filter but whose field was missing or (for numeric aggregates)
    /// not a number.
    pub skipped: u64,
    pub acc: Accumulator,
}

/// The aggregate-specific part of a [`Cell`].
#[derive(Clone, Serialize, Deserialize)]
pub enum Accumulator {
    Count,
    Sum(f64),
    Min(f64),
    Max(f64),
    Distinct(Box<CardinalityEstimator<str>>),
    Quantiles(Box<DDSketch>),
}

impl std::fmt::Debug for Accumulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Count => write!(f, "Count"),
            Self::Sum(s) => write!(f, "Sum({s})"),
            Self::Min(v) => write!(f, "Min({v})"),
            Self::Max(v) => write!(f, "Max({v})"),
            Self::Distinct(e) => write!(f, "Distinct(~{})", e.estimate()),
            Self::Quantiles(s) => write!(f, "Quantiles({} values)", s.count()),
        }
    }
}

impl PartialEq for Accumulator {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Count, Self::Count) => true,
            (Self::Sum(a), Self::Sum(b)) | (Self::Min(a), Self::Min(b)) | (Self::Max(a), Self::Max(b)) => {
                a.to_bits() == b.to_bits()
            }
            (Self::Distinct(a), Self::Distinct(b)) => a == b,
            (Self::Quantiles(a), Self::Quantiles(b)) => postcard::to_allocvec(a).ok() == postcard::to_allocvec(b).ok(),
            _ => false,
        }
    }
}

/// What a view reads from one event: the value it counts, or why it skips the event.
#[derive(Debug, Clone, PartialEq)]
pub enum Input<'a> {
    /// `count`: the event (and its field, if one is named) is there.
    Present,
    Number(f64),
    /// `distinct`: the value's JSON text (a string's own text).
    Text(std::borrow::Cow<'a, str>),
    Skipped,
}

#[derive(Serialize, Deserialize)]
struct Stored {
    n: u64,
    skipped: u64,
    acc: Accumulator,
}

/// A stored state could not be read.
#[derive(Debug, thiserror::Error)]
pub enum UnreadableState {
    /// Written in a later format than this release knows.
    #[error("a stored view state is of format {0}, newer than this release reads ({STATE_VERSION})")]
    Newer(u8),
    #[error("a stored view state is unreadable: {0}")]
    Damaged(String),
}

impl Cell {
    pub fn empty(aggregate: Aggregate) -> Self {
        let acc = match aggregate {
            Aggregate::Count => Accumulator::Count,
            Aggregate::Sum | Aggregate::Avg => Accumulator::Sum(0.0),
            Aggregate::Min => Accumulator::Min(f64::INFINITY),
            Aggregate::Max => Accumulator::Max(f64::NEG_INFINITY),
            Aggregate::Distinct => Accumulator::Distinct(Box::default()),
            Aggregate::P50 | Aggregate::P90 | Aggregate::P95 | Aggregate::P99 => {
                Accumulator::Quantiles(Box::new(DDSketch::new(Config::defaults())))
            }
        };
        Self { n: 0, skipped: 0, acc }
    }

    /// Counts one event's input.
    pub fn add(&mut self, input: &Input<'_>) {
        match (input, &mut self.acc) {
            (Input::Skipped, _) => {
                self.skipped += 1;
                return;
            }
            (Input::Present, Accumulator::Count) => {}
            (Input::Number(v), Accumulator::Sum(sum)) => *sum += v,
            (Input::Number(v), Accumulator::Min(min)) => *min = min.min(*v),
            (Input::Number(v), Accumulator::Max(max)) => *max = max.max(*v),
            (Input::Number(v), Accumulator::Quantiles(sketch)) => sketch.add(*v),
            (Input::Text(text), Accumulator::Distinct(estimator)) => estimator.insert(text),
            // An input of another kind than the view reads cannot come from `extract`.
            _ => {
                self.skipped += 1;
                return;
            }
        }
        self.n += 1;
    }

    /// Adds `other` (of the same aggregate) into this one.
    pub fn merge(&mut self, other: &Cell) {
        self.n += other.n;
        self.skipped += other.skipped;
        match (&mut self.acc, &other.acc) {
            (Accumulator::Count, Accumulator::Count) => {}
            (Accumulator::Sum(a), Accumulator::Sum(b)) => *a += b,
            (Accumulator::Min(a), Accumulator::Min(b)) => *a = a.min(*b),
            (Accumulator::Max(a), Accumulator::Max(b)) => *a = a.max(*b),
            (Accumulator::Distinct(a), Accumulator::Distinct(b)) => a.merge(b),
            (Accumulator::Quantiles(a), Accumulator::Quantiles(b)) => {
                // Every sketch is made with the same config, so the merge cannot fail.
                let _ = a.merge(b);
            }
            _ => {}
        }
    }

    /// The view's value for what was counted; `None` when nothing was (an average, a minimum or
    /// a percentile of no values).
    pub fn value(&self, aggregate: Aggregate) -> Option<f64> {
        match (&self.acc, aggregate) {
            (Accumulator::Count, _) => Some(self.n as f64),
            (Accumulator::Sum(sum), Aggregate::Avg) => (self.n > 0).then(|| sum / self.n as f64),
            (Accumulator::Sum(sum), _) => Some(*sum),
            (Accumulator::Min(v), _) | (Accumulator::Max(v), _) => (self.n > 0).then_some(*v),
            (Accumulator::Distinct(estimator), _) => Some(estimator.estimate() as f64),
            (Accumulator::Quantiles(sketch), aggregate) => {
                sketch.quantile(aggregate.quantile().unwrap_or(0.5)).ok().flatten()
            }
        }
    }

    /// The stored form: a version byte, then postcard.
    pub fn encode(&self) -> Vec<u8> {
        let stored = Stored { n: self.n, skipped: self.skipped, acc: self.acc.clone() };
        let mut bytes = vec![STATE_VERSION];
        bytes.extend(postcard::to_allocvec(&stored).expect("a state always serializes"));
        bytes
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, UnreadableState> {
        match bytes.split_first() {
            Some((&STATE_VERSION, rest)) => {
                let stored: Stored = postcard::from_bytes(rest).map_err(|e| UnreadableState::Damaged(e.to_string()))?;
                Ok(Self { n: stored.n, skipped: stored.skipped, acc: stored.acc })
            }
            Some((&version, _)) if version > STATE_VERSION => Err(UnreadableState::Newer(version)),
            Some((version, _)) => Err(UnreadableState::Damaged(format!("state format {version} is not known"))),
            None => Err(UnreadableState::Damaged("empty".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_aggregate_round_trips_and_merges() {
        for aggregate in Aggregate::ALL {
            let mut a = Cell::empty(aggregate);
            let mut b = Cell::empty(aggregate);
            let mut whole = Cell::empty(aggregate);
            for i in 0..2000u32 {
                let input = match aggregate {
                    Aggregate::Count => Input::Present,
                    Aggregate::Distinct => Input::Text(format!("c{}", i % 700).into()),
                    _ => Input::Number(f64::from(i) - 100.0),
                };
                if i % 3 == 0 { &mut a } else { &mut b }.add(&input);
                whole.add(&input);
            }
            a.add(&Input::Skipped);
            whole.add(&Input::Skipped);
            let decoded = Cell::decode(&a.encode()).unwrap();
            assert_eq!(decoded, a, "{aggregate:?}");
            let mut merged = decoded;
            merged.merge(&b);
            assert_eq!(merged.n, whole.n);
            assert_eq!(merged.skipped, 1);
            let (got, want) = (merged.value(aggregate).unwrap(), whole.value(aggregate).unwrap());
            assert!((got - want).abs() <= want.abs() * 1e-9 + 1e-9, "{aggregate:?}: {got} vs {want}");
        }
    }

    #[test]
    fn empty_states_have_no_value_but_counts() {
        assert_eq!(Cell::empty(Aggregate::Count).value(Aggregate::Count), Some(0.0));
        assert_eq!(Cell::empty(Aggregate::Sum).value(Aggregate::Sum), Some(0.0));
        for aggregate in [Aggregate::Avg, Aggregate::Min, Aggregate::Max, Aggregate::P99] {
            assert_eq!(Cell::empty(aggregate).value(aggregate), None, "{aggregate:?}");
        }
        assert!(matches!(Cell::decode(&[9, 1, 2]), Err(UnreadableState::Newer(9))));
        assert!(matches!(Cell::decode(&[0, 1, 2]), Err(UnreadableState::Damaged(_))));
        assert!(matches!(Cell::decode(&[STATE_VERSION, 0xff]), Err(UnreadableState::Damaged(_))));
        assert!(matches!(Cell::decode(&[]), Err(UnreadableState::Damaged(_))));
    }

    #[test]
    fn percentiles_are_within_their_stated_error() {
        let mut cell = Cell::empty(Aggregate::P95);
        for i in 1..=10_000 {
            cell.add(&Input::Number(f64::from(i)));
        }
        let p95 = cell.value(Aggregate::P95).unwrap();
        assert!((p95 - 9500.0).abs() <= 9500.0 * QUANTILE_RELATIVE_ERROR * 1.01, "{p95}");
    }

    #[test]
    fn distinct_is_within_its_stated_error() {
        let mut cell = Cell::empty(Aggregate::Distinct);
        for i in 0..100_000 {
            cell.add(&Input::Text(format!("customer-{i}").into()));
        }
        let estimate = cell.value(Aggregate::Distinct).unwrap();
        assert!((estimate - 100_000.0).abs() <= 100_000.0 * DISTINCT_ERROR * 3.0, "{estimate}");
        assert!(cell.encode().len() < 8 * 1024, "an HLL state stays small: {}", cell.encode().len());
    }
}
