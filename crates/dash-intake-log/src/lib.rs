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
//! one request, so a torn write loses a whole unacknowledged request and never part of one. On
//! open, the newest segment is scanned and cut at the first frame that fails its checksum.
//!
//! **Architecture invariant:** the log knows nothing of events or pipelines; payloads are bytes.

mod reader;
mod segment;
mod writer;

use std::io;
use std::path::{Path, PathBuf};

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
}

/// What opening found.
#[derive(Debug, Clone, Copy)]
pub struct Recovery {
    /// Where the consumer resumes.
    pub checkpoint: Checkpoint,
    /// End of the valid log: everything before it is durable.
    pub end: u64,
    /// Bytes cut from a torn tail.
    pub truncated_bytes: u64,
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
    let checkpoints = CheckpointStore { dir: dir.to_path_buf() };
    let mut bases = segment::list(dir)?;
    let stored = checkpoints.load();
    if bases.is_empty() {
        let base = stored.map_or(0, |c| c.position);
        segment::create(dir, base)?;
        bases.push(base);
    }
    let last = *bases.last().expect("at least one segment");
    let scan = segment::scan_and_repair(dir, last)?;
    let end = last + scan.valid_len;
    if scan.truncated_bytes > 0 {
        tracing::warn!(segment = last, cut_bytes = scan.truncated_bytes, "intake log: torn tail cut");
    }

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
    let (appender, writer) = writer::start(dir.to_path_buf(), last, scan.valid_len, options, durable_tx)?;
    let reader = LogReader::new(dir.to_path_buf(), checkpoint.position, durable_rx);
    Ok(OpenedLog {
        appender,
        writer,
        reader,
        checkpoints,
        recovery: Recovery { checkpoint, end, truncated_bytes: scan.truncated_bytes },
    })
}

/// Persists the consumer's checkpoint and deletes segments wholly behind it.
///
/// The checkpoint is replaced by rename without fsync: losing it to a power cut only means
/// replaying a little more, which the store's dedupe index absorbs.
#[derive(Clone)]
pub struct CheckpointStore {
    dir: PathBuf,
}

impl CheckpointStore {
    fn path(&self) -> PathBuf {
        self.dir.join("checkpoint")
    }

    fn load(&self) -> Option<Checkpoint> {
        let bytes = std::fs::read(self.path()).ok()?;
        if bytes.len() != 16 {
            return None;
        }
        let crc = u32::from_le_bytes(bytes[12..16].try_into().ok()?);
        if crc32c::crc32c(&bytes[..12]) != crc {
            return None;
        }
        Some(Checkpoint {
            position: u64::from_le_bytes(bytes[0..8].try_into().ok()?),
            skip: u32::from_le_bytes(bytes[8..12].try_into().ok()?),
        })
    }

    /// Records `checkpoint`; returns the bytes of segments deleted.
    pub fn commit(&self, checkpoint: Checkpoint) -> Result<u64, LogError> {
        let mut bytes = Vec::with_capacity(16);
        bytes.extend_from_slice(&checkpoint.position.to_le_bytes());
        bytes.extend_from_slice(&checkpoint.skip.to_le_bytes());
        bytes.extend_from_slice(&crc32c::crc32c(&bytes).to_le_bytes());
        let tmp = self.dir.join("checkpoint.tmp");
        std::fs::write(&tmp, &bytes)?;
        std::fs::rename(&tmp, self.path())?;

        let bases = segment::list(&self.dir)?;
        let mut freed = 0;
        for pair in bases.windows(2) {
            let (base, next_base) = (pair[0], pair[1]);
            if next_base <= checkpoint.position {
                freed += next_base - base;
                std::fs::remove_file(segment::path(&self.dir, base))?;
            }
        }
        Ok(freed)
    }
}

#[cfg(test)]
mod tests;
