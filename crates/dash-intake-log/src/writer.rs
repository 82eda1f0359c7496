//! The writer thread: one per partition log, the only code that appends.

use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::Duration;

use dash_log_throttle::LogThrottle;
use tokio::sync::{mpsc, oneshot, watch};

use crate::segment::{self, frame_crc};
use crate::{FRAME_HEADER, LogError, LogOptions, MAX_FRAME, Notes, Segments};

/// Requests waiting for the writer; senders beyond it wait (and are themselves bounded upstream).
const QUEUE_DEPTH: usize = 4096;
/// Most bytes written before one fsync.
const GROUP_BYTES: usize = 16 * 1024 * 1024;

struct Append {
    payload: Vec<u8>,
    note: Option<u32>,
    reply: oneshot::Sender<Result<u64, LogError>>,
}

/// Cloneable handle for appending frames; the writer thread ends when the last one drops.
#[derive(Clone)]
pub struct Appender {
    tx: mpsc::Sender<Append>,
}

impl Appender {
    /// Appends one frame and resolves once it is fsync'd, with the frame's position.
    pub async fn append(&self, payload: Vec<u8>) -> Result<u64, LogError> {
        self.send(payload, None).await
    }

    /// [`Self::append`], with a note the consumer of this process finds on the frame
    /// ([`crate::Frame::note`]). Notes live in memory only, until the checkpoint passes the frame.
    pub async fn append_noted(&self, payload: Vec<u8>, note: u32) -> Result<u64, LogError> {
        self.send(payload, Some(note)).await
    }

    /// Appends frames in order, all handed to the writer before any answer is awaited, so that
    /// they share fsyncs; resolves once all are on disk, with their positions.
    pub async fn append_all(&self, payloads: Vec<Vec<u8>>) -> Result<Vec<u64>, LogError> {
        let mut answers = Vec::with_capacity(payloads.len());
        for payload in payloads {
            if payload.len() > MAX_FRAME {
                return Err(LogError::TooLarge(payload.len()));
            }
            let (reply, answer) = oneshot::channel();
            self.tx.send(Append { payload, note: None, reply }).await.map_err(|_| LogError::Closed)?;
            answers.push(answer);
        }
        let mut positions = Vec::with_capacity(answers.len());
        for answer in answers {
            positions.push(answer.await.map_err(|_| LogError::Closed)??);
        }
        Ok(positions)
    }

    async fn send(&self, payload: Vec<u8>, note: Option<u32>) -> Result<u64, LogError> {
        if payload.len() > MAX_FRAME {
            return Err(LogError::TooLarge(payload.len()));
        }
        let (reply, answer) = oneshot::channel();
        self.tx.send(Append { payload, note, reply }).await.map_err(|_| LogError::Closed)?;
        answer.await.map_err(|_| LogError::Closed)?
    }
}

/// The writer thread's join handle; join it after dropping every [`Appender`].
pub struct WriterThread(JoinHandle<()>);

impl WriterThread {
    pub fn join(self) {
        if self.0.join().is_err() {
            tracing::error!("intake log writer thread panicked");
        }
    }
}

pub(crate) fn start(
    dir: PathBuf,
    base: u64,
    len: u64,
    options: LogOptions,
    durable: watch::Sender<u64>,
    segments: Segments,
    notes: Notes,
) -> Result<(Appender, WriterThread), LogError> {
    let file = std::fs::OpenOptions::new().append(true).open(segment::path(&dir, base))?;
    let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
    let failures = LogThrottle::per_period();
    let writer = Writer { dir, options, file, base, len, durable, segments, notes, failures };
    let handle = std::thread::Builder::new().name("intake-log-writer".into()).spawn(move || writer.run(rx))?;
    Ok((Appender { tx }, WriterThread(handle)))
}

/// What writing a group did.
struct GroupWritten {
    /// Each frame's position, as far as the group got.
    positions: Vec<u64>,
    /// How many of the group's frames are on disk.
    durable: usize,
    error: Option<io::Error>,
}

