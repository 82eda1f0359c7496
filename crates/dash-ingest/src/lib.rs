//! From an authenticated, parsed request to committed, published batches.
//!
//! [`Intake::submit`] admits a request (backlog and spool bounds), appends it as one frame to
//! its partition's intake log and returns once the frame is fsync'd: that is what a 202
//! promises. Pipelines hash onto partitions ([`partition_for`]); each partition has its own log
//! and one [`BufferActor`](actor::BufferActor) under a supervisor, which moves events from the
//! log into the store and publishes each committed batch on the bus. At start, requests left in
//! logs of another layout are moved to their partitions first ([`layout`]).
//!
//! **Architecture invariant:** no request waits for the store. Requests wait only for their
//! fsync; the store is the buffer actors' business.

mod actor;
mod admission;
mod directory;
mod layout;
mod record;
mod supervisor;

use parking_lot::{Mutex, RwLock};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use dash_bus::Bus;
use dash_domain::{Event, PipelineId};
use dash_intake_log::{
    Appender, Checkpoint, CheckpointStore, Damage, FRAME_HEADER, LogError, LogOptions, LogReader, OpenedLog,
    WriterThread,
};
use dash_log_throttle::LogThrottle;
use dash_store::Store;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use admission::Admission;
pub use admission::{Spool, StoreHealth};
pub use dash_intake_log::{Quarantine, QuarantineSummary};
pub use directory::{Lookup, PipelineDirectory};
pub use layout::partition_for;
pub use record::{CURRENT_VERSION as RECORD_VERSION, IntakeRecord, RecordError};
pub use supervisor::supervise;

/// How often the pipeline directory reloads from the store.
const DIRECTORY_REFRESH: Duration = Duration::from_secs(5);
/// The pipeline directory's local copy, in the data dir.
pub const DIRECTORY_FILE: &str = "pipelines.json";
/// Largest intake log segment.
const MAX_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct IntakeSettings {
    /// Where the partition logs live (`<data_dir>/intake/p<N>`).
    pub data_dir: PathBuf,
    pub partitions: usize,
    pub max_batch: usize,
    pub flush_interval: Duration,
    /// Unflushed events per partition above which requests get 429 (while the store is up).
    pub max_backlog: usize,
    /// Unflushed intake log bytes (all partitions) above which requests get 503.
    pub spool_max: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("cannot open the intake log in {path}: {source}")]
    OpenLog { path: PathBuf, source: dash_intake_log::LogError },
    #[error("cannot move the requests of intake log {log} to their partitions: {source}")]
    Move { log: String, source: dash_intake_log::LogError },
    #[error("intake directory {path}: {source}")]
    Directory { path: PathBuf, source: std::io::Error },
}

/// Why a request was not admitted. Each maps to a status with `Retry-After`.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("buffer backlog is full ({backlog} events waiting); retry later")]
    Backlog { backlog: i64 },
    #[error("intake log is full; retry later")]
    SpoolFull,
    #[error("intake log cannot be written; retry later")]
    LogUnavailable,
    #[error("the disk under the intake log is full; retry later")]
    DiskFull,
    #[error("intake is shutting down")]
    ShuttingDown,
}

impl SubmitError {
    /// Seconds a sender should wait before retrying.
    pub fn retry_after_secs(&self) -> u64 {
        match self {
            Self::Backlog { .. } => 1,
            Self::SpoolFull | Self::LogUnavailable | Self::DiskFull | Self::ShuttingDown => 5,
        }
    }
}

/// One partition's shared state: what its actor needs to (re)start and what intake updates.
struct Partition {
    index: usize,
    settings: IntakeSettings,
    /// `None` once intake closes: the writer thread then ends.
    appender: RwLock<Option<Appender>>,
    reader_template: LogReader,
    checkpoints: CheckpointStore,
    /// The last checkpoint committed; a restarted actor resumes here.
    committed: Mutex<Checkpoint>,
    /// Backlog, spool and store health: what admits requests, and what commits give back.
    admission: Arc<Admission>,
    quarantine: Quarantine,
    /// One "flush failed" warning per period while the store is down (across actor restarts).
    flush_failures: LogThrottle,
    /// One "disk full" error per period while appends fail for want of space.
    disk_full_warnings: LogThrottle,
    /// True once the store is migrated: actors write nothing before.
    migrated: watch::Receiver<bool>,
    store: Store,
    bus: Bus,
}

/// The intake service handle; cheap to clone.
#[derive(Clone)]
pub struct Intake {
    inner: Arc<IntakeInner>,
}

