//! The consumer's side: frames from a position up to the durable end.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::PathBuf;

use tokio::sync::watch;

use crate::quarantine::{Damage, Quarantine};
use crate::segment::{self, frame_crc};
use crate::{FRAME_HEADER, LogError, MAX_FRAME, Notes};

/// One frame read back.
#[derive(Debug, Clone)]
pub struct Frame {
    pub position: u64,
    /// Position of the frame after this one.
    pub next: u64,
    pub payload: Vec<u8>,
    /// The note its appender gave it in this process ([`crate::Appender::append_noted`]); none
    /// for frames appended before this process opened the log.
    pub note: Option<u32>,
}

/// Reads frames in order. Blocking: call it from a blocking context.
pub struct LogReader {
    dir: PathBuf,
    durable: watch::Receiver<u64>,
    position: u64,
    /// The open segment: its base and a reader positioned at `position`.
    open: Option<(u64, BufReader<Bounded>)>,
    notes: Notes,
    quarantine: Quarantine,
}

impl LogReader {
    pub(crate) fn new(
        dir: PathBuf,
        position: u64,
        durable: watch::Receiver<u64>,
        notes: Notes,
        quarantine: Quarantine,
    ) -> Self {
        Self { dir, durable, position, open: None, notes, quarantine }
    }

    /// A fresh reader over the same log, positioned at `position` (a restarted consumer's).
    pub fn at(&self, position: u64) -> LogReader {
        LogReader::new(self.dir.clone(), position, self.durable.clone(), self.notes.clone(), self.quarantine.clone())
    }

    /// A receiver that changes whenever more of the log is durable.
    pub fn durable(&self) -> watch::Receiver<u64> {
        self.durable.clone()
    }

    pub fn position(&self) -> u64 {
        self.position
    }

    /// The end of the durable log as of now.
    pub fn durable_end(&self) -> u64 {
        *self.durable.borrow()
    }

    /// The log's name: its directory's.
    pub fn log_name(&self) -> String {
        crate::log_name(&self.dir)
    }

    /// Next frame, or `None` when the reader has caught up with the durable end. After
    /// [`LogError::Corrupt`], call [`Self::skip_damage`] to go on.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, LogError> {
        let end = self.durable_end();
        if self.position >= end {
            return Ok(None);
        }
        let position = self.position;
        let reader = self.reader_at(position, end)?;
        let mut header = [0u8; FRAME_HEADER as usize];
        if let Err(err) = reader.read_exact(&mut header) {
            self.open = None;
            // The segment ended exactly here: the frame is the first of the next segment.
            if err.kind() == io::ErrorKind::UnexpectedEof {
                if segment::path(&self.dir, position).exists() {
                    return self.next_frame();
                }
                return Err(LogError::Corrupt { position });
            }
            return Err(err.into());
        }
        let len_bytes: [u8; 4] = header[0..4].try_into().expect("4 bytes");
        let len = u32::from_le_bytes(len_bytes) as usize;
        let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
        let next = position + FRAME_HEADER + len as u64;
        if len > MAX_FRAME || next > end {
            self.open = None;
            return Err(LogError::Corrupt { position });
        }
        let mut payload = vec![0u8; len];
        if let Err(err) = reader.read_exact(&mut payload) {
            self.open = None;
            return Err(match err.kind() {
                io::ErrorKind::UnexpectedEof => LogError::Corrupt { position },
                _ => err.into(),
            });
        }
        if frame_crc(&len_bytes, &payload) != crc {
            self.open = None;
            return Err(LogError::Corrupt { position });
        }
        self.position = next;
        let note = self.notes.lock().get(&position).copied();
        Ok(Some(Frame { position, next, payload, note }))
    }

    /// After [`LogError::Corrupt`] at the current position: moves on to the next whole frame
    /// of the segment, or to the next segment when none follows, and copies the segment to the
    /// quarantine (a failed copy is logged; reading goes on either way). Returns what was
    /// skipped.
    pub fn skip_damage(&mut self) -> Result<Damage, LogError> {
        let (position, segment_path) = (self.position, self.pass_damage()?);
        let resume = self.position;
        let noted = self.notes.lock().range(position..resume).map(|(_, n)| u64::from(*n)).sum();
        let kept_as = match self.quarantine.keep_segment(&self.log_name(), &segment_path, position, resume - position) {
            Ok(kept_as) => Some(kept_as),
            Err(err) => {
                tracing::error!(segment = %segment_path.display(), error = %err, "intake log: a damaged segment could not be copied to the quarantine");
                None
            }
        };
        Ok(Damage { position, bytes: resume - position, kept_as, noted })
    }

    /// After [`LogError::Corrupt`] at the current position: only moves on, as
    /// [`Self::skip_damage`] does, and returns the damaged segment's path. For a reader that
    /// passes over a log whose own consumer will meet the damage and keep it.
    pub fn pass_damage(&mut self) -> Result<std::path::PathBuf, LogError> {
        self.open = None;
        let position = self.position;
        let bases = segment::list(&self.dir)?;
        let base = bases.iter().copied().rev().find(|b| *b <= position).ok_or(LogError::Corrupt { position })?;
        let segment_end = bases.iter().copied().find(|b| *b > position).unwrap_or_else(|| self.durable_end());
        let segment_path = segment::path(&self.dir, base);
        let mut bytes = Vec::new();
        File::open(&segment_path)?.read_to_end(&mut bytes)?;
        bytes.truncate((segment_end - base) as usize);
        let from = (position - base) as usize;
        self.position = segment::next_whole_frame(&bytes, from + 1).map_or(segment_end, |offset| base + offset as u64);
        Ok(segment_path)
    }

    /// The open segment's reader at `position`, reading no further than `end`.
    fn reader_at(&mut self, position: u64, end: u64) -> Result<&mut BufReader<Bounded>, LogError> {
        let reusable = matches!(&self.open, Some((base, _)) if *base <= position);
        if !reusable {
            let bases = segment::list(&self.dir)?;
            let base = bases.iter().copied().rev().find(|b| *b <= position).ok_or(LogError::Corrupt { position })?;
            let mut file = File::open(segment::path(&self.dir, base))?;
            file.seek(SeekFrom::Start(position - base))?;
            let bounded = Bounded { file, offset: position - base, limit: 0 };
            self.open = Some((base, BufReader::with_capacity(256 * 1024, bounded)));
        }
        let (base, reader) = self.open.as_mut().expect("opened above");
        reader.get_mut().limit = end - *base;
        Ok(reader)
    }
}

/// A segment file read no further than the log's durable end: bytes past it may be a write in
/// progress, or one about to be cut after a failed fsync, and must never be buffered as frames.
struct Bounded {
    file: File,
    /// The file offset the next read starts at.
    offset: u64,
    /// The file offset reads stop at.
    limit: u64,
}

impl Read for Bounded {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let room = self.limit.saturating_sub(self.offset);
        let wanted = (buf.len() as u64).min(room) as usize;
        if wanted == 0 {
            return Ok(0);
        }
        let read = self.file.read(&mut buf[..wanted])?;
        self.offset += read as u64;
        Ok(read)
    }
}
