//! The buffer actor: one per partition. It tails its partition's intake log, buffers up to
//! `max_batch` events or `flush_interval` after the first, commits the batch to the store in one
//! transaction, then checkpoints the log and publishes the pipelines' updates.
//!
//! It holds nothing that is not also in the log: a restart (after a panic, or a crash of the
//! whole process) resumes from the last checkpoint and loses nothing.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use dash_domain::Event;
use dash_intake_log::{Checkpoint, LogError, LogReader};
use dash_store::BatchEvent;
use tokio::sync::watch;

use crate::Partition;
use crate::record::IntakeRecord;

const STORE_RETRY_FIRST: Duration = Duration::from_millis(100);
const STORE_RETRY_MAX: Duration = Duration::from_secs(5);

/// A frame read from the log whose events are not all in the buffer yet.
struct OpenFrame {
    position: u64,
    next: u64,
    /// Shared by every event of the frame (one request, one pipeline).
    pipeline: Arc<str>,
    /// Events not yet taken into a buffer.
    remaining: VecDeque<Event>,
    /// Events of the frame already taken (or committed before a restart): the checkpoint's skip.
    taken: usize,
    /// Whether its events were counted in the partition's backlog (appended by this process).
    counted: bool,
}

pub(crate) struct BufferActor {
    partition: Arc<Partition>,
    reader: Option<LogReader>,
    /// Frames read but not wholly taken; usually zero or one.
    open: VecDeque<OpenFrame>,
    buffer: Vec<BatchEvent>,
    /// Events of `buffer` counted in the backlog.
    buffer_counted: i64,
    /// Where the log stands once `buffer` is committed.
    cursor: Checkpoint,
    first_buffered_at: Option<Instant>,
    abort: watch::Receiver<bool>,
}

impl BufferActor {
    /// Builds the actor from the partition's last committed checkpoint.
    pub(crate) fn start(partition: Arc<Partition>, abort: watch::Receiver<bool>) -> Self {
        let committed = *partition.committed.lock().expect("checkpoint lock");
        let reader = partition.reader_template.at(committed.position);
        Self {
            partition,
            reader: Some(reader),
            open: Default::default(),
            buffer: Vec::new(),
            buffer_counted: 0,
            cursor: committed,
            first_buffered_at: None,
            abort,
        }
    }

    pub(crate) async fn run(mut self) {
        let settings = self.partition.settings.clone();
        let mut durable = self.reader.as_ref().expect("reader present").durable();
        let mut writer_closed = false;
        loop {
            self.fill(settings.max_batch).await;
            let caught_up = self.open.is_empty() && self.reader_caught_up();
            let due = self.first_buffered_at.is_some_and(|t| t.elapsed() >= settings.flush_interval);
            if self.buffer.len() >= settings.max_batch || due || (writer_closed && caught_up && !self.buffer.is_empty())
            {
                if !self.flush().await {
                    return; // aborted while the store was down: the log keeps the events
                }
                continue;
            }
            if writer_closed && caught_up {
                tracing::debug!(partition = self.partition.index, "buffer actor drained");
                return;
            }
            if !caught_up {
                continue;
            }
            let deadline = self.first_buffered_at.map(|t| tokio::time::Instant::from_std(t + settings.flush_interval));
            tokio::select! {
                changed = durable.changed(), if !writer_closed => writer_closed = changed.is_err(),
                () = sleep_until_opt(deadline) => {}
                _ = self.abort.changed() => return,
            }
        }
    }

    fn reader_caught_up(&self) -> bool {
        let reader = self.reader.as_ref().expect("reader present");
        reader.position() >= reader.durable_end()
    }

    /// Moves events into the buffer until it holds `max_batch` or the log is exhausted.
    async fn fill(&mut self, max_batch: usize) {
        while self.buffer.len() < max_batch {
            if let Some(frame) = self.open.front_mut() {
                let take = (max_batch - self.buffer.len()).min(frame.remaining.len());
                let pipeline = &frame.pipeline;
                self.buffer.extend(
                    frame.remaining.drain(..take).map(|event| BatchEvent { pipeline: pipeline.clone(), event }),
                );
                if frame.counted {
                    self.buffer_counted += take as i64;
                }
                frame.taken += take;
                if take > 0 {
                    self.first_buffered_at.get_or_insert_with(Instant::now);
                }
                if frame.remaining.is_empty() {
                    self.cursor = Checkpoint { position: frame.next, skip: 0 };
                    self.open.pop_front();
                } else {
                    self.cursor = Checkpoint { position: frame.position, skip: frame.taken as u32 };
                }
                continue;
            }
            if self.reader_caught_up() || !self.read_frames(max_batch - self.buffer.len()).await {
                return;
            }
        }
    }