struct IntakeInner {
    partitions: Vec<Arc<Partition>>,
    spool: Arc<Spool>,
    health: Arc<StoreHealth>,
    directory: PipelineDirectory,
    settings: IntakeSettings,
    quarantine: Quarantine,
}

/// One request's way into the log: see [`Intake::permit`].
pub struct Permit<'a> {
    partition: &'a Arc<Partition>,
    pipeline: &'a PipelineId,
    deadline: Instant,
}

impl Permit<'_> {
    /// Waits until the permit's deadline for a request of any size to have room.
    pub async fn wait_for_room(&self) -> Result<(), SubmitError> {
        self.partition.admission.wait_for_room(self.deadline).await
    }

    /// Makes `events` durable in the intake log (all or none) and returns how many, waiting
    /// until the permit's deadline for backlog room (each commit makes some).
    pub async fn submit(self, events: Vec<Event>) -> Result<usize, SubmitError> {
        let count = events.len();
        if count == 0 {
            return Ok(0);
        }
        let Some(appender) = self.partition.appender.read().clone() else {
            return Err(SubmitError::ShuttingDown);
        };
        // Taken before encoding, so a refused request costs no encode.
        let mut reservation = self.partition.admission.take(count, self.deadline).await?;
        let payload = IntakeRecord::encode_parts(self.pipeline.as_str(), &events);
        drop(events);
        reservation.spool(payload.len() as u64 + FRAME_HEADER)?;
        // In a task of its own: once the frame is handed to the writer, the room stays taken or
        // is given back by what the writer answers, not by a caller that stopped waiting (a
        // timeout, a client gone); the actor gives it back once the frame is committed.
        let append = tokio::spawn(async move {
            let appended = match reservation.note() {
                Some(note) => appender.append_noted(payload, note).await,
                None => appender.append(payload).await,
            };
            appended.map(|_| reservation.appended())
        });
        let spool = &self.partition.admission.spool;
        match append.await {
            Ok(Ok(())) => {
                spool.disk_took_write();
                Ok(count)
            }
            Ok(Err(LogError::Io(err))) if is_disk_full(&err) => {
                spool.disk_was_full();
                if let Some(held_back) = self.partition.disk_full_warnings.admit() {
                    tracing::error!(error = %err, held_back, "intake log append failed: the disk is full; refusing with 503 until it has room");
                }
                Err(SubmitError::DiskFull)
            }
            Ok(Err(err)) => {
                tracing::error!(error = %err, "intake log append failed");
                Err(SubmitError::LogUnavailable)
            }
            Err(err) => {
                tracing::error!(error = %err, "intake log append task failed");
                Err(SubmitError::LogUnavailable)
            }
        }
    }
}

/// The tasks and threads intake owns; [`IntakeTasks::shutdown`] drains and joins them.
pub struct IntakeTasks {
    writers: Vec<WriterThread>,
    actors: Vec<JoinHandle<()>>,
    refresher: JoinHandle<()>,
    /// Tells actors to stop retrying and leave the rest in the log.
    abort: watch::Sender<bool>,
    /// Tells the directory refresher to stop.
    closing: watch::Sender<bool>,
}

