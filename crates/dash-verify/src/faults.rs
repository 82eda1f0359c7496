//! The fault schedule: drawn from a seed, so that a run can be replayed fault for fault.

use std::fmt;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What a fault does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// kill -9 one node, then start it again on the same address and data.
    Kill,
    /// SIGSTOP one node (a process that hangs: connections stay open, nothing answers), then
    /// SIGCONT.
    Pause,
    /// Stop the database as a crash does (no checkpoint), then start it again.
    Database,
    /// kill -9 the bus (nats-server), then start it again on the same port.
    Bus,
    /// Fill the disk under an ingestor's data (its own tmpfs; needs root), then free it.
    Disk,
    /// Fill the database's disk (its data on a tmpfs; needs root), then give the room back (and
    /// start PostgreSQL again if it stopped).
    DatabaseDisk,
    /// Swap one node's release (`--previous-binary` ↔ this one): stopped with SIGTERM (its log
    /// drained) or killed -9 (its log as it was), then started on the other release with the
    /// same data. The cluster starts on the previous release, so nodes go both ways.
    Upgrade,
    /// Partition the network (the cluster in network namespaces; needs root): packets vanish
    /// and no connection is told, until the partition heals. The shape is drawn: see [`Cut`].
    Partition,
}

/// The shape of a [`FaultKind::Partition`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cut {
    /// One web edge from every ingestor (it still reaches the database, the bus and senders).
    EdgeFromIngestors,
    /// One ingestor from the database and the bus (it still takes webhooks from the edges).
    IngestorFromCore,
    /// The two regions from each other: `fra` (ingestor-b, web-b) from `ams` (ingestor-a, web-a,
    /// the database and the bus).
    Regions,
    /// One node's cable pulled: nothing reaches it, and it reaches nothing.
    Cable,
}

impl Cut {
    const ALL: [Cut; 4] = [Cut::EdgeFromIngestors, Cut::IngestorFromCore, Cut::Regions, Cut::Cable];
}

impl FaultKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Kill => "kill",
            Self::Pause => "pause",
            Self::Database => "database",
            Self::Bus => "bus",
            Self::Disk => "disk",
            Self::DatabaseDisk => "database-disk",
            Self::Upgrade => "upgrade",
            Self::Partition => "partition",
        }
    }
}

/// One fault of a schedule.
#[derive(Debug, Clone)]
pub struct Fault {
    pub kind: FaultKind,
    /// Which node ([`FaultKind::Kill`], [`FaultKind::Pause`]), as an index into the cluster's nodes.
    pub node: usize,
    /// A partition's shape (`None` for the other kinds).
    pub cut: Option<Cut>,
    /// An upgrade that stops the node with SIGTERM rather than kill -9.
    pub graceful: bool,
    /// How long the fault lasts before it is healed.
    pub hold: Duration,
    /// The quiet time before it.
    pub gap: Duration,
}

/// `count` faults of `kinds` over `nodes` nodes, the same for the same seed. The first
/// `ingestors` nodes are the ingestors, the rest web edges: a [`FaultKind::Disk`] fault falls on
/// an ingestor, and so does a partition of an ingestor from the core; an edge's partition from
/// the ingestors falls on an edge.
pub fn schedule(seed: u64, count: usize, kinds: &[FaultKind], nodes: usize, ingestors: usize) -> Vec<Fault> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..count)
        .map(|_| {
            let kind = kinds[rng.random_range(0..kinds.len())];
            let cut = (kind == FaultKind::Partition).then(|| Cut::ALL[rng.random_range(0..Cut::ALL.len())]);
            let graceful = kind == FaultKind::Upgrade && rng.random_bool(0.5);
            let node = match (kind, cut) {
                (FaultKind::Disk, _) | (_, Some(Cut::IngestorFromCore)) => rng.random_range(0..ingestors),
                (_, Some(Cut::EdgeFromIngestors)) => rng.random_range(ingestors..nodes),
                _ => rng.random_range(0..nodes),
            };
            let hold_ms = match kind {
                FaultKind::Kill => rng.random_range(0..2_000),
                FaultKind::Pause => rng.random_range(200..3_000),
                FaultKind::Database => rng.random_range(500..4_000),
                FaultKind::Bus => rng.random_range(200..3_000),
                FaultKind::Disk => rng.random_range(500..4_000),
                FaultKind::DatabaseDisk => rng.random_range(500..6_000),
                FaultKind::Upgrade => rng.random_range(0..1_000),
                // Long enough, at the top, to outlast the edge's forward bound and the
                // membership's down-after, so that what hangs shows; one in six (drawn from
                // the same number, so other faults of a seed do not move) outlasts a database
                // batch's deadline too (15 s).
                FaultKind::Partition => match rng.random_range(500..12_000) {
                    long if long % 6 == 0 => 16_000 + long,
                    hold => hold,
                },
            };
            let gap_ms = rng.random_range(200..1_500);
            Fault {
                kind,
                node,
                cut,
                graceful,
                hold: Duration::from_millis(hold_ms),
                gap: Duration::from_millis(gap_ms),
            }
        })
        .collect()
}

