//! Where damaged log data is kept instead of deleted.
//!
//! When a reader finds damage (a frame failing its checksum with frames after it, or a tail of
//! whole frames failing theirs), the whole segment is copied here before the log moves on, and a
//! line saying which bytes were skipped is added beside it. Nothing here is deleted by Dash: the
//! files stay until an operator has looked at them and removes them, and until then the node
//! reports itself degraded.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// One damaged stretch of a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// Log position of the first damaged byte.
    pub position: u64,
    /// Damaged bytes skipped (they held acknowledged requests).
    pub bytes: u64,
    /// Where the segment holding them was copied; `None` when the copy failed (the error was
    /// logged).
    pub kept_as: Option<PathBuf>,
    /// The sum of the notes of frames appended in this process that the stretch held (see
    /// [`crate::Appender::append_noted`]), so that what they counted can be given back.
    pub noted: u64,
}

/// The quarantine directory shared by the logs of one node.
#[derive(Debug, Clone)]
pub struct Quarantine {
    dir: PathBuf,
}

/// What the quarantine directory holds now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuarantineSummary {
    /// Segment copies and frames kept.
    pub files: usize,
    /// Their bytes.
    pub bytes: u64,
}

impl Quarantine {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Copies a damaged segment of the log `log` as it is now, under a name of its own (the
    /// segment and the damaged position), and records the damaged stretch beside it.
    pub(crate) fn keep_segment(&self, log: &str, segment: &Path, position: u64, bytes: u64) -> io::Result<PathBuf> {
        std::fs::create_dir_all(&self.dir)?;
        let stem = segment.file_stem().and_then(|n| n.to_str()).unwrap_or("segment");
        let kept_as = self.dir.join(format!("{log}-{stem}-at-{position:020}.log"));
        let partial = kept_as.with_extension("partial");
        std::fs::copy(segment, &partial)?;
        std::fs::rename(&partial, &kept_as)?;
        self.note(&kept_as, &format!("damaged position={position} bytes={bytes} found_ms={}\n", now_ms()))?;
        Ok(kept_as)
    }

    /// Keeps one frame that passed its checksum but that the consumer cannot read (a record of
    /// a version this release does not know, say), with why.
    pub fn keep_frame(&self, log: &str, position: u64, payload: &[u8], why: &str) -> io::Result<PathBuf> {
        std::fs::create_dir_all(&self.dir)?;
        let kept_as = self.dir.join(format!("{log}-{position:020}.frame"));
        std::fs::write(&kept_as, payload)?;
        self.note(
            &kept_as,
            &format!("unreadable position={position} bytes={} found_ms={} why={why}\n", payload.len(), now_ms()),
        )?;
        Ok(kept_as)
    }

    fn note(&self, kept_as: &Path, line: &str) -> io::Result<()> {
        let mut file = OpenOptions::new().create(true).append(true).open(kept_as.with_extension("damage"))?;
        file.write_all(line.as_bytes())?;
        file.sync_all()
    }

    /// Lists what is kept now (an operator may have removed files since).
    pub fn summary(&self) -> io::Result<QuarantineSummary> {
        let mut summary = QuarantineSummary::default();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(summary),
            Err(err) => return Err(err),
        };
        for entry in entries {
            let entry = entry?;
            let path = entry.path();
            if matches!(path.extension().and_then(|e| e.to_str()), Some("log" | "frame")) {
                summary.files += 1;
                summary.bytes += entry.metadata()?.len();
            }
        }
        Ok(summary)
    }
}

fn now_ms() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis())
}