impl Intake {
    /// Opens every partition's log (cutting torn tails), moves requests left under another
    /// layout to their partitions, and starts writers, actors and the directory refresher.
    /// Replay of unflushed tails begins at once.
    ///
    /// `migrated` says when the store is migrated and may be written: until then (a start while
    /// the database is unreachable) requests are accepted into the log, authenticated from the
    /// directory's local copy, and the actors wait.
    pub async fn start(
        settings: IntakeSettings,
        store: Store,
        bus: Bus,
        migrated: watch::Receiver<bool>,
    ) -> Result<(Intake, IntakeTasks), IngestError> {
        let intake_dir = settings.data_dir.join("intake");
        let spool = Arc::new(Spool::new(settings.spool_max, intake_dir.clone()));
        let health = Arc::new(StoreHealth::new());
        let (abort, abort_rx) = watch::channel(false);
        let (closing, closing_rx) = watch::channel(false);
        let quarantine = Quarantine::new(intake_dir.join("quarantine"));
        let options = LogOptions {
            segment_bytes: (settings.spool_max / 8).clamp(64 * 1024, MAX_SEGMENT_BYTES),
            quarantine: quarantine.clone(),
        };
        let directory_error = |source| IngestError::Directory { path: intake_dir.clone(), source };
        let found = layout::existing_logs(&intake_dir).map_err(directory_error)?;

        let mut current = Vec::new();
        for index in 0..settings.partitions {
            current.push(open_log(&intake_dir, index, &options).await?);
        }
        if !layout::is_current(&intake_dir, settings.partitions) {
            for (index, log) in current.iter().enumerate() {
                let moved = layout::move_requests(index, log, &current, &quarantine, false).await?;
                if moved.requests > 0 {
                    tracing::info!(
                        partition = index,
                        requests = moved.requests,
                        events = moved.events,
                        partitions = settings.partitions,
                        "intake log: unflushed requests whose pipelines now belong to other partitions were appended to those (ahead of any new request)"
                    );
                }
            }
        }
        for index in found.into_iter().filter(|i| *i >= settings.partitions) {
            let log = open_log(&intake_dir, index, &options).await?;
            let moved = layout::move_requests(index, &log, &current, &quarantine, true).await?;
            let OpenedLog { appender, writer, .. } = log;
            drop(appender);
            let dir = layout::log_dir(&intake_dir, index);
            tokio::task::spawn_blocking(move || {
                writer.join();
                layout::remove_log(&dir)
            })
            .await
            .expect("log removal task")
            .map_err(directory_error)?;
            tracing::warn!(
                log = format!("p{index}"),
                partitions = settings.partitions,
                requests = moved.requests,
                events = moved.events,
                damaged = moved.damaged,
                "intake log beyond DASH_PARTITIONS: its unflushed requests were moved to the partitions they now belong to, and the log removed"
            );
        }
        layout::record(&intake_dir, settings.partitions).map_err(directory_error)?;

        let mut partitions = Vec::new();
        let mut writers = Vec::new();
        for (index, opened) in current.into_iter().enumerate() {
            let checkpoint = opened.recovery.checkpoint;
            let unflushed = opened.reader.durable_end() - checkpoint.position;
            spool.found(unflushed);
            if unflushed > 0 {
                tracing::info!(partition = index, replay_bytes = unflushed, "intake log recovered");
            }
            writers.push(opened.writer);
            partitions.push(Arc::new(Partition {
                index,
                settings: settings.clone(),
                appender: RwLock::new(Some(opened.appender)),
                reader_template: opened.reader,
                checkpoints: opened.checkpoints,
                committed: Mutex::new(checkpoint),
                admission: Arc::new(Admission::new(index, settings.max_backlog, spool.clone(), health.clone())),
                quarantine: quarantine.clone(),
                flush_failures: LogThrottle::per_period(),
                disk_full_warnings: LogThrottle::per_period(),
                migrated: migrated.clone(),
                store: store.clone(),
                bus: bus.clone(),
            }));
        }
        spool.report();

        let actors = partitions
            .iter()
            .map(|partition| {
                let partition = partition.clone();
                let abort = abort_rx.clone();
                tokio::spawn(supervise(format!("buffer-{}", partition.index), move || {
                    actor::BufferActor::start(partition.clone(), abort.clone()).run()
                }))
            })
            .collect();

        let intake = Intake {
            inner: Arc::new(IntakeInner {
                partitions,
                spool,
                health,
                directory: PipelineDirectory::new(store.clone(), settings.data_dir.join(DIRECTORY_FILE)),
                settings,
                quarantine,
            }),
        };
        if *migrated.borrow() {
            intake.inner.directory.reload().await;
        }
        let refresher = tokio::spawn(refresh_directory(intake.clone(), closing_rx));
        Ok((intake, IntakeTasks { writers, actors, refresher, abort, closing }))
    }

    pub fn directory(&self) -> &PipelineDirectory {
        &self.inner.directory
    }

    pub fn store_health(&self) -> &StoreHealth {
        &self.inner.health
    }

    pub fn spool(&self) -> &Spool {
        &self.inner.spool
    }

    pub fn settings(&self) -> &IntakeSettings {
        &self.inner.settings
    }

    /// Where damaged intake log data is kept until an operator removes it.
    pub fn quarantine(&self) -> &Quarantine {
        &self.inner.quarantine
    }

    /// Unflushed events per partition (admitted by this process).
    pub fn backlogs(&self) -> Vec<i64> {
        self.inner.partitions.iter().map(|p| p.admission.backlog()).collect()
    }

    fn partition_of(&self, pipeline: &PipelineId) -> &Arc<Partition> {
        &self.inner.partitions[partition_for(pipeline.as_str(), self.inner.partitions.len())]
    }

    /// A permit to submit a request for `pipeline`, waiting for room until `deadline`: the
    /// edge asks it for room before it parses a body ([`Permit::wait_for_room`]), so a sender
    /// pushing past the bound costs a wait, not a parse, then submits the events with it.
    pub fn permit<'a>(&'a self, pipeline: &'a PipelineId, deadline: Instant) -> Permit<'a> {
        Permit { partition: self.partition_of(pipeline), pipeline, deadline }
    }