struct Writer {
    dir: PathBuf,
    options: LogOptions,
    /// The current (last) segment, opened for append.
    file: File,
    base: u64,
    /// Durable length of the current segment.
    len: u64,
    durable: watch::Sender<u64>,
    /// Where the checkpoint store learns of new segments.
    segments: Segments,
    /// Where frames' notes are left for the reader, before the frames become durable.
    notes: Notes,
    /// One line per period for failed writes (a full disk fails every one).
    failures: LogThrottle,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Append>) {
        let mut group: Vec<Append> = Vec::new();
        let mut buf: Vec<u8> = Vec::new();
        while let Some(first) = rx.blocking_recv() {
            let mut bytes = first.payload.len();
            group.push(first);
            while bytes < GROUP_BYTES {
                match rx.try_recv() {
                    Ok(next) => {
                        bytes += next.payload.len();
                        group.push(next);
                    }
                    Err(_) => break,
                }
            }
            let written = self.write_group(&group, &mut buf);
            if let Some(err) = &written.error {
                if let Some(held_back) = self.failures.admit() {
                    tracing::error!(error = %err, held_back, "intake log write failed; the requests not yet on disk are answered with an error");
                }
                // Frames already flushed (before a segment roll) are on disk and answered as
                // such; from the first one that is not, none counts, none is kept.
                if let Some(&first_failed) = written.positions.get(written.durable) {
                    drop(self.notes.lock().split_off(&first_failed));
                }
                self.recover();
            }
            self.durable.send_replace(self.base + self.len);
            for (i, append) in group.drain(..).enumerate() {
                let answer = match (&written.error, written.positions.get(i)) {
                    (_, Some(&position)) if i < written.durable => Ok(position),
                    (Some(err), _) => Err(LogError::Io(io::Error::new(err.kind(), err.to_string()))),
                    (None, _) => unreachable!("a group written whole has a position for each frame"),
                };
                let _ = append.reply.send(answer);
            }
        }
        tracing::debug!("intake log writer stopped");
    }

    /// Writes the group (rolling segments as needed) and fsyncs. On an error, the frames
    /// flushed before it (a roll flushes what precedes it) are durable all the same.
    fn write_group(&mut self, group: &[Append], buf: &mut Vec<u8>) -> GroupWritten {
        let mut written = GroupWritten { positions: Vec::with_capacity(group.len()), durable: 0, error: None };
        buf.clear();
        for append in group {
            let frame_len = FRAME_HEADER + append.payload.len() as u64;
            let pending = buf.len() as u64;
            if self.len + pending > 0 && self.len + pending + frame_len > self.options.segment_bytes {
                if let Err(err) = self.flush(buf) {
                    written.error = Some(err);
                    return written;
                }
                written.durable = written.positions.len();
                if let Err(err) = self.roll() {
                    written.error = Some(err);
                    return written;
                }
            }
            let position = self.base + self.len + buf.len() as u64;
            if let Some(note) = append.note {
                // Before the frame can be durable (a roll publishes what precedes it).
                self.notes.lock().insert(position, note);
            }
            written.positions.push(position);
            let len_bytes = (append.payload.len() as u32).to_le_bytes();
            buf.extend_from_slice(&len_bytes);
            buf.extend_from_slice(&frame_crc(&len_bytes, &append.payload).to_le_bytes());
            buf.extend_from_slice(&append.payload);
        }
        match self.flush(buf) {
            Ok(()) => written.durable = written.positions.len(),
            Err(err) => written.error = Some(err),
        }
        written
    }

    fn flush(&mut self, buf: &mut Vec<u8>) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        self.file.write_all(buf)?;
        self.file.sync_data()?;
        self.len += buf.len() as u64;
        buf.clear();
        Ok(())
    }

    fn roll(&mut self) -> io::Result<()> {
        let next_base = self.base + self.len;
        self.file = segment::create(&self.dir, next_base)?;
        self.segments.lock().push_back(next_base);
        self.base = next_base;
        self.len = 0;
        // Readers learn of the new segment through the durable end moving past the old one.
        self.durable.send_replace(self.base);
        Ok(())
    }

    /// After a failed write: cut whatever part of the group reached the file, until that works.
    fn recover(&mut self) {
        let mut delay = Duration::from_millis(10);
        loop {
            let cut = self.file.set_len(self.len).and_then(|()| self.file.sync_all());
            match cut {
                Ok(()) => return,
                Err(err) => {
                    tracing::error!(error = %err, "intake log: cannot cut a failed write; retrying");
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
            }
        }
    }
}
