//! The buffer actor: one per partition. It tails its partition's intake log, buffers up to
//! `max_batch` events or `flush_interval` after the first, commits the batch to the store in one
//! transaction, then checkpoints the log and publishes the pipelines' updates.
//!
//! Where the store allows it (PostgreSQL), several batches are written at once, each in a
//! transaction of its own, and committed one after the other in log order: see [`InFlight`].
//!
//! It holds nothing that is not also in the log: a restart (after a panic, or a crash of the
//! whole process) resumes from the last checkpoint and loses nothing.

use std::collections::{HashSet, VecDeque};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dash_domain::Event;
use dash_intake_log::{Checkpoint, LogError, LogReader};
use dash_store::{BatchEvent, BatchOutcome, StoreError};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::Partition;
use crate::record::IntakeRecord;

const STORE_RETRY_FIRST: Duration = Duration::from_millis(100);
const STORE_RETRY_MAX: Duration = Duration::from_secs(5);

/// Waits between tries of a store that is away: doubling from [`STORE_RETRY_FIRST`] to
/// [`STORE_RETRY_MAX`], each stretched by a random part of itself (backon's jitter), so that
/// every partition of every node does not retry a database that just came back in step.
fn store_retry_delays() -> backon::ExponentialBackoff {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::new()
        .with_min_delay(STORE_RETRY_FIRST)
        .with_max_delay(STORE_RETRY_MAX)
        .with_jitter()
        .without_max_times()
        .build()
}

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
    /// Batches being written or written and not yet committed, oldest first.
    in_flight: VecDeque<InFlight>,
    /// How many batches may be in flight (the store's answer; 1 on SQLite).
    window: usize,
    /// Resolves once the newest batch in flight has committed (true) or failed (false).
    next_turn: Option<oneshot::Receiver<bool>>,
    /// Hashes the keys of batches in flight, to keep them apart.
    key_hasher: foldhash::fast::RandomState,
    abort: watch::Receiver<bool>,
}

impl BufferActor {
    /// Builds the actor from the partition's last committed checkpoint.
    pub(crate) fn start(partition: Arc<Partition>, abort: watch::Receiver<bool>) -> Self {
        let committed = *partition.committed.lock();
        let reader = partition.reader_template.at(committed.position);
        let window = partition.store.batches_in_flight().max(1);
        Self {
            partition,
            reader: Some(reader),
            open: Default::default(),
            buffer: Vec::new(),
            buffer_counted: 0,
            cursor: committed,
            first_buffered_at: None,
            in_flight: VecDeque::new(),
            next_turn: None,
            window,
            key_hasher: Default::default(),
            abort,
        }
    }

    pub(crate) async fn run(mut self) {
        if !self.wait_for_migrated().await {
            return;
        }
        let settings = self.partition.settings.clone();
        let mut durable = self.reader.as_ref().expect("reader present").durable();
        let mut writer_closed = false;
        loop {
            self.fill(settings.max_batch).await;
            let caught_up = self.open.is_empty() && self.reader_caught_up();
            let trigger = flush_trigger(
                self.buffer.len(),
                settings.max_batch,
                self.first_buffered_at.map(|t| t.elapsed()),
                settings.flush_interval,
                writer_closed && caught_up,
            );
            let ready = trigger.is_some();
            if let Some(trigger) = trigger
                && self.in_flight.len() < self.window
            {
                let batch = self.take_batch(trigger);
                if self.in_flight.iter().all(|f| f.batch.as_ref().is_none_or(|b| b.keys.is_disjoint(&batch.keys))) {
                    self.launch(batch);
                    continue;
                }
                self.put_back(batch); // shares a key with a batch in flight: wait for it
            }
            if self.in_flight.is_empty() {
                if writer_closed && caught_up {
                    tracing::debug!(partition = self.partition.index, "buffer actor drained");
                    return;
                }
                if !caught_up {
                    continue;
                }
            }
            let wants_log = !ready && caught_up && !writer_closed;
            let deadline = match ready {
                false => self.first_buffered_at.map(|t| tokio::time::Instant::from_std(t + settings.flush_interval)),
                true => None,
            };
            let oldest = self.in_flight.front_mut().map(|f| &mut f.task);
            tokio::select! {
                written = join_opt(oldest) => {
                    if !self.complete_oldest(written).await {
                        return; // aborted while the store was down: the log keeps the events
                    }
                }
                changed = durable.changed(), if wants_log => writer_closed = changed.is_err(),
                () = sleep_until_opt(deadline), if wants_log => {}
                _ = self.abort.changed() => return,
            }
        }
    }