    /// Makes `events` durable in the intake log (all or none) and returns how many; refused at
    /// once when there is no room.
    pub async fn submit(&self, pipeline: &PipelineId, events: Vec<Event>) -> Result<usize, SubmitError> {
        self.permit(pipeline, Instant::now()).submit(events).await
    }

    /// Stops admitting; once in-flight appends finish, the writers end and actors drain.
    pub fn close(&self) {
        for partition in &self.inner.partitions {
            partition.appender.write().take();
        }
    }
}

impl IntakeTasks {
    /// Closes intake, lets actors flush everything durable (up to `deadline`; past it, what is
    /// left stays in the log for the next start), and joins every task and thread.
    pub async fn shutdown(self, intake: Intake, deadline: Duration) {
        intake.close();
        drop(intake);
        let _ = self.closing.send(true);
        let mut actors = self.actors;
        let drained = tokio::time::timeout(deadline, async {
            for actor in &mut actors {
                let _ = actor.await;
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!("drain deadline passed; unflushed events stay in the intake log for the next start");
            let _ = self.abort.send(true);
            for actor in actors.into_iter().filter(|a| !a.is_finished()) {
                let _ = actor.await;
            }
        }
        let writers = self.writers;
        let _ = tokio::task::spawn_blocking(move || writers.into_iter().for_each(WriterThread::join)).await;
        let _ = self.refresher.await;
    }
}

async fn refresh_directory(intake: Intake, mut closing: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(DIRECTORY_REFRESH) => { intake.directory().reload().await; }
            _ = closing.changed() => {
                // What this node learned since the last refresh (a pipeline made here) is on disk
                // for a start while the store is down.
                intake.directory().persist().await;
                return;
            }
        }
    }
}

/// Opens partition log `index`, reporting what recovery found at its tail.
async fn open_log(intake_dir: &Path, index: usize, options: &LogOptions) -> Result<OpenedLog, IngestError> {
    let path = layout::log_dir(intake_dir, index);
    let opened = tokio::task::spawn_blocking({
        let (path, options) = (path.clone(), options.clone());
        move || dash_intake_log::open(&path, options)
    })
    .await
    .expect("log open task")
    .map_err(|source| IngestError::OpenLog { path, source })?;
    let recovery = &opened.recovery;
    if recovery.torn_bytes > 0 {
        metrics::counter!("dash_intake_log_torn_bytes_total").increment(recovery.torn_bytes);
        tracing::warn!(
            partition = index,
            cut_bytes = recovery.torn_bytes,
            "intake log: a write cut short by the last stop was cut from the tail (never acknowledged: a request is answered only after its frame is on disk)"
        );
    }
    if let Some(damage) = &recovery.tail_damage {
        report_damage(&format!("p{index}"), damage);
    }
    Ok(opened)
}

/// Says loudly that acknowledged log data was damaged and where it was kept.
pub(crate) fn report_damage(log: &str, damage: &Damage) {
    metrics::counter!("dash_intake_log_corrupt_total").increment(1);
    metrics::counter!("dash_intake_log_damaged_bytes_total").increment(damage.bytes);
    tracing::error!(
        log,
        position = damage.position,
        damaged_bytes = damage.bytes,
        kept_as = %damage.kept_as.as_deref().map_or_else(|| "(not kept: see the error before)".into(), |p| p.display().to_string()),
        "intake log: acknowledged data failed its checksum; the requests in these bytes cannot be stored. The segment is kept in the quarantine; /ready reports it until an operator removes it"
    );
}

/// Keeps a frame whose record cannot be read aside, and says so loudly.
pub(crate) fn keep_unreadable(quarantine: &Quarantine, log: &str, position: u64, payload: &[u8], err: &RecordError) {
    metrics::counter!("dash_intake_log_unreadable_total").increment(1);
    match quarantine.keep_frame(log, position, payload, &err.to_string()) {
        Ok(kept_as) => tracing::error!(
            log,
            position,
            bytes = payload.len(),
            error = %err,
            kept_as = %kept_as.display(),
            "intake log: an acknowledged request cannot be read by this release; it is kept in the quarantine and /ready reports it until an operator removes it"
        ),
        Err(io) => tracing::error!(
            log,
            position,
            bytes = payload.len(),
            error = %err,
            quarantine_error = %io,
            "intake log: an acknowledged request cannot be read by this release, and could not be kept aside"
        ),
    }
}

/// Whether an append failed for want of disk space (or of the user's quota on it).
fn is_disk_full(err: &std::io::Error) -> bool {
    // The writer thread hands the error on by its kind.
    matches!(err.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded)
}
