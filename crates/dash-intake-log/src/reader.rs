//! The consumer's side: frames from a position up to the durable end.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::PathBuf;

use tokio::sync::watch;

use crate::segment::{self, frame_crc};
use crate::{FRAME_HEADER, LogError, MAX_FRAME};

/// One frame read back.
#[derive(Debug, Clone)]
pub struct Frame {
    pub position: u64,
    /// Position of the frame after this one.
    pub next: u64,
    pub payload: Vec<u8>,
}

/// Reads frames in order. Blocking: call it from a blocking context.
pub struct LogReader {
    dir: PathBuf,
    durable: watch::Receiver<u64>,
    position: u64,
    /// The open segment: its base and a reader positioned at `position`.
    open: Option<(u64, BufReader<File>)>,
}

impl LogReader {
    pub(crate) fn new(dir: PathBuf, position: u64, durable: watch::Receiver<u64>) -> Self {
        Self { dir, durable, position, open: None }
    }

    /// A fresh reader over the same log, positioned at `position` (a restarted consumer's).
    pub fn at(&self, position: u64) -> LogReader {
        LogReader::new(self.dir.clone(), position, self.durable.clone())
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

    /// Next frame, or `None` when the reader has caught up with the durable end.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, LogError> {
        let end = self.durable_end();
        if self.position >= end {
            return Ok(None);
        }
        let position = self.position;
        let reader = self.reader_at(position)?;
        let mut header = [0u8; FRAME_HEADER as usize];
        if let Err(err) = reader.read_exact(&mut header) {
            // The segment ended exactly here: the frame is the first of the next segment.
            if err.kind() == io::ErrorKind::UnexpectedEof {
                self.open = None;
                if segment::path(&self.dir, position).exists() {
                    return self.next_frame();
                }
            }
            return Err(err.into());
        }
        let len_bytes: [u8; 4] = header[0..4].try_into().expect("4 bytes");
        let len = u32::from_le_bytes(len_bytes) as usize;
        let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
        if len > MAX_FRAME {
            self.open = None;
            return Err(LogError::Corrupt { position });
        }
        let mut payload = vec![0u8; len];
        reader.read_exact(&mut payload)?;
        if frame_crc(&len_bytes, &payload) != crc {
            self.open = None;
            return Err(LogError::Corrupt { position });
        }
        let next = position + FRAME_HEADER + len as u64;
        self.position = next;
        Ok(Some(Frame { position, next, payload }))
    }

    /// Skips the rest of the segment holding `position` (after a corrupt frame).
    pub fn skip_segment(&mut self) -> Result<(), LogError> {
        self.open = None;
        let bases = segment::list(&self.dir)?;
        let next = bases.iter().copied().find(|b| *b > self.position);
        self.position = next.unwrap_or_else(|| self.durable_end());
        Ok(())
    }

    fn reader_at(&mut self, position: u64) -> Result<&mut BufReader<File>, LogError> {
        let reusable = matches!(&self.open, Some((base, _)) if *base <= position);
        if !reusable {
            let bases = segment::list(&self.dir)?;
            let base = bases.iter().copied().rev().find(|b| *b <= position).ok_or(LogError::Corrupt { position })?;
            let mut file = File::open(segment::path(&self.dir, base))?;
            file.seek(SeekFrom::Start(position - base))?;
            self.open = Some((base, BufReader::with_capacity(256 * 1024, file)));
        }
        Ok(&mut self.open.as_mut().expect("opened above").1)
    }
}
