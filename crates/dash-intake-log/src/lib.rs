//! The intake log: what makes a 202 true.
//!
//! One log per buffer partition, in its own directory. Appends from any number of requests go to
//! one writer thread, which writes everything queued, calls `fdatasync` once and then answers
//! them all (group commit). The consumer (a buffer actor) tails the log by position and, after
//! its batch is committed to the store, records a [`Checkpoint`]; segments wholly behind the
//! checkpoint are deleted.
//!
//! On disk: segment files `<base position, 20 digits>.log`, each a run of frames
//! `[len u32 LE][crc32c(len ‖ payload) u32 LE][payload]`, and a `checkpoint` file. A frame is
//! one request, so a torn write loses a whole unacknowledged request and never part of one.
//!
//! On open, the newest segment is scanned and cut after its last whole frame. What is cut is
//! either a write cut short (a header promising more than was written, or zeros: never
//! acknowledged, because a request is answered only after its frame is fsync'd), or damage to
//! acknowledged frames (whole frames failing their checksum), which is copied to the
//! [`Quarantine`] first and reported. Damage in the middle of a segment is found by the reader,
//! which copies the segment to the quarantine and resumes at the next whole frame
//! ([`LogReader::skip_damage`]). Nothing damaged is deleted unseen.
//!
//! **Architecture invariant:** the log knows nothing of events or pipelines; payloads are bytes.

mod quarantine;
mod reader;
mod segment;
mod writer;

use parking_lot::Mutex;
use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

pub use quarantine::{Damage, Quarantine, QuarantineSummary};
pub use reader::{Frame, LogReader};
pub use writer::{Appender, WriterThread};

use tokio::sync::watch;

/// Frames larger than this are refused (a request body is far smaller).
pub const MAX_FRAME: usize = 256 * 1024 * 1024;
/// Bytes of frame header before each payload.
pub const FRAME_HEADER: u64 = 8;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("intake log i/o: {0}")]
    Io(#[from] io::Error),
    #[error("intake log is closed")]
    Closed,
    #[error("intake log frame at position {position} fails its checksum")]
    Corrupt { position: u64 },
    #[error("frame of {0} bytes is larger than the log accepts")]
    TooLarge(usize),
}

/// How far the consumer has got: the frame at `position`, of which the first `skip` items
/// were already committed (a frame can be split across two store batches).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Checkpoint {
    pub position: u64,
    pub skip: u32,
}

#[derive(Debug, Clone)]
pub struct LogOptions {
    /// A segment is closed and a new one begun past this size.
    pub segment_bytes: u64,
    /// Where damaged segments are copied before the log moves past them.
    pub quarantine: Quarantine,
}

/// What opening found.
#[derive(Debug, Clone)]
pub struct Recovery {
    /// Where the consumer resumes.
    pub checkpoint: Checkpoint,
    /// End of the valid log: everything before it is durable.
    pub end: u64,
    /// Bytes cut from a write cut short (never acknowledged).
    pub torn_bytes: u64,
    /// Whole frames at the tail that failed their checksum: acknowledged data, cut after a copy
    /// was kept.
    pub tail_damage: Option<Damage>,
}

/// Notes appenders gave frames in this process, by position; pruned behind the checkpoint.
pub(crate) type Notes = Arc<Mutex<BTreeMap<u64, u32>>>;

/// A log's name: its directory's last component.
pub(crate) fn log_name(dir: &Path) -> String {
    dir.file_name().and_then(|n| n.to_str()).unwrap_or("log").to_owned()
}

/// An opened partition log: the writer's handle, the consumer's reader and what recovery found.
pub struct OpenedLog {
    pub appender: Appender,
    pub writer: WriterThread,
    pub reader: LogReader,
    pub checkpoints: CheckpointStore,
    pub recovery: Recovery,
}

/// Opens (creating if needed) the log in `dir`, cuts a torn tail, and starts its writer thread.
pub fn open(dir: &Path, options: LogOptions) -> Result<OpenedLog, LogError> {
    std::fs::create_dir_all(dir)?;
    let segments: Segments = Arc::default();
    let notes: Notes = Arc::default();
    let (checkpoints, stored) = CheckpointStore::open(dir, segments.clone(), notes.clone())?;
    let mut bases = segment::list(dir)?;
    if bases.is_empty() {
        let base = stored.map_or(0, |c| c.position);
        segment::create(dir, base)?;
        bases.push(base);
    }
    let last = *bases.last().expect("at least one segment");
    let mut kept = None;
    let scan = segment::scan_and_repair(dir, last, |segment, offset, bytes| {
        kept = Some(options.quarantine.keep_segment(&log_name(dir), segment, last + offset, bytes)?);
        Ok(())
    })?;
    let end = last + scan.valid_len;
    // Frames of a log just opened carry no notes.
    let tail_damage =
        kept.map(|kept_as| Damage { position: end, bytes: scan.damaged_bytes, kept_as: Some(kept_as), noted: 0 });

    let first = bases[0];
    let checkpoint = match stored {
        Some(c) if c.position >= first && c.position <= end => c,
        Some(c) if c.position > end => {
            tracing::warn!(checkpoint = c.position, end, "intake log: checkpoint beyond end, clamped");
            Checkpoint { position: end, skip: 0 }
        }
        _ => Checkpoint { position: first, skip: 0 },
    };

    let (durable_tx, durable_rx) = watch::channel(end);
    segments.lock().extend(&bases);
    let quarantine = options.quarantine.clone();
    let (appender, writer) =
        writer::start(dir.to_path_buf(), last, scan.valid_len, options, durable_tx, segments, notes.clone())?;
    let reader = LogReader::new(dir.to_path_buf(), checkpoint.position, durable_rx, notes, quarantine);
    Ok(OpenedLog {
        appender,
        writer,
        reader,
        checkpoints,
        recovery: Recovery { checkpoint, end, torn_bytes: scan.torn_bytes, tail_damage },
    })
}