    /// Reads whole frames holding at least `wanted` events (or up to the end). False if none.
    async fn read_frames(&mut self, wanted: usize) -> bool {
        let mut reader = self.reader.take().expect("reader present");
        let skip_first = (self.cursor.skip as usize, self.cursor.position);
        let replay_end = self.partition.replay_end;
        let (reader, frames) = tokio::task::spawn_blocking(move || {
            let mut frames = Vec::new();
            let mut events = 0;
            while events < wanted {
                match reader.next_frame() {
                    Ok(Some(frame)) => match IntakeRecord::decode(&frame.payload) {
                        Ok(record) => {
                            let mut remaining: VecDeque<Event> = record.events.into();
                            let taken = if frame.position == skip_first.1 { skip_first.0.min(remaining.len()) } else { 0 };
                            remaining.drain(..taken);
                            events += remaining.len();
                            frames.push(OpenFrame {
                                position: frame.position,
                                next: frame.next,
                                pipeline: Arc::from(record.pipeline),
                                remaining,
                                taken,
                                counted: frame.position >= replay_end,
                            });
                        }
                        Err(err) => {
                            metrics::counter!("dash_intake_log_corrupt_total").increment(1);
                            tracing::error!(position = frame.position, error = %err, "intake log frame undecodable; skipped");
                        }
                    },
                    Ok(None) => break,
                    Err(LogError::Corrupt { position }) => {
                        metrics::counter!("dash_intake_log_corrupt_total").increment(1);
                        tracing::error!(position, "intake log frame fails its checksum; skipping the rest of its segment");
                        if let Err(err) = reader.skip_segment() {
                            tracing::error!(error = %err, "intake log: cannot skip segment");
                            break;
                        }
                    }
                    Err(err) => {
                        tracing::error!(error = %err, "intake log read failed");
                        break;
                    }
                }
            }
            (reader, frames)
        })
        .await
        .unwrap_or_else(|err| std::panic::resume_unwind(err.into_panic()));
        self.reader = Some(reader);
        let any = !frames.is_empty();
        self.open.extend(frames);
        any
    }

    /// Commits the buffer, retrying while the store is down. False when aborted meanwhile.
    async fn flush(&mut self) -> bool {
        let partition = self.partition.clone();
        let started = Instant::now();
        let mut delay = STORE_RETRY_FIRST;
        let outcome = loop {
            match partition.store.write_batch(&self.buffer).await {
                Ok(outcome) => {
                    partition.health.mark_up();
                    break outcome;
                }
                Err(err) => {
                    partition.health.mark_down(&err.to_string());
                    metrics::counter!("dash_store_errors_total").increment(1);
                    tracing::warn!(partition = partition.index, events = self.buffer.len(), error = %err, retry_in_ms = delay.as_millis() as u64, "flush failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        _ = self.abort.changed() => return false,
                    }
                    delay = (delay * 2).min(STORE_RETRY_MAX);
                }
            }
        };
        metrics::histogram!("dash_flush_duration_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("dash_flush_batch_size").record(self.buffer.len() as f64);
        metrics::counter!("dash_events_stored_total").increment(outcome.inserted);
        metrics::counter!("dash_events_duplicate_total").increment(outcome.duplicates);

        self.commit_checkpoint().await;
        let backlog = partition.backlog.fetch_sub(self.buffer_counted, Ordering::AcqRel) - self.buffer_counted;
        metrics::gauge!("dash_buffer_backlog", "partition" => partition.index.to_string()).set(backlog.max(0) as f64);
        for update in outcome.updates {
            partition.bus.publish(update).await;
        }
        self.buffer.clear();
        self.buffer_counted = 0;
        self.first_buffered_at = None;
        true
    }

    async fn commit_checkpoint(&mut self) {
        let partition = self.partition.clone();
        let cursor = self.cursor;
        let previous = {
            let mut committed = partition.committed.lock().expect("checkpoint lock");
            std::mem::replace(&mut *committed, cursor)
        };
        let freed_bytes = cursor.position.saturating_sub(previous.position);
        partition.spool.release(freed_bytes);
        let checkpoints = partition.checkpoints.clone();
        // The batch is committed either way; a stale checkpoint only means a little replay later.
        match tokio::task::spawn_blocking(move || checkpoints.commit(cursor)).await {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => tracing::warn!(error = %err, "intake log checkpoint not written"),
            Err(err) => tracing::warn!(error = %err, "intake log checkpoint task failed"),
        }
    }
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