    /// Until the store is migrated (a start while the database was unreachable) nothing is
    /// written: the events wait in the log. False when aborted (or shut down) meanwhile.
    async fn wait_for_migrated(&mut self) -> bool {
        let mut migrated = self.partition.migrated.clone();
        if *migrated.borrow() {
            return true;
        }
        self.partition.admission.health.mark_down("the database has not been reached since this node started");
        let reached = tokio::select! {
            reached = migrated.wait_for(|m| *m) => reached.is_ok(),
            _ = self.abort.changed() => false,
        };

        if reached {
            self.partition.admission.health.mark_up();
        }
        reached
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
        let quarantine = self.partition.quarantine.clone();
        let log = format!("p{}", self.partition.index);
        let (index, partitions) = (self.partition.index, self.partition.settings.partitions);
        let admission = self.partition.admission.clone();
        let (reader, frames) = tokio::task::spawn_blocking(move || {
            let mut frames = Vec::new();
            let mut events = 0;
            while events < wanted {
                match reader.next_frame() {
                    Ok(Some(frame)) => match IntakeRecord::decode(&frame.payload) {
                        Ok(mut record) => {
                            if crate::partition_for(&record.pipeline, partitions) != index {
                                // Left from another layout: copied to its partition at start
                                // (before the layout file said this one), so passed over here.
                                record.events.clear();
                            }
                            let mut remaining: VecDeque<Event> = record.events.into();
                            let taken =
                                if frame.position == skip_first.1 { skip_first.0.min(remaining.len()) } else { 0 };
                            remaining.drain(..taken);
                            events += remaining.len();
                            frames.push(OpenFrame {
                                position: frame.position,
                                next: frame.next,
                                pipeline: Arc::from(record.pipeline),
                                remaining,
                                taken,
                                counted: frame.note.is_some(),
                            });
                        }
                        Err(err) => {
                            crate::keep_unreadable(&quarantine, &log, frame.position, &frame.payload, &err);
                            // Kept aside, never committed: what it counted is given back here.
                            admission.committed(frame.note.map_or(0, i64::from));
                        }
                    },
                    Ok(None) => break,
                    Err(LogError::Corrupt { .. }) => match reader.skip_damage() {
                        Ok(damage) => {
                            crate::report_damage(&log, &damage);
                            admission.committed(damage.noted as i64);
                        }
                        Err(err) => {
                            tracing::error!(error = %err, "intake log: cannot skip damaged data");
                            break;
                        }
                    },
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

    /// Takes the buffer as a batch; the buffer starts empty again.
    fn take_batch(&mut self, trigger: FlushTrigger) -> Batch {
        let keys = match self.window {
            1 => KeyHashes::default(),
            _ => self.buffer.iter().map(|e| self.key_hasher.hash_one((&*e.pipeline, e.event.id.as_str()))).collect(),
        };
        Batch {
            events: Arc::new(std::mem::take(&mut self.buffer)),
            counted: std::mem::take(&mut self.buffer_counted),
            cursor: self.cursor,
            first_buffered_at: self.first_buffered_at.take(),
            trigger,
            keys,
        }
    }

    /// Undoes [`Self::take_batch`] (nothing was read meanwhile).
    fn put_back(&mut self, batch: Batch) {
        self.buffer = Arc::into_inner(batch.events).expect("batch not shared yet");
        self.buffer_counted = batch.counted;
        self.first_buffered_at = batch.first_buffered_at;
    }

    /// Starts writing `batch` in a task of its own, which commits once the batch before it has
    /// committed; [`Self::complete_oldest`] joins it.
    fn launch(&mut self, batch: Batch) {
        let store = self.partition.store.clone();
        let events = batch.events.clone();
        let (committed, next_turn) = oneshot::channel();
        let turn = self.next_turn.replace(next_turn);
        let task = tokio::spawn(async move {
            let staged = store.stage_batch(&events).await;
            // Commit in log order, and never after a batch that failed.
            let before_committed = match turn {
                Some(turn) => turn.await.unwrap_or(false),
                None => true,
            };
            let result = match (staged, before_committed) {
                (Ok(staged), true) => staged.commit(&events).await.map_err(Some),
                (Ok(_rolled_back), false) => Err(None),
                (Err(err), _) => Err(Some(err)),
            };
            let _ = committed.send(result.is_ok());
            result
        });
        self.in_flight.push_back(InFlight { batch: Some(batch), task });
    }

    /// The oldest batch in flight is committed (or failed): checkpoint and publish. On an error
    /// every batch in flight has been rolled back (none commits after a failed one); they are
    /// written again one by one in log order, retrying while the store is down. False when
    /// aborted meanwhile.
    async fn complete_oldest(&mut self, written: Result<BatchOutcome, Option<StoreError>>) -> bool {
        let mut oldest = self.in_flight.pop_front().expect("a batch in flight");
        let error = match written {
            Ok(outcome) => {
                self.complete(oldest.batch(), outcome).await;
                return true;
            }
            Err(err) => err,
        };
        let mut batches = vec![oldest.batch()];
        match error {
            // Written again below, split until the events the store refuses stand alone.
            Some(error) if error.is_data_error() => {
                tracing::warn!(partition = self.partition.index, events = batches[0].events.len(), error = %error, "the store refused a batch for its data; finding the events it refuses");
            }
            Some(error) => self.store_failed(&error, batches[0].events.len(), STORE_RETRY_FIRST),
            None => {}
        }
        while let Some(mut later) = self.in_flight.pop_front() {
            later.task.abort();
            let _ = (&mut later.task).await;
            batches.push(later.batch());
        }
        self.next_turn = None;
        for batch in batches {
            let Some(outcome) = self.write_retrying(&batch).await else { return false };
            self.complete(batch, outcome).await;
        }
        true
    }

    /// Writes `batch`, retrying with backoff while the store is down. None when aborted.
    ///
    /// A batch the store refuses for what its events hold ([`StoreError::is_data_error`]) would
    /// fail the same way forever: it is split in halves, each written on its own in log order,
    /// until each refused event stands alone; those are set aside ([`Self::set_aside`]) and
    /// everything else is stored. The parts commit one after the other, so the pipelines' `seq`
    /// still follows the log; a crash meanwhile replays the whole batch, and the dedupe key (and
    /// the set-aside table's) absorbs what was already written.
    async fn write_retrying(&mut self, batch: &Batch) -> Option<BatchOutcome> {
        let mut delays = store_retry_delays();
        let mut outcome = BatchOutcome::default();
        // Parts still to write, the next one last.
        let mut parts: Vec<&[BatchEvent]> = vec![&batch.events];
        while let Some(part) = parts.pop() {
            match self.partition.store.write_batch(part).await {
                Ok(written) => {
                    outcome.absorb(written);
                    delays = store_retry_delays();
                }
                Err(err) if err.is_data_error() && part.len() > 1 => {
                    let (first, second) = part.split_at(part.len() / 2);
                    parts.push(second);
                    parts.push(first);
                }
                Err(err) if err.is_data_error() => {
                    // Alone and refused: once more after a pause (a refusal that passes, such as
                    // a race with maintenance, is not the event's fault), then set aside.
                    if !self.pause(STORE_RETRY_FIRST).await {
                        return None;
                    }
                    match self.partition.store.write_batch(part).await {
                        Ok(written) => outcome.absorb(written),
                        Err(again) if again.is_data_error() => {
                            if !self.set_aside(&part[0], &again).await {
                                return None;
                            }
                        }
                        Err(_) => parts.push(part),
                    }
                }
                Err(err) => {
                    let delay = delays.next().unwrap_or(STORE_RETRY_MAX);
                    self.store_failed(&err, part.len(), delay);
                    if !self.pause(delay).await {
                        return None;
                    }
                    parts.push(part);
                }
            }
        }
        Some(outcome)
    }

    /// Keeps an event the store refused aside, with the store's error, retrying while the store
    /// is down. False when aborted meanwhile.
    async fn set_aside(&mut self, event: &BatchEvent, refusal: &StoreError) -> bool {
        let mut delays = store_retry_delays();
        loop {
            match self.partition.store.set_aside(event, &refusal.to_string(), dash_domain::now_ms()).await {
                Ok(new) => {
                    self.partition.admission.health.mark_up();
                    if new {
                        metrics::counter!("dash_events_set_aside_total").increment(1);
                    }
                    tracing::error!(
                        partition = self.partition.index,
                        pipeline = &*event.pipeline,
                        event_id = event.event.id,
                        bytes = event.event.payload.len(),
                        error = %refusal,
                        "the store refused an event for its data; it is set aside (events_set_aside) and the rest goes on"
                    );
                    return true;
                }
                Err(err) => {
                    let delay = delays.next().unwrap_or(STORE_RETRY_MAX);
                    self.store_failed(&err, 1, delay);
                    if !self.pause(delay).await {
                        return false;
                    }
                }
            }
        }
    }

    /// Waits `delay` before a retry; false when aborted meanwhile.
    async fn pause(&mut self, delay: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(delay) => true,
            _ = self.abort.changed() => false,
        }
    }

    fn store_failed(&self, err: &StoreError, events: usize, retry_in: Duration) {
        self.partition.admission.health.mark_down(&err.to_string());
        metrics::counter!("dash_store_errors_total").increment(1);
        if let Some(held_back) = self.partition.flush_failures.admit() {
            tracing::warn!(partition = self.partition.index, events, error = %err, retry_in_ms = retry_in.as_millis() as u64, held_back, "flush failed; retrying");
        }
    }

    /// After a batch's commit: checkpoint the log past it, release its backlog, publish.
    async fn complete(&self, batch: Batch, outcome: BatchOutcome) {
        let partition = &self.partition;
        partition.admission.health.mark_up();
        if let Some(first) = batch.first_buffered_at {
            metrics::histogram!("dash_flush_duration_seconds", "trigger" => batch.trigger.label())
                .record(first.elapsed().as_secs_f64());
        }
        metrics::histogram!("dash_flush_batch_size", "trigger" => batch.trigger.label())
            .record(batch.events.len() as f64);
        metrics::counter!("dash_events_stored_total").increment(outcome.inserted);
        metrics::counter!("dash_events_duplicate_total").increment(outcome.duplicates);

        self.commit_checkpoint(batch.cursor).await;
        partition.admission.committed(batch.counted);
        for update in outcome.updates {
            partition.bus.publish(update).await;
        }
    }

    async fn commit_checkpoint(&self, cursor: Checkpoint) {
        let partition = self.partition.clone();
        let previous = {
            let mut committed = partition.committed.lock();
            std::mem::replace(&mut *committed, cursor)
        };
        let freed_bytes = cursor.position.saturating_sub(previous.position);
        partition.admission.spool.release(freed_bytes);
        let checkpoints = partition.checkpoints.clone();
        // The batch is committed either way; a stale checkpoint only means a little replay later.
        match tokio::task::spawn_blocking(move || checkpoints.commit(cursor)).await {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => tracing::warn!(error = %err, "intake log checkpoint not written"),
            Err(err) => tracing::warn!(error = %err, "intake log checkpoint task failed"),
        }
    }
}

/// A batch taken from the buffer, with where the log stands once it is committed.
struct Batch {
    /// Shared with the task writing it.
    events: Arc<Vec<BatchEvent>>,
    /// Events counted in the partition's backlog.
    counted: i64,
    cursor: Checkpoint,
    first_buffered_at: Option<Instant>,
    /// Hashes of its `(pipeline, event id)` keys (empty when only one batch is in flight).
    keys: KeyHashes,
    /// Why it was taken.
    trigger: FlushTrigger,
}

/// Why a batch is written now: a label on the flush metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FlushTrigger {
    /// The buffer holds `max_batch` events.
    Size,
    /// `flush_interval` has passed since the buffer's first event.
    Interval,
    /// The log's writer has ended (shutdown) and the reader is at the log's end: what is
    /// buffered goes now, whatever its size or age.
    Drain,
}

impl FlushTrigger {
    fn label(self) -> &'static str {
        match self {
            Self::Size => "size",
            Self::Interval => "interval",
            Self::Drain => "drain",
        }
    }
}

/// Whether, and why, `buffered` events (the first buffered `waited` ago) are written now.
pub(crate) fn flush_trigger(
    buffered: usize,
    max_batch: usize,
    waited: Option<Duration>,
    interval: Duration,
    at_drained_log_end: bool,
) -> Option<FlushTrigger> {
    if buffered == 0 {
        return None;
    }
    if buffered >= max_batch {
        return Some(FlushTrigger::Size);
    }
    if waited.is_some_and(|w| w >= interval) {
        return Some(FlushTrigger::Interval);
    }
    at_drained_log_end.then_some(FlushTrigger::Drain)
}

/// Hashes of a batch's keys. They are hashes already, so the set hashes them cheaply again.
type KeyHashes = HashSet<u64, foldhash::fast::RandomState>;

/// A batch being written by a task of its own, or written and waiting for its turn to commit.
///
/// Two batches in flight never share a key, so neither's write waits on the other; commits go in
/// log order, so `seq` and the checkpoint follow the log. Dropped, the task is aborted and its
/// transaction rolled back.
struct InFlight {
    batch: Option<Batch>,
    /// Ends with the batch committed, or failed (`None`: rolled back after an earlier one failed).
    task: JoinHandle<Result<BatchOutcome, Option<StoreError>>>,
}

impl InFlight {
    fn batch(&mut self) -> Batch {
        self.batch.take().expect("batch taken once")
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits for a batch's write task; never ready without one.
async fn join_opt(
    task: Option<&mut JoinHandle<Result<BatchOutcome, Option<StoreError>>>>,
) -> Result<BatchOutcome, Option<StoreError>> {
    match task {
        Some(handle) => handle.await.unwrap_or_else(|err| std::panic::resume_unwind(err.into_panic())),
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_flush_has_its_trigger() {
        let second = Duration::from_secs(1);
        let young = Some(Duration::from_millis(10));
        assert_eq!(flush_trigger(0, 1000, None, second, true), None, "nothing to write");
        assert_eq!(flush_trigger(999, 1000, young, second, false), None, "neither full nor old");
        assert_eq!(flush_trigger(1000, 1000, young, second, false), Some(FlushTrigger::Size));
        assert_eq!(flush_trigger(1, 1000, Some(second), second, false), Some(FlushTrigger::Interval));
        assert_eq!(flush_trigger(1, 1000, young, second, true), Some(FlushTrigger::Drain));
        assert_eq!(flush_trigger(1000, 1000, Some(second), second, true), Some(FlushTrigger::Size), "size first");
    }
}