/// Persists the consumer's checkpoint and deletes segments wholly behind it.
///
/// The `checkpoint` file holds two slots, each `[generation u64][position u64][skip u32]
/// [crc32c u32]` (little-endian); a commit overwrites the older slot in place and opening takes
/// the valid slot of the higher generation, so a torn write leaves the other one standing.
/// There is no fsync: losing a checkpoint to a power cut only means replaying a little more,
/// which the store's dedupe index absorbs. The live segments are known from opening and from
/// the writer's rolls, so a commit deletes segments without listing the directory.
#[derive(Clone)]
pub struct CheckpointStore {
    dir: Arc<Path>,
    inner: Arc<Mutex<CheckpointFile>>,
    segments: Segments,
    notes: Notes,
}

/// Bases of the segments on disk, oldest first: the writer adds, the checkpoint store removes.
pub(crate) type Segments = Arc<Mutex<VecDeque<u64>>>;

struct CheckpointFile {
    file: File,
    /// Generation of the newest slot written.
    generation: u64,
}

const SLOT: usize = 24;
const CHECKPOINT_FILE: &str = "checkpoint";

impl CheckpointStore {
    /// Opens (creating, or rewriting from the earlier one-record format) the checkpoint file and
    /// returns the checkpoint it holds.
    fn open(dir: &Path, segments: Segments, notes: Notes) -> Result<(Self, Option<Checkpoint>), LogError> {
        let path = dir.join(CHECKPOINT_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(err) => return Err(err.into()),
        };
        let (generation, stored) = match bytes.len() {
            len if len == 2 * SLOT => {
                let newest = bytes.chunks_exact(SLOT).filter_map(decode_slot).max_by_key(|(generation, _)| *generation);
                newest.map_or((0, None), |(generation, checkpoint)| (generation, Some(checkpoint)))
            }
            16 => (0, decode_single(&bytes)),
            _ => (0, None),
        };
        if bytes.len() != 2 * SLOT {
            // First open, or the one-record file: lay out both slots once, atomically.
            let mut fresh = vec![0u8; 2 * SLOT];
            if let Some(checkpoint) = stored {
                fresh[..SLOT].copy_from_slice(&encode_slot(generation, checkpoint));
            }
            let tmp = dir.join("checkpoint.tmp");
            std::fs::write(&tmp, &fresh)?;
            std::fs::rename(&tmp, &path)?;
        }
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let inner = Arc::new(Mutex::new(CheckpointFile { file, generation }));
        Ok((Self { dir: Arc::from(dir), inner, segments, notes }, stored))
    }

    /// Records `checkpoint`; returns the bytes of segments deleted.
    pub fn commit(&self, checkpoint: Checkpoint) -> Result<u64, LogError> {
        {
            let mut inner = self.inner.lock();
            inner.generation += 1;
            let slot = encode_slot(inner.generation, checkpoint);
            let offset = (inner.generation % 2) * SLOT as u64;
            inner.file.write_all_at(&slot, offset)?;
        }
        {
            let mut notes = self.notes.lock();
            let ahead = notes.split_off(&checkpoint.position);
            *notes = ahead;
        }
        let mut freed = 0;
        loop {
            let (base, next_base) = {
                let segments = self.segments.lock();
                match (segments.front(), segments.get(1)) {
                    (Some(&base), Some(&next_base)) if next_base <= checkpoint.position => (base, next_base),
                    _ => break,
                }
            };
            match std::fs::remove_file(segment::path(&self.dir, base)) {
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => return Err(err.into()),
            }
            self.segments.lock().pop_front();
            freed += next_base - base;
        }
        Ok(freed)
    }
}

fn encode_slot(generation: u64, checkpoint: Checkpoint) -> [u8; SLOT] {
    let mut slot = [0u8; SLOT];
    slot[0..8].copy_from_slice(&generation.to_le_bytes());
    slot[8..16].copy_from_slice(&checkpoint.position.to_le_bytes());
    slot[16..20].copy_from_slice(&checkpoint.skip.to_le_bytes());
    let crc = crc32c::crc32c(&slot[..20]);
    slot[20..24].copy_from_slice(&crc.to_le_bytes());
    slot
}

fn decode_slot(slot: &[u8]) -> Option<(u64, Checkpoint)> {
    let crc = u32::from_le_bytes(slot[20..24].try_into().ok()?);
    if crc32c::crc32c(&slot[..20]) != crc {
        return None;
    }
    let generation = u64::from_le_bytes(slot[0..8].try_into().ok()?);
    let position = u64::from_le_bytes(slot[8..16].try_into().ok()?);
    let skip = u32::from_le_bytes(slot[16..20].try_into().ok()?);
    Some((generation, Checkpoint { position, skip }))
}

/// The one-record file of earlier versions: `[position u64][skip u32][crc32c u32]`.
fn decode_single(bytes: &[u8]) -> Option<Checkpoint> {
    let crc = u32::from_le_bytes(bytes[12..16].try_into().ok()?);
    if crc32c::crc32c(&bytes[..12]) != crc {
        return None;
    }
    Some(Checkpoint {
        position: u64::from_le_bytes(bytes[0..8].try_into().ok()?),
        skip: u32::from_le_bytes(bytes[8..12].try_into().ok()?),
    })
}

#[cfg(test)]
mod tests;