/// A fault as the report says it, given the name of the node it targets.
pub(crate) struct Described<'a>(pub &'a Fault, pub &'a str);

impl fmt::Display for Described<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Described(fault, node) = self;
        let hold = fault.hold.as_secs_f64();
        match fault.kind {
            FaultKind::Kill => write!(f, "kill -9 {node}, restarted after {hold:.1} s"),
            FaultKind::Pause => write!(f, "SIGSTOP {node} for {hold:.1} s"),
            FaultKind::Database => write!(f, "database crashed for {hold:.1} s"),
            FaultKind::Bus => write!(f, "bus killed for {hold:.1} s"),
            FaultKind::Disk => write!(f, "disk of {node} full for {hold:.1} s"),
            FaultKind::DatabaseDisk => write!(f, "database disk full for {hold:.1} s"),
            FaultKind::Upgrade => {
                let stop = if fault.graceful { "stopped (SIGTERM)" } else { "killed -9" };
                write!(f, "{node} {stop} and started on the other release after {hold:.1} s")
            }
            FaultKind::Partition => match fault.cut {
                Some(Cut::EdgeFromIngestors) => write!(f, "{node} cut from the ingestors for {hold:.1} s"),
                Some(Cut::IngestorFromCore) => write!(f, "{node} cut from the database and bus for {hold:.1} s"),
                Some(Cut::Regions) => write!(f, "regions ams and fra cut apart for {hold:.1} s"),
                Some(Cut::Cable) | None => write!(f, "cable of {node} pulled for {hold:.1} s"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_the_same_schedule() {
        let kinds = [
            FaultKind::Kill,
            FaultKind::Pause,
            FaultKind::Database,
            FaultKind::Bus,
            FaultKind::Disk,
            FaultKind::DatabaseDisk,
            FaultKind::Upgrade,
            FaultKind::Partition,
        ];
        let a = schedule(7, 80, &kinds, 4, 2);
        let b = schedule(7, 80, &kinds, 4, 2);
        let key =
            |s: &[Fault]| s.iter().map(|f| (f.kind, f.node, f.cut, f.graceful, f.hold, f.gap)).collect::<Vec<_>>();
        assert_eq!(key(&a), key(&b));
        assert_ne!(key(&a), key(&schedule(8, 80, &kinds, 4, 2)));
        assert!(a.iter().filter(|f| f.kind == FaultKind::Disk).all(|f| f.node < 2), "a full disk is an ingestor's");
        assert!(kinds.iter().all(|k| a.iter().any(|f| f.kind == *k)), "every kind drawn in 80");
        let cuts: Vec<(Cut, usize)> = a.iter().filter_map(|f| f.cut.map(|c| (c, f.node))).collect();
        assert!(cuts.iter().all(|(c, n)| match c {
            Cut::IngestorFromCore => *n < 2,
            Cut::EdgeFromIngestors => *n >= 2,
            _ => true,
        }));
        assert!(a.iter().all(|f| f.cut.is_some() == (f.kind == FaultKind::Partition)));
    }
}
